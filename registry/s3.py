"""The registry's S3 storage driver: paths are the keys of one bucket, through boto3.

Directories are key prefixes (`list` asks with the `/` delimiter). A PUT of an object is atomic,
so no reader ever sees a half-written file. Byte ranges are ranged GETs: a 64 KiB read never
downloads a whole blob (whole blobs are kept in a local cache above the driver, see
`registry.blobcache`).

S3 objects cannot be appended to, so an appendable file `P` is kept as one object per append,
`P/<offset>`, named by the zero-padded offset it starts at; its size is the sum of its parts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from botocore.exceptions import ClientError

from registry.driver import READ_SIZE, FileInfo, StorageDriver, checked_path, pieces

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CopySourceTypeDef, ObjectIdentifierTypeDef

_SPOOL = 8 << 20  # request bodies up to this size stay in memory before their part is written
_OFFSET_DIGITS = 20  # parts sort by name in the order of their offsets
_DELETE_BATCH = 1000  # the most keys one DeleteObjects takes


def _missing(error: ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in {"404", "NoSuchKey", "NotFound"}


class _AppendedPart(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
    """What `appender` hands out: a local buffer that becomes one part object on close."""

    def __init__(self, driver: S3Driver, key: str) -> None:
        super().__init__(max_size=_SPOOL)
        self._driver = driver
        self._key = key

    def truncate(self, size: int | None = None) -> int:
        # The caller truncates to the offset its bytes started at: that is where this part
        # begins, so the whole part is dropped.
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
                self._driver.client.put_object(Bucket=self._driver.bucket, Key=self._key, Body=body)
        finally:
            super().close()


class S3Driver(StorageDriver):
    remote = True

    def __init__(self, bucket: str, client: S3Client | None = None, **client_args: Any) -> None:
        self.bucket = bucket
        self.client: S3Client = client or boto3.client("s3", **client_args)

    def make_dirs(self, *paths: str) -> None:
        pass  # a key prefix exists once a key under it does

    def _objects(self, prefix: str, delimiter: str = "") -> Iterator[dict[str, Any]]:
        """Pages of `list_objects_v2` under `prefix`."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter=delimiter):
            yield cast(dict[str, Any], page)

    def _parts(self, path: str) -> list[dict[str, Any]]:
        prefix = checked_path(path) + "/"
        parts = [o for page in self._objects(prefix) for o in page.get("Contents", [])]
        return sorted(parts, key=lambda o: str(o["Key"]))

    def _body(self, key: str, **ranged: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, **ranged)["Body"]
        except ClientError as e:
            if _missing(e):
                raise FileNotFoundError(key) from None
            raise

    def get_content(self, path: str) -> bytes | None:
        try:
            return bytes(self._body(checked_path(path)).read())
        except FileNotFoundError:
            return None

    def put_content(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=checked_path(path), Body=data)

    def stat(self, path: str) -> FileInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=checked_path(path))
        except ClientError as e:
            if _missing(e):
                return None
            raise
        return FileInfo(int(head["ContentLength"]), head["LastModified"].timestamp())

    def list(self, path: str) -> list[str]:
        prefix = checked_path(path) + "/"
        names = []
        for page in self._objects(prefix, delimiter="/"):
            names += [str(o["Key"])[len(prefix) :] for o in page.get("Contents", [])]
            names += [str(p["Prefix"])[len(prefix) : -1] for p in page.get("CommonPrefixes", [])]
        return names

    def delete(self, *paths: str) -> None:
        keys = []
        for path in map(checked_path, paths):
            below = (o for page in self._objects(path) for o in page.get("Contents", []))
            keys += [str(o["Key"]) for o in below if o["Key"] == path or str(o["Key"]).startswith(path + "/")]
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            objects: list[ObjectIdentifierTypeDef] = [{"Key": key} for key in batch]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def read(self, path: str, start: int, end: int) -> Iterator[bytes]:
        if end <= start:
            return
        body = self._body(checked_path(path), Range=f"bytes={start}-{end - 1}")
        try:
            yield from pieces(body, end - start, f"{path} from S3")
        finally:
            body.close()

    def appended(self, path: str) -> FileInfo | None:
        parts = self._parts(path)
        if not parts:
            return None
        size = sum(int(part["Size"]) for part in parts)
        return FileInfo(size, max(part["LastModified"].timestamp() for part in parts))

    def appender(self, path: str, offset: int) -> BinaryIO:
        return cast(BinaryIO, _AppendedPart(self, f"{checked_path(path)}/{offset:0{_OFFSET_DIGITS}d}"))

    def read_appended(self, path: str) -> Iterator[bytes]:
        for part in self._parts(path):
            body = self._body(str(part["Key"]))
            try:
                while piece := body.read(READ_SIZE):
                    yield piece
            finally:
                body.close()

    def move_appended(self, source: str, target: str) -> None:
        if self.stat(target) is not None:
            return
        parts = self._parts(source)
        if len(parts) == 1:  # the usual push: one request body, copied within S3
            copied: CopySourceTypeDef = {"Bucket": self.bucket, "Key": str(parts[0]["Key"])}
            try:
                self.client.copy(copied, self.bucket, checked_path(target))
            except ClientError as e:
                if _missing(e):
                    raise FileNotFoundError(source) from None
                raise
            return
        with tempfile.TemporaryFile() as assembled:
            for piece in self.read_appended(source):
                assembled.write(piece)
            assembled.seek(0)
            self.client.upload_fileobj(assembled, self.bucket, checked_path(target))
