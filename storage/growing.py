"""A file that one writer fills while readers in other threads follow it: how a layer blob is
extracted while it downloads, with the file itself as the buffer between the two (a fast download
never waits for a slow extraction, and nothing is held in memory).

The writer side is what `RegistryClient.get_blob` writes into (write, flush, seek to 0 and truncate
for a retry); a reader's `read` waits until the bytes it asks for are written, ends when the writer
`finish`es, and raises when it `abandon`s. A reader trusts nothing it reads: it hashes the stream
itself (a retried download may hand it bytes of two attempts).
"""

from __future__ import annotations

import os
import threading
from typing import BinaryIO

from storage.errors import StorageError


class DownloadAbandoned(StorageError):
    """The writer gave up (the download failed or was cancelled): the bytes will never come."""


class GrowingFile:
    """The writer's side of a file being downloaded; `reader()` gives a follower of it."""

    def __init__(self, f: BinaryIO, what: str) -> None:
        self._f = f
        self._what = what
        self._end = 0  # bytes written and flushed so far
        self._state = "writing"  # then "finished" or "abandoned"
        self._changed = threading.Condition()

    def write(self, data: bytes) -> int:
        written = self._f.write(data)
        self._f.flush()  # readers read through their own descriptor
        self._moved(self._f.tell())
        return written

    def flush(self) -> None:
        self._f.flush()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._f.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        end = self._f.truncate(size)
        self._moved(end)
        return end

    def finish(self) -> None:
        """Every byte is written: readers get the end of the file after the last one."""
        self._f.flush()
        self._moved(self._f.tell(), "finished")

    def abandon(self) -> None:
        """No more bytes will come: readers waiting, and later reads, raise DownloadAbandoned."""
        self._moved(self._end, "abandoned")

    def _moved(self, end: int, state: str | None = None) -> None:
        with self._changed:
            self._end = end
            self._state = state or self._state
            self._changed.notify_all()

    def reader(self) -> FollowingReader:
        return FollowingReader(self)


class FollowingReader:
    """A reader of a GrowingFile from its start, with a descriptor of its own."""

    def __init__(self, growing: GrowingFile) -> None:
        self._growing = growing
        self._fd = os.dup(growing._f.fileno())  # pread never moves the writer's offset
        self._position = 0

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (all to the end if negative), once the writer has written some or is done."""
        if size < 0:
            return b"".join(iter(lambda: self.read(1 << 20), b""))
        if not size:
            return b""
        growing = self._growing
        with growing._changed:  # held across the read, so `close` never pulls the fd from under it
            while growing._end <= self._position and growing._state == "writing" and self._fd >= 0:
                growing._changed.wait()
            if self._fd < 0:
                raise DownloadAbandoned(f"{growing._what}: the reader was closed")
            if growing._state == "abandoned":
                raise DownloadAbandoned(f"{growing._what}: the download did not complete")
            available = max(0, growing._end - self._position)
            data = os.pread(self._fd, min(size, available), self._position) if available else b""
        self._position += len(data)
        return data

    def close(self) -> None:
        """Let go of the file; a read waiting in another thread, and any later one, raises."""
        with self._growing._changed:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._growing._changed.notify_all()
