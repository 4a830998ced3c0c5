"""A local cache of whole blobs, for storage drivers that have no local file to sendfile (S3).

A blob is put in only after it hashed to its digest, through a temporary file renamed into place,
so the cache never holds a damaged blob under its name. It keeps at most `size` bytes, dropping
the least recently used blobs first; the order survives a restart (the files' mtimes). A blob
larger than the cache is never put in: the server streams it from the driver instead.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from registry.errors import BlobUnknown
from storage.digest import Digest
from storage.files import content_addressed_file

DEFAULT_SIZE = 2 << 30


class BlobCache:
    def __init__(self, directory: Path, size: int = DEFAULT_SIZE) -> None:
        self.directory = directory
        self.size = size
        directory.mkdir(parents=True, exist_ok=True)
        # The cached blobs by hex digest, least recently used first, with their sizes. Blobs left
        # by an earlier run count in the order they were last used (mtime); temporaries are dropped.
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        found = []
        for path in directory.iterdir():
            if path.name.startswith("."):
                path.unlink(missing_ok=True)
            else:
                stat = path.stat()
                found.append((stat.st_mtime, path.name, stat.st_size))
        for _, hex_digest, size in sorted(found):
            self._sizes[hex_digest] = size
        self._evict(keep=None)

    def fits(self, size: int) -> bool:
        return 0 < size <= self.size

    def path(self, digest: Digest) -> Path | None:
        """The cached copy of a blob (now the most recently used), or None."""
        hex_digest = Digest(digest).hex
        with self._lock:
            if hex_digest not in self._sizes:
                return None
            self._sizes.move_to_end(hex_digest)
        path = self.directory / hex_digest
        try:
            os.utime(path)  # so the order survives a restart
        except FileNotFoundError:
            with self._lock:
                self._sizes.pop(hex_digest, None)
            return None
        return path

    def open(self, digest: Digest) -> BinaryIO | None:
        """The cached copy opened for reading: eviction cannot take it away any more."""
        path = self.path(digest)
        if path is None:
            return None
        try:
            return path.open("rb")
        except FileNotFoundError:  # evicted meanwhile
            return None

    def fill(self, digest: Digest, pieces: Iterable[bytes]) -> Path:
        """Put a blob in from its bytes, verified against its digest; BlobUnknown if they do not match."""
        with content_addressed_file(self.directory, Digest(digest).algorithm) as f:
            for piece in pieces:
                f.write(piece)
            if f.digest != digest:
                raise BlobUnknown(
                    f"blob {digest} is damaged in storage: found {f.digest}",
                    {"digest": digest, "found": f.digest},
                )
        path = self.directory / Digest(digest).hex
        with self._lock:
            self._sizes[path.name] = f.size
            self._sizes.move_to_end(path.name)
        self._evict(keep=path.name)
        return path

    def _evict(self, keep: str | None) -> None:
        """Drop least recently used blobs until the cache fits its size (never `keep`, just put in)."""
        with self._lock:
            total = sum(self._sizes.values())
            for hex_digest in list(self._sizes):
                if total <= self.size:
                    break
                if hex_digest == keep:
                    continue
                total -= self._sizes.pop(hex_digest)
                # A request already sending the file keeps its open descriptor: unlinking is safe.
                (self.directory / hex_digest).unlink(missing_ok=True)
