"""The registry's S3 backend: the `BlobStore` interface on one bucket, through boto3.

Keys in the bucket mirror the filesystem backend's layout:

    blobs/sha256/<hex>                          every blob and manifest, byte-exact, once
    repositories/<name>/_layers/<hex>           the blobs a repository was given (empty objects)
    repositories/<name>/_manifests/<hex>        the manifests pushed to a repository
    repositories/<name>/tags/<tag>              a tag; its content is the manifest's digest
    uploads/<uuid>/name                         an upload's repository
    uploads/<uuid>/parts/<offset>               the upload's bytes, one object per request body

S3 objects cannot be appended to, so each request body becomes its own part, named by the zero-padded
offset it starts at; the upload's size is the sum of its parts. A blob reaches `blobs/sha256/<hex>`
only after its parts were read back and hashed, and a PUT of an S3 object is atomic, so no reader
ever sees a half-written blob under its digest.

S3 cannot hand the server a local file. Byte ranges of a blob are ranged S3 GETs (a 64 KiB read
never downloads the whole blob). A whole blob is downloaded into a local cache directory
(verified against its digest, written atomically) and served from there with sendfile; the cache
keeps at most `cache_size` bytes, dropping the least recently used blobs first. A blob larger
than the cache, or any blob when `cache_size` is 0, is streamed from S3 instead.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from botocore.exceptions import ClientError

from registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
)
from registry.storage import BlobLocation, BlobStore, check_upload_id, is_digest
from storage.digest import Digest
from storage.reference import validate_repository, validate_tag

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef, ObjectIdentifierTypeDef

_BUFSIZE = 1 << 20
_SPOOL = 8 << 20  # request bodies up to this size stay in memory before their part is written
_OFFSET_DIGITS = 20  # parts sort by name in the order of their offsets
DEFAULT_CACHE_SIZE = 2 << 30
HELD_TTL = 5.0  # seconds a repository's hold on a blob is taken as known (see _held)
HELD_MEMO_MAX = 100_000


def _missing(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in {"404", "NoSuchKey", "NotFound"}


class _UploadPart(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
    """What `open_upload` hands the server: a local buffer that becomes one part object on close."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        super().__init__(max_size=_SPOOL)
        self._store = store
        self._key = key

    def truncate(self, size: int | None = None) -> int:
        # The server truncates to the offset the body started at when the body was cut off: that
        # offset is where this part begins, so the whole part is dropped.
        self.seek(0)
        super().truncate(0)
        return 0

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.tell() > 0:
                self.seek(0)
                # put_object, not upload_fileobj: s3transfer closes the file it is given, which is us.
                body = cast(BinaryIO, self._file)
                self._store.client.put_object(Bucket=self._store.bucket, Key=self._key, Body=body)
        finally:
            super().close()


