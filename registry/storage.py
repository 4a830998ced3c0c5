"""Where the registry keeps its content: the `BlobStore` interface and its filesystem backend.

Layout under the store's directory:

    blobs/sha256/<hex>                         every blob and manifest, byte-exact, once
    repositories/<name>/_layers/<hex>          the blobs a repository was given (empty link files)
    repositories/<name>/_manifests/<hex>       the manifests pushed to a repository
    repositories/<name>/tags/<tag>             a tag; its content is the manifest's digest
    uploads/<uuid>/data, uploads/<uuid>/name   an upload being assembled and its repository

A blob is visible only in the repositories that hold a link to it. Blobs reach their final path
only by rename or hard link after their digest was checked, so a crash never leaves a half-written
blob under its digest. Names, tags, digests and upload ids are checked against their grammars before they
touch a path.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
)
from storage.digest import Digest
from storage.errors import InvalidReference
from storage.files import atomic_write, fsync_dir
from storage.reference import validate_repository, validate_tag

_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
_BUFSIZE = 1 << 20


def check_name(name: str) -> str:
    try:
        return validate_repository(name)
    except InvalidReference as e:
        raise NameInvalid(str(e), {"name": name}) from None


def check_digest(text: str) -> Digest:
    try:
        return Digest(text)
    except InvalidReference as e:
        raise DigestInvalid(str(e), {"digest": text}) from None


def is_digest(reference: str) -> bool:
    return ":" in reference


def check_tag(tag: str) -> str:
    try:
        return validate_tag(tag)
    except InvalidReference as e:
        raise ManifestInvalid(str(e), {"tag": tag}) from None


def check_reference(reference: str) -> str:
    """A manifest reference: a digest or a tag. An unparseable one names no manifest."""
    try:
        return Digest(reference) if is_digest(reference) else validate_tag(reference)
    except InvalidReference as e:
        raise ManifestUnknown(str(e), {"reference": reference}) from None


def check_upload_id(upload_id: str) -> str:
    if not _UPLOAD_ID_RE.match(upload_id):
        raise BlobUploadUnknown(f"upload {upload_id!r} not found", {"uuid": upload_id})
    return upload_id


@dataclass(frozen=True)
class BlobLocation:
    """A blob's size, and a local file holding it when the backend has one (then served with sendfile)."""

    size: int
    path: Path | None


