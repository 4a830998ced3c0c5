"""The FUSE face of an image: each operation asks the `ImageSource` and turns its errors into errnos.

What to serve is the source's business (lazyfs/source.py); this module only speaks FUSE. Since an
image never changes, the kernel is told to keep what it learns: entries, attributes and even
misses are cached for a day, page-cache contents are kept across opens, and reads come in large
blocks. So after the first look, metadata costs the kernel nothing here, and each file's bytes
cross into Python once.
"""

from __future__ import annotations

import errno
import functools
import itertools
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

import mfusepy

from lazyfs.source import BLOCK_SIZE, ImageSource
from storage.errors import StorageError

CACHE_SECONDS = 86400.0

Args = ParamSpec("Args")
Result = TypeVar("Result")
DirEntry = tuple[str, dict[str, int], int]


def _errno(operation: Callable[Args, Result]) -> Callable[Args, Result]:
    """The operation, with an OSError from the source raised as FUSE's error of the same errno, and
    a layer that cannot be read as promised as EIO."""

    @functools.wraps(operation)
    def wrapped(*args: Args.args, **kwargs: Args.kwargs) -> Result:
        try:
            return operation(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except OSError as e:
            raise mfusepy.FuseOSError(e.errno or errno.EIO) from None
        except StorageError:
            raise mfusepy.FuseOSError(errno.EIO) from None

    return wrapped


class LazyFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, source: ImageSource) -> None:
        self.source = source
        self.on_ready: Callable[[], None] | None = None  # called once the kernel has mounted us
        # By directory handle, while open: readdir gets no path (nullpath_ok), only the handle.
        self.listings: dict[int, list[DirEntry]] = {}
        self._handles = itertools.count(1)

    def init_with_config(self, conn: Any, config: Any) -> None:
        config.entry_timeout = CACHE_SECONDS
        config.attr_timeout = CACHE_SECONDS
        config.negative_timeout = CACHE_SECONDS
        config.use_ino = 1
        config.kernel_cache = 1
        config.nullpath_ok = 1
        if conn is not None:
            conn.max_readahead = BLOCK_SIZE
        if self.on_ready is not None:
            self.on_ready()

    @_errno
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return self.source.stat(path)

    @_errno
    def opendir(self, path: str) -> int:
        """Make the directory's listing (the kernel asks once, then keeps it: see CACHE_SECONDS)."""
        prefix = path.rstrip("/") + "/"
        listing: list[DirEntry] = [(".", {}, 0), ("..", {}, 0)]
        for name in self.source.entries(path):
            child = self.source.stat(prefix + name)
            listing.append((name, {"st_mode": child["st_mode"], "st_ino": child["st_ino"]}, 0))
        handle = next(self._handles)
        self.listings[handle] = listing
        return handle

    def readdir(self, path: str | None, fh: int) -> Iterable[DirEntry]:
        return self.listings[fh]

    def releasedir(self, path: str | None, fh: int) -> int:
        self.listings.pop(fh, None)
        return 0

    @_errno
    def readlink(self, path: str) -> str:
        return self.source.readlink(path)

    @_errno
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        return self.source.xattr(path, name)

    @_errno
    def listxattr(self, path: str) -> list[str]:
        return self.source.xattrs(path)

    @_errno
    def open(self, path: str, flags: int) -> int:
        return self.source.open(path, flags)

    @_errno
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return self.source.read(fh, size, offset)

    def statfs(self, path: str) -> dict[str, int]:
        return self.source.statfs()
