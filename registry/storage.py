"""Where the registry keeps its content: the repository logic, written once above a storage driver.

Layout under the driver's root (`registry.filesystem` or `registry.s3`):

    blobs/<algorithm>/<hex>                    every blob and manifest, byte-exact, once
    repositories/<name>/_layers/<link>         the blobs a repository was given (empty link files)
    repositories/<name>/_manifests/<link>      the manifests pushed to a repository
    repositories/<name>/tags/<tag>             a tag; its content is the manifest's digest
    uploads/<uuid>/data, uploads/<uuid>/name   an upload being assembled (appendable) and its repository

A blob is visible only in the repositories that hold a link to it. A blob reaches its final path
only after its digest was checked, so a crash never leaves a half-written blob under its digest.
Names, tags, digests and upload ids are checked against their grammars (`check_*`, by the server)
before they become paths.

Every registered digest algorithm (`storage.digest.ALGORITHMS`: sha256, sha512) is served: content
is verified with the algorithm its digest names. A link is named by the digest's hex for sha256 (as
the CNCF registry lays it out) and `<algorithm>-<hex>` for the others. A manifest pushed by tag is
named by its sha256 digest; one pushed by a sha512 digest keeps it, and `?tag=` gives it tags.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from registry.blobcache import BlobCache
from registry.driver import StorageDriver, pieces
from registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    RegistryError,
)
from storage.digest import ALGORITHMS, CANONICAL, Digest
from storage.errors import InvalidReference, UnsupportedDigestAlgorithm
from storage.oci import MEDIA_INDEX, MEDIA_MANIFEST, Descriptor
from storage.reference import validate_repository, validate_tag

_UPLOAD_ID_RE = re.compile(r"^[0-9a-f]{32}\Z")
BLOBS, REPOSITORIES, UPLOADS = "blobs", "repositories", "uploads"
HELD_TTL = 5.0  # seconds a repository's hold on a blob is taken as known, on a remote driver
HELD_MEMO_MAX = 100_000


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
    """A manifest reference: a digest or a tag. An unparseable one names no manifest; a digest of an
    algorithm we do not know is refused as the invalid digest it is."""
    try:
        return Digest(reference) if is_digest(reference) else validate_tag(reference)
    except UnsupportedDigestAlgorithm as e:
        raise DigestInvalid(str(e), {"digest": reference}) from None
    except InvalidReference as e:
        raise ManifestUnknown(str(e), {"reference": reference}) from None


def check_upload_id(upload_id: str) -> str:
    if not _UPLOAD_ID_RE.match(upload_id):
        raise BlobUploadUnknown(f"upload {upload_id!r} not found", {"uuid": upload_id})
    return upload_id


def link_name(digest: Digest) -> str:
    """A repository's link to a blob: the hex digest for sha256, `<algorithm>-<hex>` for the others."""
    digest = Digest(digest)
    return digest.hex if digest.algorithm == CANONICAL else f"{digest.algorithm}-{digest.hex}"


def digest_of_link(link: str) -> Digest:
    algorithm, _, hex_digest = link.rpartition("-")
    return Digest(f"{algorithm or CANONICAL}:{hex_digest}")


def media_type_of(doc: dict[str, Any]) -> str:
    """A manifest's media type: the one it declares, else what its fields say it is."""
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    return MEDIA_INDEX if "manifests" in doc else MEDIA_MANIFEST


@dataclass(frozen=True)
class BlobLocation:
    """A blob's size, and a local file holding it when there is one (then served with sendfile)."""

    size: int
    path: Path | None


