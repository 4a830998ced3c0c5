"""Content digests: the `algorithm:hex` grammar of the OCI spec and sha256 helpers."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from storage.errors import DigestMismatch, InvalidReference

# The OCI image spec's digest grammar; sha256 is further pinned to 64 lowercase hex digits.
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256_HEX_RE = re.compile(r"^[a-f0-9]{64}$")


class Digest(str):
    """A validated digest string such as `sha256:<64 hex>`; being a str, it serialises as one."""

    def __new__(cls, value: str) -> Digest:
        if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
            raise InvalidReference(f"invalid digest {value!r}: expected algorithm:hex")
        algorithm, _, hex_part = value.partition(":")
        if algorithm != "sha256":
            raise InvalidReference(f"unsupported digest algorithm {algorithm!r} in {value!r}")
        if not _SHA256_HEX_RE.fullmatch(hex_part):
            raise InvalidReference(f"invalid sha256 digest {value!r}: expected 64 lowercase hex digits")
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256:" + hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, path: str, bufsize: int = 1 << 20) -> Digest:
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(bufsize):
                hasher.update(block)
        return cls("sha256:" + hasher.hexdigest())

    @classmethod
    def from_hasher(cls, hasher: hashlib._Hash) -> Digest:
        return cls("sha256:" + hasher.hexdigest())


class HashingWriter:
    """Writes to a file while hashing and counting what went through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        self.out.write(data)
        self.hasher.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    @property
    def digest(self) -> Digest:
        return Digest.from_hasher(self.hasher)


def verify(data: bytes, expected: str, what: str) -> None:
    """Raise DigestMismatch unless `data` hashes to `expected`."""
    found = Digest.of(data)
    if found != expected:
        raise DigestMismatch(f"{what}: digest mismatch: expected {expected}, found {found}")
