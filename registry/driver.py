"""The registry's storage driver interface: the few file operations its repository logic needs.

As in the CNCF distribution registry, a driver knows files and directories under slash-separated
paths relative to its root (`blobs/sha256/<hex>`, `repositories/<name>/tags/<tag>`) and nothing of
blobs, links or tags: `registry.storage` writes that logic once, above every driver.

Paths come from `registry.storage`, which has checked every name, tag, digest and upload id in
them against its grammar; `checked_path` asserts again, cheaply, that none climbs out of the root.

An *appendable* file is what an upload is assembled in. S3 objects cannot be appended to, so a
driver may keep one as several objects; it is only ever read whole and moved into place once.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, Protocol

READ_SIZE = 1 << 20


@dataclass(frozen=True)
class FileInfo:
    size: int
    modified: float  # seconds since the epoch


def checked_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a relative storage path: {path!r}")
    return path


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def pieces(source: Readable, length: int, what: str) -> Iterator[bytes]:
    """The next `length` bytes of a file or an S3 body, in pieces; OSError if it ends sooner."""
    left = length
    while left > 0:
        piece = source.read(min(left, READ_SIZE))
        if not piece:
            raise OSError(f"{what} ended after {length - left} of {length} bytes")
        left -= len(piece)
        yield piece


class StorageDriver(abc.ABC):
    """Files under a root. A path that is not there reads as None (or [] for `list`)."""

    # Each call is a round trip over the network: the repository remembers what it asked.
    remote: ClassVar[bool] = False

    @abc.abstractmethod
    def get_content(self, path: str) -> bytes | None: ...

    @abc.abstractmethod
    def put_content(self, path: str, data: bytes) -> None:
        """Write a whole file at once: readers see its old content or the new one, never a part."""

    @abc.abstractmethod
    def stat(self, path: str) -> FileInfo | None:
        """A file's size and modification time (a directory's too, on drivers that have directories)."""

    @abc.abstractmethod
    def list(self, path: str) -> list[str]:
        """The names directly under a directory, without writers' temporaries."""

    @abc.abstractmethod
    def delete(self, *paths: str) -> None:
        """Remove files, and directories with all they hold; paths already gone are no error."""

    @abc.abstractmethod
    def read(self, path: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) of a file, in pieces."""

    @abc.abstractmethod
    def make_dirs(self, *paths: str) -> None:
        """Create directories up front, on drivers that have directories (to look at before any write)."""

    def local_file(self, path: str) -> Path | None:
        """A local file holding the path's content (so the server can sendfile it), if the driver has one."""
        return None

    # Appendable files.
    @abc.abstractmethod
    def appended(self, path: str) -> FileInfo | None:
        """An appendable file's size and the time of its last append; None before the first."""

    @abc.abstractmethod
    def appender(self, path: str, offset: int) -> BinaryIO:
        """A file object appending at `offset`, where the file ends; its bytes count once it is closed.

        `truncate(offset)` drops what it was given: the caller's request was cut off.
        """

    @abc.abstractmethod
    def read_appended(self, path: str) -> Iterator[bytes]:
        """The whole of an appendable file, in pieces; FileNotFoundError if it went away meanwhile."""

    @abc.abstractmethod
    def move_appended(self, source: str, target: str) -> None:
        """Make `target` an ordinary file with the appendable file's content, durably; `source` stays.

        A `target` that exists already is never replaced (the repository names these paths by their
        content). FileNotFoundError if `source` went away meanwhile.
        """
