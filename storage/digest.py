"""Content digests: the `algorithm:hex` grammar of the OCI spec, its registered algorithms, hashing.

The one place that knows which algorithms exist. A digest names its algorithm, and content is
verified with that algorithm: `sha256` (what our own writers produce) and `sha512`, the two the
image spec registers, each with its fixed number of lowercase hex digits. Any other algorithm is
refused (`InvalidReference`, one line) wherever a digest is parsed: from a URL, a descriptor or the
command line.
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from storage.errors import DigestMismatch, InvalidReference, UnsupportedDigestAlgorithm

# The OCI image spec's digest grammar; each registered algorithm pins its encoded part further.
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
ALGORITHMS = {"sha256": 64, "sha512": 128}  # the registered algorithms: how many hex digits each has
_LOWER_HEX_RE = re.compile(r"^[a-f0-9]+$")
CANONICAL = "sha256"  # what our writers produce, and what a digest-less push is named by


class Digest(str):
    """A validated digest string such as `sha256:<64 hex>`; being a str, it serialises as one."""

    def __new__(cls, value: str) -> Digest:
        if not isinstance(value, str) or not _DIGEST_RE.fullmatch(value):
            raise InvalidReference(f"invalid digest {value!r}: expected algorithm:hex")
        algorithm, _, hex_part = value.partition(":")
        digits = ALGORITHMS.get(algorithm)
        if digits is None:
            known = " or ".join(ALGORITHMS)
            raise UnsupportedDigestAlgorithm(
                f"unsupported digest algorithm {algorithm!r} in {value!r}: use {known}"
            )
        if len(hex_part) != digits or not _LOWER_HEX_RE.fullmatch(hex_part):
            raise InvalidReference(f"invalid {algorithm} digest {value!r}: expected {digits} lowercase hex")
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    def hasher(self) -> hashlib._Hash:
        """A fresh hasher of this digest's algorithm, to verify content against it."""
        return hashlib.new(self.algorithm)

    @classmethod
    def of(cls, data: bytes, algorithm: str = CANONICAL) -> Digest:
        return cls.from_hasher(hashlib.new(algorithm, data))

    @classmethod
    def of_file(cls, path: str, bufsize: int = 1 << 20, algorithm: str = CANONICAL) -> Digest:
        hasher = hashlib.new(algorithm)
        with open(path, "rb") as f:
            while block := f.read(bufsize):
                hasher.update(block)
        return cls.from_hasher(hasher)

    @classmethod
    def from_hasher(cls, hasher: hashlib._Hash) -> Digest:
        return cls(f"{hasher.name}:{hasher.hexdigest()}")


class HashingWriter:
    """Writes to a file while hashing (with `algorithm`) and counting what went through it."""

    def __init__(self, out: BinaryIO, algorithm: str = CANONICAL) -> None:
        self.out = out
        self.hasher = hashlib.new(algorithm)
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
    """Raise DigestMismatch unless `data` hashes to `expected` (with the algorithm it names)."""
    algorithm = Digest(expected).algorithm
    found = Digest.of(data, algorithm)
    if found != expected:
        raise DigestMismatch(f"{what}: digest mismatch: expected {expected}, found {found}")