class S3BlobStore(BlobStore):
    """Blobs, links, tags and uploads as objects of one S3 bucket (see the module docstring)."""

    def __init__(
        self,
        bucket: str,
        cache: Path,
        client: S3Client | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        **client_args: Any,
    ) -> None:
        self.bucket = bucket
        self.client: S3Client = client or boto3.client("s3", **client_args)
        self.cache = cache
        self.cache_size = cache_size
        cache.mkdir(parents=True, exist_ok=True)
        # The cached blobs by hex digest, least recently used first, with their sizes. Blobs left
        # by an earlier run count in the order they were last used (mtime); temporaries are dropped.
        self._held_memo: dict[tuple[str, Digest], tuple[int, float]] = {}  # -> (size, valid until)
        self._cached: OrderedDict[str, int] = OrderedDict()
        self._cache_lock = threading.Lock()
        found = []
        for path in cache.iterdir():
            if path.name.startswith("."):
                path.unlink(missing_ok=True)
            else:
                stat = path.stat()
                found.append((stat.st_mtime, path.name, stat.st_size))
        for _, hex_digest, size in sorted(found):
            self._cached[hex_digest] = size
        self._evict(keep=None)

    # Keys. Every argument has been through check_* already; these assert it again cheaply.
    def _repo(self, name: str) -> str:
        return f"repositories/{validate_repository(name)}/"

    def _blob(self, digest: Digest) -> str:
        return f"blobs/sha256/{Digest(digest).hex}"

    def _layer_link(self, name: str, digest: Digest) -> str:
        return f"{self._repo(name)}_layers/{Digest(digest).hex}"

    def _manifest_link(self, name: str, digest: Digest) -> str:
        return f"{self._repo(name)}_manifests/{Digest(digest).hex}"

    def _tag(self, name: str, tag: str) -> str:
        return f"{self._repo(name)}tags/{validate_tag(tag)}"

    def _upload(self, name: str, upload_id: str) -> str:
        prefix = f"uploads/{check_upload_id(upload_id)}/"
        owner = self._read(prefix + "name")
        if owner is None:
            raise BlobUploadUnknown(f"upload {upload_id} not found", {"uuid": upload_id})
        if owner.decode() != name:
            raise BlobUploadUnknown(f"upload {upload_id} not found in {name}", {"uuid": upload_id})
        return prefix

    # Objects.
    def _exists(self, key: str) -> bool:
        return self._size(key) is not None

    def _size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if _missing(e):
                return None
            raise

    def _read(self, key: str) -> bytes | None:
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as e:
            if _missing(e):
                return None
            raise

    def _write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def _delete(self, *keys: str) -> None:
        for start in range(0, len(keys), 1000):
            objects: list[ObjectIdentifierTypeDef] = [{"Key": key} for key in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def _list(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """The objects under `prefix` (only those directly under it when `delimiter` is given)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter=delimiter):
            yield from cast(list[dict[str, Any]], page.get("Contents", []))

    def _any(self, prefix: str) -> bool:
        reply = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        return bool(reply.get("Contents"))

    # Repositories and blobs.
    def repository_exists(self, name: str) -> bool:
        return self._any(self._repo(name))

    def _held(self, name: str, digest: Digest) -> int:
        """The size of a blob the repository holds (BlobUnknown otherwise).

        A yes is remembered for HELD_TTL seconds: asking S3 costs two or three round trips, more
        than serving a 64 KiB range. A delete through this server forgets it at once; one through
        another replica is seen within HELD_TTL.
        """
        key = (name, Digest(digest))
        known = self._held_memo.get(key)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        linked = self._exists(self._layer_link(name, digest)) or self._exists(
            self._manifest_link(name, digest)
        )
        size = self._size(self._blob(digest)) if linked else None
        if size is None:
            self._held_memo.pop(key, None)
            raise BlobUnknown(f"blob {digest} not found in {name}", {"digest": digest})
        if len(self._held_memo) >= HELD_MEMO_MAX:
            self._held_memo.clear()
        self._held_memo[key] = (size, time.monotonic() + HELD_TTL)
        return size

    def blob_size(self, name: str, digest: Digest) -> int:
        return self._held(name, digest)

    def blob_path(self, name: str, digest: Digest) -> Path:
        size = self._held(name, digest)
        return self._fetch(digest, size)

    def locate_blob(self, name: str, digest: Digest, whole: bool) -> BlobLocation:
        size = self._held(name, digest)
        path = self._cached_path(digest)
        if path is None and whole and 0 < size <= self.cache_size:
            path = self._fetch(digest, size)
        return BlobLocation(size, path)

    def read_blob(self, name: str, digest: Digest, start: int, end: int) -> Iterator[bytes]:
        # The repository's hold on the blob was checked by locate_blob, just before.
        if end <= start:
            return
        cached = self._cached_path(digest)
        if cached is not None:
            try:
                with cached.open("rb") as f:  # open: eviction cannot take it away any more
                    f.seek(start)
                    left = end - start
                    while left > 0 and (piece := f.read(min(left, _BUFSIZE))):
                        left -= len(piece)
                        yield piece
                    if left == 0:
                        return
                raise OSError(f"cached blob {digest} is shorter than {end} bytes")
            except FileNotFoundError:
                pass  # evicted meanwhile: read it from S3
        reply = self.client.get_object(
            Bucket=self.bucket, Key=self._blob(digest), Range=f"bytes={start}-{end - 1}"
        )
        body = reply["Body"]
        try:
            left = end - start
            while left > 0:
                piece = body.read(min(left, _BUFSIZE))
                if not piece:
                    raise OSError(f"blob {digest}: S3 sent {end - start - left} of {end - start} bytes")
                left -= len(piece)
                yield piece
        finally:
            body.close()

    # The local cache of whole blobs.
    def _cached_path(self, digest: Digest) -> Path | None:
        hex_digest = Digest(digest).hex
        with self._cache_lock:
            if hex_digest not in self._cached:
                return None
            self._cached.move_to_end(hex_digest)
        path = self.cache / hex_digest
        try:
            os.utime(path)  # so the order survives a restart
        except FileNotFoundError:
            with self._cache_lock:
                self._cached.pop(hex_digest, None)
            return None
        return path

    def _evict(self, keep: str | None) -> None:
        """Drop least recently used blobs until the cache fits its size (never `keep`, just returned)."""
        with self._cache_lock:
            total = sum(self._cached.values())
            for hex_digest in list(self._cached):
                if total <= self.cache_size:
                    break
                if hex_digest == keep:
                    continue
                total -= self._cached.pop(hex_digest)
                # A request already sending the file keeps its open descriptor: unlinking is safe.
                (self.cache / hex_digest).unlink(missing_ok=True)

    def _fetch(self, digest: Digest, size: int) -> Path:
        """The blob in the local cache, downloaded and verified if it is not there yet."""
        path = self._cached_path(digest)
        if path is not None:
            return path
        path = self.cache / Digest(digest).hex
        hasher = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=self.cache, prefix=".", suffix=".tmp", delete=False) as f:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=self._blob(digest))["Body"]
                while block := body.read(_BUFSIZE):
                    hasher.update(block)
                    f.write(block)
                f.flush()
                os.fsync(f.fileno())
                found = Digest.from_hasher(hasher)
                if found != digest:
                    raise BlobUnknown(
                        f"blob {digest} is damaged in the bucket: found {found}",
                        {"digest": digest, "found": found},
                    )
                os.replace(f.name, path)
            finally:
                if os.path.exists(f.name):
                    os.unlink(f.name)
        with self._cache_lock:
            self._cached[path.name] = size
            self._cached.move_to_end(path.name)
        self._evict(keep=path.name)
        return path

    def mount_blob(self, name: str, digest: Digest, source: str) -> bool:
        try:
            self._held(source, digest)
        except BlobUnknown:
            return False
        self._write(self._layer_link(name, digest), b"")
        return True

    def delete_blob(self, name: str, digest: Digest) -> None:
        # The blob object stays: other repositories may hold it. Garbage collection is a separate job.
        link = self._layer_link(name, digest)
        self._held_memo.pop((name, Digest(digest)), None)
        if not self._exists(link):
            raise BlobUnknown(f"blob {digest} not found in {name}", {"digest": digest})
        self._delete(link)

    # Uploads.
    def start_upload(self, name: str) -> str:
        upload_id = uuid.uuid4().hex
        self._write(f"uploads/{upload_id}/name", validate_repository(name).encode())
        return upload_id

    def _parts(self, prefix: str) -> list[dict[str, Any]]:
        return sorted(self._list(prefix + "parts/"), key=lambda o: str(o["Key"]))

    def upload_size(self, name: str, upload_id: str) -> int:
        return sum(int(part["Size"]) for part in self._parts(self._upload(name, upload_id)))

    def open_upload(self, name: str, upload_id: str, offset: int) -> BinaryIO:
        size = self.upload_size(name, upload_id)
        if offset != size:
            raise BlobUploadInvalid(
                f"chunk starts at {offset}, but the upload stands at {size}", {"size": size}
            )
        key = f"uploads/{upload_id}/parts/{offset:0{_OFFSET_DIGITS}d}"
        return cast(BinaryIO, _UploadPart(self, key))

    def finish_upload(self, name: str, upload_id: str, digest: Digest) -> int:
        prefix = self._upload(name, upload_id)
        try:
            parts = self._parts(prefix)
            hasher = hashlib.sha256()
            size = 0
            with tempfile.TemporaryFile() as assembled:
                for part in parts:
                    body = self.client.get_object(Bucket=self.bucket, Key=part["Key"])["Body"]
                    while block := body.read(_BUFSIZE):
                        hasher.update(block)
                        assembled.write(block)
                        size += len(block)
                found = Digest.from_hasher(hasher)
                if found != digest:
                    raise DigestInvalid(
                        f"upload does not match its digest: expected {digest}, found {found}",
                        {"expected": digest, "found": found},
                    )
                target = self._blob(digest)
                # Content-addressed: when clients push one blob at once, each writes the same bytes.
                if not self._exists(target):
                    if len(parts) == 1:
                        source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": str(parts[0]["Key"])}
                        self.client.copy(source, self.bucket, target)
                    else:
                        assembled.seek(0)
                        self.client.upload_fileobj(assembled, self.bucket, target)
            self._write(self._layer_link(name, digest), b"")
            return size
        except ClientError as e:
            if _missing(e):  # finished, cancelled or expired by another request meanwhile
                raise BlobUploadUnknown(f"upload {upload_id} not found", {"uuid": upload_id}) from None
            raise
        finally:
            self._delete(*(str(o["Key"]) for o in self._list(prefix)))

    def cancel_upload(self, name: str, upload_id: str) -> None:
        prefix = self._upload(name, upload_id)
        self._delete(*(str(o["Key"]) for o in self._list(prefix)))

    def expire_uploads(self, idle_seconds: float) -> int:
        deadline = time.time() - idle_seconds
        newest: dict[str, float] = {}
        keys: dict[str, list[str]] = {}
        for o in self._list("uploads/"):
            upload = str(o["Key"]).split("/")[1]
            newest[upload] = max(newest.get(upload, 0.0), o["LastModified"].timestamp())
            keys.setdefault(upload, []).append(str(o["Key"]))
        expired = [upload for upload, written in newest.items() if written < deadline]
        for upload in expired:
            self._delete(*keys[upload])
        return len(expired)

    # Manifests and tags.
    def put_manifest(self, name: str, reference: str, data: bytes) -> Digest:
        digest = Digest.of(data)
        if is_digest(reference) and reference != digest:
            raise DigestInvalid(
                f"manifest does not match its digest: expected {reference}, found {digest}",
                {"expected": reference, "found": digest},
            )
        if not self._exists(self._blob(digest)):
            self._write(self._blob(digest), data)
        self._write(self._manifest_link(name, digest), b"")
        if not is_digest(reference):
            self._write(self._tag(name, reference), digest.encode())
        return digest

    def _resolve(self, name: str, reference: str) -> Digest:
        if is_digest(reference):
            digest = Digest(reference)
        else:
            text = self._read(self._tag(name, reference))
            if text is None:
                raise ManifestUnknown(f"manifest {name}:{reference} not found", {"reference": reference})
            digest = Digest(text.decode())
        if not self.has_manifest(name, digest):
            raise ManifestUnknown(f"manifest {name}@{digest} not found", {"reference": reference})
        return digest

    def get_manifest(self, name: str, reference: str) -> tuple[Digest, bytes]:
        digest = self._resolve(name, reference)
        data = self._read(self._blob(digest))
        if data is None:
            raise ManifestUnknown(f"manifest {name}@{digest} not found", {"reference": reference})
        return digest, data

    def has_manifest(self, name: str, digest: Digest) -> bool:
        return self._exists(self._manifest_link(name, digest)) and self._exists(self._blob(digest))

    def delete_manifest(self, name: str, reference: str) -> None:
        digest = self._resolve(name, reference)
        if not is_digest(reference):
            self._delete(self._tag(name, reference))
            return
        pointing = [key for key in self._tag_keys(name) if self._read(key) == digest.encode()]
        self._held_memo.pop((name, digest), None)
        self._delete(*pointing, self._manifest_link(name, digest))

    def _tag_keys(self, name: str) -> list[str]:
        return [str(o["Key"]) for o in self._list(self._repo(name) + "tags/", delimiter="/")]

    def tags(self, name: str) -> list[str]:
        if not self.repository_exists(name):
            raise NameUnknown(f"repository {name} not found", {"name": name})
        return sorted(key.rsplit("/", 1)[1] for key in self._tag_keys(name))

    def manifest_digests(self, name: str) -> list[Digest]:
        prefix = self._repo(name) + "_manifests/"
        return [Digest("sha256:" + str(o["Key"])[len(prefix) :]) for o in self._list(prefix, delimiter="/")]