class BlobStore:
    """Blobs, links, tags, manifests, referrers and upload sessions on a `StorageDriver`.

    `cache`: whole blobs kept locally for a driver without local files (S3), so the server can
    sendfile them. Arguments are validated by the caller's `check_*`; the paths assert it again.
    """

    def __init__(self, driver: StorageDriver, cache: BlobCache | None = None) -> None:
        self.driver = driver
        self.cache = cache
        driver.make_dirs(*(f"{BLOBS}/{algorithm}" for algorithm in ALGORITHMS), REPOSITORIES, UPLOADS)
        self._held_memo: dict[tuple[str, Digest], tuple[int, float]] = {}  # -> (size, valid until)

    # Paths.
    def _repo(self, name: str) -> str:
        return f"{REPOSITORIES}/{validate_repository(name)}"

    def _blob(self, digest: Digest) -> str:
        digest = Digest(digest)
        return f"{BLOBS}/{digest.algorithm}/{digest.hex}"

    def _layer_link(self, name: str, digest: Digest) -> str:
        return f"{self._repo(name)}/_layers/{link_name(digest)}"

    def _manifest_link(self, name: str, digest: Digest) -> str:
        return f"{self._repo(name)}/_manifests/{link_name(digest)}"

    def _tag(self, name: str, tag: str) -> str:
        return f"{self._repo(name)}/tags/{validate_tag(tag)}"

    def _upload(self, name: str, upload_id: str) -> str:
        """The directory of an upload of `name`; BlobUploadUnknown if there is none."""
        directory = f"{UPLOADS}/{check_upload_id(upload_id)}"
        owner = self.driver.get_content(f"{directory}/name")
        if owner is None:
            raise BlobUploadUnknown(f"upload {upload_id} not found", {"uuid": upload_id})
        if owner.decode() != name:
            raise BlobUploadUnknown(f"upload {upload_id} not found in {name}", {"uuid": upload_id})
        return directory

    # Repositories and blobs.
    def repository_exists(self, name: str) -> bool:
        return bool(self.driver.list(self._repo(name)))

    def _held(self, name: str, digest: Digest) -> int:
        """The size of a blob the repository holds (BlobUnknown otherwise).

        On a remote driver a yes is remembered for HELD_TTL seconds: asking S3 costs two or three
        round trips, more than serving a 64 KiB range. A delete through this server forgets it at
        once; one through another replica is seen within HELD_TTL.
        """
        key = (name, Digest(digest))
        known = self._held_memo.get(key)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        linked = self.driver.stat(self._layer_link(name, digest)) or self.driver.stat(
            self._manifest_link(name, digest)
        )
        blob = self.driver.stat(self._blob(digest)) if linked else None
        if blob is None:
            self._held_memo.pop(key, None)
            raise BlobUnknown(f"blob {digest} not found in {name}", {"digest": digest})
        if self.driver.remote:
            if len(self._held_memo) >= HELD_MEMO_MAX:
                self._held_memo.clear()
            self._held_memo[key] = (blob.size, time.monotonic() + HELD_TTL)
        return blob.size

    def blob_size(self, name: str, digest: Digest) -> int:
        """The size of a blob the repository holds; BlobUnknown otherwise."""
        return self._held(name, digest)

    def locate_blob(self, name: str, digest: Digest, whole: bool) -> BlobLocation:
        """Where to serve a blob the repository holds from; BlobUnknown if it holds none.

        `whole`: the whole blob is wanted (not ranges of it), so it may be fetched into the local
        cache first. Without a path, the server streams the bytes with `read_blob`.
        """
        size = self._held(name, digest)
        path = self.driver.local_file(self._blob(digest))
        if path is None and self.cache is not None:
            path = self.cache.path(digest)
            if path is None and whole and self.cache.fits(size):
                path = self.cache.fill(digest, self.driver.read(self._blob(digest), 0, size))
        return BlobLocation(size, path)

    def read_blob(self, name: str, digest: Digest, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of a blob the repository holds (as `locate_blob` checked just before)."""
        cached = self.cache.open(digest) if self.cache is not None else None
        if cached is None:
            yield from self.driver.read(self._blob(digest), start, end)
            return
        with cached:
            cached.seek(start)
            yield from pieces(cached, end - start, f"cached blob {digest}")

    def mount_blob(self, name: str, digest: Digest, source: str) -> bool:
        """Link a blob of `source` into `name`; False when `source` does not hold it."""
        try:
            self._held(source, digest)
        except BlobUnknown:
            return False
        self.driver.put_content(self._layer_link(name, digest), b"")
        return True

    def repositories(self) -> Iterator[str]:
        """Every repository's name, walking the tree of `repositories/` (one listing a directory).

        A directory holding `_layers` or `_manifests` is a repository; its `tags` directory is not
        walked into (that would cost a listing a tag), so a repository named `<repository>/tags`
        is not seen.
        """
        pending = [""]
        while pending:
            name = pending.pop()
            entries = self.driver.list(f"{REPOSITORIES}/{name}".rstrip("/"))
            is_repository = "_layers" in entries or "_manifests" in entries
            if is_repository:
                yield name
            pending += sorted(
                (
                    f"{name}/{entry}".lstrip("/")
                    for entry in entries
                    if not entry.startswith("_") and not (is_repository and entry == "tags")
                ),
                reverse=True,
            )

    def holder_of(self, digest: Digest, readable: Callable[[str], bool]) -> str | None:
        """A repository that holds the blob and that `readable` says the caller may read; None if none."""
        for name in self.repositories():
            try:
                self._held(name, digest)
            except BlobUnknown:
                continue
            if readable(name):
                return name
        return None

    def delete_blob(self, name: str, digest: Digest) -> None:
        # The blob stays: other repositories may hold it. Garbage collection is a separate job.
        link = self._layer_link(name, digest)
        self._held_memo.pop((name, Digest(digest)), None)
        if self.driver.stat(link) is None:
            raise BlobUnknown(f"blob {digest} not found in {name}", {"digest": digest})
        self.driver.delete(link)

    # Uploads.
    def start_upload(self, name: str) -> str:
        upload_id = uuid.uuid4().hex
        directory = f"{UPLOADS}/{upload_id}"
        self.driver.put_content(f"{directory}/name", validate_repository(name).encode())
        self.driver.appender(f"{directory}/data", 0).close()  # an empty upload is one too
        return upload_id

    def upload_size(self, name: str, upload_id: str) -> int:
        appended = self.driver.appended(f"{self._upload(name, upload_id)}/data")
        return 0 if appended is None else appended.size

    def open_upload(self, name: str, upload_id: str, offset: int) -> BinaryIO:
        """A file to append to, at `offset`, which must be where the upload stands."""
        size = self.upload_size(name, upload_id)
        if offset != size:
            raise BlobUploadInvalid(
                f"chunk starts at {offset}, but the upload stands at {size}", {"size": size}
            )
        return self.driver.appender(f"{self._upload(name, upload_id)}/data", offset)

    def finish_upload(self, name: str, upload_id: str, digest: Digest) -> int:
        """Verify and commit the upload as a blob of `name`; the upload is gone afterwards either way."""
        directory = self._upload(name, upload_id)
        try:
            hasher = digest.hasher()
            size = 0
            for piece in self.driver.read_appended(f"{directory}/data"):
                hasher.update(piece)
                size += len(piece)
            found = Digest.from_hasher(hasher)
            if found != digest:
                raise DigestInvalid(
                    f"upload does not match its digest: expected {digest}, found {found}",
                    {"expected": digest, "found": found},
                )
            self.driver.move_appended(f"{directory}/data", self._blob(digest))
            self.driver.put_content(self._layer_link(name, digest), b"")
            return size
        except FileNotFoundError:
            # The upload was finished, cancelled or expired by another request meanwhile.
            raise BlobUploadUnknown(f"upload {upload_id} not found", {"uuid": upload_id}) from None
        finally:
            self.driver.delete(directory)

    def cancel_upload(self, name: str, upload_id: str) -> None:
        self.driver.delete(self._upload(name, upload_id))

    def expire_uploads(self, idle_seconds: float) -> int:
        """Remove uploads nobody has written to for `idle_seconds` (clients that died); returns how many."""
        deadline = time.time() - idle_seconds
        expired = 0
        for upload_id in self.driver.list(UPLOADS):
            directory = f"{UPLOADS}/{upload_id}"
            # Its last append, else its start; a directory holding neither is a start cut short.
            written = (
                self.driver.appended(f"{directory}/data")
                or self.driver.stat(f"{directory}/name")
                or self.driver.stat(directory)
            )
            if written is None or written.modified < deadline:
                self.driver.delete(directory)
                expired += 1
        return expired

    # Manifests and tags.
    def put_manifest(self, name: str, reference: str, data: bytes, tags: tuple[str, ...] = ()) -> Digest:
        """Store a manifest under its digest in `name`, and tag it with `reference` (a tag) and `tags`.

        By digest, the manifest is hashed with the digest's algorithm; by tag, with sha256.
        """
        digest = Digest.of(data, Digest(reference).algorithm if is_digest(reference) else CANONICAL)
        if is_digest(reference) and reference != digest:
            raise DigestInvalid(
                f"manifest does not match its digest: expected {reference}, found {digest}",
                {"expected": reference, "found": digest},
            )
        if self.driver.stat(self._blob(digest)) is None:
            self.driver.put_content(self._blob(digest), data)
        self.driver.put_content(self._manifest_link(name, digest), b"")
        for tag in (*tags, *(() if is_digest(reference) else (reference,))):
            self.driver.put_content(self._tag(name, tag), digest.encode())
        return digest

    def _resolve(self, name: str, reference: str) -> Digest:
        if is_digest(reference):
            digest = Digest(reference)
        else:
            text = self.driver.get_content(self._tag(name, reference))
            if text is None:
                raise ManifestUnknown(f"manifest {name}:{reference} not found", {"reference": reference})
            digest = Digest(text.decode())
        if not self.has_manifest(name, digest):
            raise ManifestUnknown(f"manifest {name}@{digest} not found", {"reference": reference})
        return digest

    def get_manifest(self, name: str, reference: str) -> tuple[Digest, bytes]:
        digest = self._resolve(name, reference)
        data = self.driver.get_content(self._blob(digest))
        if data is None:
            raise ManifestUnknown(f"manifest {name}@{digest} not found", {"reference": reference})
        return digest, data

    def has_manifest(self, name: str, digest: Digest) -> bool:
        link = self.driver.stat(self._manifest_link(name, digest))
        return link is not None and self.driver.stat(self._blob(digest)) is not None

    def delete_manifest(self, name: str, reference: str) -> None:
        digest = self._resolve(name, reference)
        if not is_digest(reference):
            self.driver.delete(self._tag(name, reference))
            return
        tags = (self._tag(name, tag) for tag in self.driver.list(f"{self._repo(name)}/tags"))
        pointing = [tag for tag in tags if self.driver.get_content(tag) == digest.encode()]
        self._held_memo.pop((name, digest), None)
        self.driver.delete(*pointing, self._manifest_link(name, digest))

    def tags(self, name: str) -> list[str]:
        """The repository's tags in lexical order; NameUnknown for a repository that holds nothing."""
        if not self.repository_exists(name):
            raise NameUnknown(f"repository {name} not found", {"name": name})
        return sorted(self.driver.list(f"{self._repo(name)}/tags"))

    def manifest_digests(self, name: str) -> list[Digest]:
        """Every manifest the repository holds."""
        return [digest_of_link(link) for link in self.driver.list(f"{self._repo(name)}/_manifests")]

    def referrers(self, name: str, subject: Digest, artifact_type: str | None) -> list[Descriptor]:
        """The manifests of `name` whose `subject` is `subject` (of `artifact_type`, if given)."""
        found = []
        for candidate in sorted(self.manifest_digests(name)):
            try:
                _, data = self.get_manifest(name, candidate)
                doc = json.loads(data)
            except (RegistryError, ValueError):
                continue
            referred = doc.get("subject") if isinstance(doc, dict) else None
            if not isinstance(referred, dict) or referred.get("digest") != subject:
                continue
            config = doc.get("config")
            kind = doc.get("artifactType") or (config.get("mediaType") if isinstance(config, dict) else None)
            if artifact_type is not None and kind != artifact_type:
                continue
            annotations = doc.get("annotations")
            found.append(
                Descriptor(
                    media_type_of(doc),
                    candidate,
                    len(data),
                    annotations=annotations if isinstance(annotations, dict) else {},
                    artifact_type=kind or None,
                )
            )
        return found
