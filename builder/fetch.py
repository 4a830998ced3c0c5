"""ADD <url>: downloading a remote file for a build step, with its --checksum checked.

A step's cache key needs the download's digest (unless --checksum gives it) and the step then
needs the file itself, so each URL is fetched once per process into a private directory that is
removed at exit. Nothing downloaded is used before a given --checksum is checked.
"""

from __future__ import annotations

import atexit
import email.message
import email.utils
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError

TIMEOUT = 60.0
BUFSIZE = 1 << 20
CHECKSUM_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Download:
    url: str
    path: Path  # the downloaded file, private to this process
    digest: str  # `sha256:<hex>` of its contents
    filename: str  # what ADD names it when the destination is a directory
    mtime_ns: int | None  # from Last-Modified


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def is_git(source: str) -> bool:
    """A source docker would clone: git@host:repo, git:// or an http(s) URL of a `.git` repository."""
    if source.startswith(("git@", "git://", "ssh://")):
        return True
    if not is_url(source):
        return False
    return urllib.parse.urlsplit(source).path.endswith(".git")


def check_checksum(checksum: str) -> str:
    if not CHECKSUM_RE.fullmatch(checksum):
        raise BuildError(f"invalid --checksum {checksum!r}: expected sha256:<64 lowercase hex digits>")
    return checksum


_downloads: dict[str, Download] = {}
_directory: Path | None = None


def _private_directory() -> Path:
    global _directory
    if _directory is None:
        _directory = Path(tempfile.mkdtemp(prefix="lazyctr-add-"))
        atexit.register(shutil.rmtree, _directory, True)
    return _directory


def fetch(url: str, checksum: str | None = None) -> Download:
    """The file at `url` (downloaded once per process), checked against `checksum` if given."""
    download = _downloads.get(url)
    if download is None:
        download = _downloads[url] = _download(url)
    if checksum is not None and download.digest != check_checksum(checksum):
        raise BuildError(f"checksum mismatch for {url}: expected {checksum}, got {download.digest}")
    return download


def _download(url: str) -> Download:
    request = urllib.request.Request(url, headers={"User-Agent": "lazyctr"})
    fd, name = tempfile.mkstemp(dir=_private_directory())
    hasher = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            while data := response.read(BUFSIZE):
                hasher.update(data)
                out.write(data)
            headers = response.headers
            final_url = response.geturl()
    except urllib.error.HTTPError as e:
        os.unlink(name)
        raise BuildError(f"ADD failed: {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        os.unlink(name)
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise BuildError(f"ADD failed: {url}: {reason}") from None
    return Download(
        url=url,
        path=Path(name),
        digest="sha256:" + hasher.hexdigest(),
        filename=_filename(final_url, headers),
        mtime_ns=_last_modified(headers.get("Last-Modified")),
    )


def _filename(url: str, headers: email.message.Message) -> str:
    """Like BuildKit: Content-Disposition's filename, else the URL path's last component, else `index`."""
    disposition = headers.get_param("filename", header="Content-Disposition")
    if isinstance(disposition, str) and _usable(posixpath.basename(disposition)):
        return posixpath.basename(disposition)
    base = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    return base if _usable(base) else "index"


def _usable(name: str) -> bool:
    return name not in ("", ".", "..") and "\0" not in name and "/" not in name


def _last_modified(value: str | None) -> int | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return int(when.timestamp()) * 1_000_000_000