class BlobStore(abc.ABC):
    """What the server needs from a backend. Arguments are validated by the caller's `check_*`."""

    @abc.abstractmethod
    def repository_exists(self, name: str) -> bool: ...

    @abc.abstractmethod
    def blob_size(self, name: str, digest: Digest) -> int:
        """The size of a blob the repository holds; BlobUnknown otherwise."""

    @abc.abstractmethod
    def blob_path(self, name: str, digest: Digest) -> Path:
        """A file holding the blob (so the server can sendfile it); BlobUnknown if not in the repository."""

    def locate_blob(self, name: str, digest: Digest, whole: bool) -> BlobLocation:
        """Where to serve a blob the repository holds from; BlobUnknown if it holds none.

        `whole`: the whole blob is wanted (not ranges of it), so a backend may fetch it into a
        local cache first. Without a path, the server streams the bytes with `read_blob`.
        """
        path = self.blob_path(name, digest)
        return BlobLocation(path.stat().st_size, path)

    def read_blob(self, name: str, digest: Digest, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of a blob the repository holds, in pieces."""
        with self.blob_path(name, digest).open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                piece = f.read(min(left, _BUFSIZE))
                if not piece:
                    raise OSError(f"blob {digest} shrank while being read")
                left -= len(piece)
                yield piece

    @abc.abstractmethod
    def mount_blob(self, name: str, digest: Digest, source: str) -> bool:
        """Link a blob of `source` into `name`; False when `source` does not hold it."""

    @abc.abstractmethod
    def delete_blob(self, name: str, digest: Digest) -> None: ...

    @abc.abstractmethod
    def start_upload(self, name: str) -> str: ...

    @abc.abstractmethod
    def upload_size(self, name: str, upload_id: str) -> int: ...

    @abc.abstractmethod
    def open_upload(self, name: str, upload_id: str, offset: int) -> BinaryIO:
        """A file to append to, at `offset`, which must be where the upload stands."""

    @abc.abstractmethod
    def finish_upload(self, name: str, upload_id: str, digest: Digest) -> int:
        """Verify and commit the upload as a blob of `name`; the upload is gone afterwards either way."""

    @abc.abstractmethod
    def cancel_upload(self, name: str, upload_id: str) -> None: ...

    @abc.abstractmethod
    def expire_uploads(self, idle_seconds: float) -> int:
        """Remove uploads nobody has written to for `idle_seconds` (clients that died); returns how many."""

    @abc.abstractmethod
    def put_manifest(self, name: str, reference: str, data: bytes) -> Digest: ...

    @abc.abstractmethod
    def get_manifest(self, name: str, reference: str) -> tuple[Digest, bytes]: ...

    @abc.abstractmethod
    def has_manifest(self, name: str, digest: Digest) -> bool: ...

    @abc.abstractmethod
    def delete_manifest(self, name: str, reference: str) -> None: ...

    @abc.abstractmethod
    def manifest_digests(self, name: str) -> list[Digest]:
        """Every manifest the repository holds, for the referrers API."""

    @abc.abstractmethod
    def tags(self, name: str) -> list[str]:
        """The repository's tags in lexical order; NameUnknown for a repository that holds nothing."""


class FilesystemBlobStore(BlobStore):
    """The default backend: plain files under one directory (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.repositories = root / "repositories"
        self.uploads = root / "uploads"
        for directory in (self.blobs, self.repositories, self.uploads):
            directory.mkdir(parents=True, exist_ok=True)

    # Paths. Every argument has been through check_* already; these assert it again cheaply.
    def _repo(self, name: str) -> Path:
        return self.repositories / validate_repository(name)

    def _blob(self, digest: Digest) -> Path:
        return self.blobs / Digest(digest).hex

    def _layer_link(self, name: str, digest: Digest) -> Path:
        return self._repo(name) / "_layers" / Digest(digest).hex

    def _manifest_link(self, name: str, digest: Digest) -> Path:
        return self._repo(name) / "_manifests" / Digest(digest).hex

    def _tag(self, name: str, tag: str) -> Path:
        return self._repo(name) / "tags" / validate_tag(tag)

    def _upload(self, name: str, upload_id: str) -> Path:
        directory = self.uploads / check_upload_id(upload_id)
        try:
            owner = (directory / "name").read_text()
        except FileNotFoundError:
            raise BlobUploadUnknown(f"upload {upload_id} not found", {"uuid": upload_id}) from None
        if owner != name:
            raise BlobUploadUnknown(f"upload {upload_id} not found in {name}", {"uuid": upload_id})
        return directory

    def _link(self, link: Path) -> None:
        if not link.exists():
            atomic_write(link, b"")

    def _store_blob(self, digest: Digest, data: bytes) -> None:
        if not self._blob(digest).exists():
            atomic_write(self._blob(digest), data)

    # Repositories and blobs.
    def repository_exists(self, name: str) -> bool:
        return self._repo(name).is_dir()

    def _held(self, name: str, digest: Digest) -> Path:
        path = self._blob(digest)
        linked = self._layer_link(name, digest).exists() or self._manifest_link(name, digest).exists()
        if not linked or not path.exists():
            raise BlobUnknown(f"blob {digest} not found in {name}", {"digest": digest})
        return path

    def blob_size(self, name: str, digest: Digest) -> int:
        return self._held(name, digest).stat().st_size

    def blob_path(self, name: str, digest: Digest) -> Path:
        return self._held(name, digest)

    def mount_blob(self, name: str, digest: Digest, source: str) -> bool:
        try:
            self._held(source, digest)
        except BlobUnknown:
            return False
        self._link(self._layer_link(name, digest))
        return True

    def delete_blob(self, name: str, digest: Digest) -> None:
        # The blob file stays: other repositories may hold it. Garbage collection is a separate job.
        try:
            self._layer_link(name, digest).unlink()
        except FileNotFoundError:
            raise BlobUnknown(f"blob {digest} not found in {name}", {"digest": digest}) from None

    # Uploads.
    def start_upload(self, name: str) -> str:
        upload_id = uuid.uuid4().hex
        directory = self.uploads / upload_id
        directory.mkdir()
        (directory / "data").touch()
        (directory / "name").write_text(name)
        return upload_id

    def upload_size(self, name: str, upload_id: str) -> int:
        return (self._upload(name, upload_id) / "data").stat().st_size

    def open_upload(self, name: str, upload_id: str, offset: int) -> BinaryIO:
        data = self._upload(name, upload_id) / "data"
        size = data.stat().st_size
        if offset != size:
            raise BlobUploadInvalid(
                f"chunk starts at {offset}, but the upload stands at {size}", {"size": size}
            )
        return data.open("ab")

    def finish_upload(self, name: str, upload_id: str, digest: Digest) -> int:
        directory = self._upload(name, upload_id)
        data = directory / "data"
        try:
            hasher = hashlib.sha256()
            with data.open("rb") as f:
                while block := f.read(_BUFSIZE):
                    hasher.update(block)
                os.fsync(f.fileno())
            found = Digest.from_hasher(hasher)
            if found != digest:
                raise DigestInvalid(
                    f"upload does not match its digest: expected {digest}, found {found}",
                    {"expected": digest, "found": found},
                )
            size = data.stat().st_size
            target = self._blob(digest)
            # link, not replace: it never overwrites, so when clients push the same blob at once
            # the first to finish puts it in place and the others find it there.
            with contextlib.suppress(FileExistsError):
                os.link(data, target)
                fsync_dir(target.parent)
            self._link(self._layer_link(name, digest))
            return size
        except FileNotFoundError:
            # The upload was finished, cancelled or expired by another request meanwhile.
            raise BlobUploadUnknown(f"upload {upload_id} not found", {"uuid": upload_id}) from None
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def cancel_upload(self, name: str, upload_id: str) -> None:
        shutil.rmtree(self._upload(name, upload_id))

    def expire_uploads(self, idle_seconds: float) -> int:
        deadline = time.time() - idle_seconds
        expired = 0
        for directory in self.uploads.iterdir():
            try:
                idle = (directory / "data").stat().st_mtime < deadline
            except FileNotFoundError:  # finished or cancelled meanwhile, or never started
                idle = directory.stat().st_mtime < deadline
            if idle:
                shutil.rmtree(directory, ignore_errors=True)
                expired += 1
        return expired

    # Manifests and tags.
    def put_manifest(self, name: str, reference: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        if is_digest(reference) and reference != digest:
            raise DigestInvalid(
                f"manifest does not match its digest: expected {reference}, found {digest}",
                {"expected": reference, "found": digest},
            )
        self._store_blob(digest, data)
        self._link(self._manifest_link(name, digest))
        if not is_digest(reference):
            atomic_write(self._tag(name, reference), digest.encode())
        return digest

    def _resolve(self, name: str, reference: str) -> Digest:
        if is_digest(reference):
            digest = Digest(reference)
        else:
            try:
                digest = Digest(self._tag(name, reference).read_text())
            except FileNotFoundError:
                raise ManifestUnknown(
                    f"manifest {name}:{reference} not found", {"reference": reference}
                ) from None
        if not self.has_manifest(name, digest):
            raise ManifestUnknown(f"manifest {name}@{digest} not found", {"reference": reference})
        return digest

    def get_manifest(self, name: str, reference: str) -> tuple[Digest, bytes]:
        digest = self._resolve(name, reference)
        return digest, self._blob(digest).read_bytes()

    def has_manifest(self, name: str, digest: Digest) -> bool:
        return self._manifest_link(name, digest).exists() and self._blob(digest).exists()

    def delete_manifest(self, name: str, reference: str) -> None:
        digest = self._resolve(name, reference)
        if not is_digest(reference):
            self._tag(name, reference).unlink()
            return
        for tag in self._tag_paths(name):
            with contextlib.suppress(FileNotFoundError):
                if tag.read_text() == digest:
                    tag.unlink()
        self._manifest_link(name, digest).unlink()

    def _tag_paths(self, name: str) -> Iterator[Path]:
        tags = self._repo(name) / "tags"
        if tags.is_dir():
            yield from (p for p in tags.iterdir() if not p.name.startswith("."))  # skip writers' temporaries

    def tags(self, name: str) -> list[str]:
        if not self.repository_exists(name):
            raise NameUnknown(f"repository {name} not found", {"name": name})
        return sorted(p.name for p in self._tag_paths(name))

    def manifest_digests(self, name: str) -> list[Digest]:
        links = self._repo(name) / "_manifests"
        if not links.is_dir():
            return []
        return [Digest("sha256:" + p.name) for p in links.iterdir() if not p.name.startswith(".")]
