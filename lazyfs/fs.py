"""The FUSE face of an image: each operation asks the `ImageSource` and turns its errors into errnos.

What to serve is the source's business (lazyfs/source.py); this module only speaks FUSE. Since an
image never changes, the kernel is told to keep what it learns: entries, attributes and even
misses are cached for a day, page-cache contents are kept across opens, and reads come in large
blocks. So after the first look, metadata costs the kernel nothing here, and each file's bytes
cross into Python once.

A directory listing carries every entry's full attributes (readdirplus): a walk of the tree costs
one round trip per directory, not one lookup per entry. mfusepy's readdir passes only a name's type
and inode, so `LazyFUSE` is mfusepy's FUSE with a readdir of its own (and a read that copies a
reply's parts into libfuse's buffer without joining them first). There is no `open`: a read comes
with its path, so opening a file costs no call into Python.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import stat
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import mfusepy

from lazyfs.source import BLOCK_SIZE, ImageSource
from storage.errors import StorageError

CACHE_SECONDS = 86400.0
FILL_DIR_PLUS = 1 << 1  # libfuse's FUSE_FILL_DIR_PLUS: the stat given with an entry is complete

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
        # By directory handle, while the directory is open.
        self.listings: dict[int, list[DirEntry]] = {}
        self._handles = itertools.count(1)

    def init_with_config(self, conn: Any, config: Any) -> None:
        config.entry_timeout = CACHE_SECONDS
        config.attr_timeout = CACHE_SECONDS
        config.negative_timeout = CACHE_SECONDS
        config.use_ino = 1
        config.kernel_cache = 1
        if conn is not None:
            conn.max_readahead = BLOCK_SIZE
        if self.on_ready is not None:
            self.on_ready()

    @_errno
    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        return self.source.stat(path)

    @_errno
    def opendir(self, path: str) -> int:
        """Make the directory's listing, every entry with its full stat (see LazyFUSE); the kernel
        asks once, then keeps it (see CACHE_SECONDS)."""
        dot = {"st_mode": stat.S_IFDIR}
        listing: list[DirEntry] = [(".", dot, 0), ("..", dot, 0)]
        listing += [(name, attrs, 0) for name, attrs in self.source.listing(path)]
        handle = next(self._handles)
        self.listings[handle] = listing
        return handle

    def readdir(self, path: str | None, fh: int) -> list[DirEntry]:
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
    def read(self, path: str, size: int, offset: int, fh: int) -> list[bytes]:
        """The bytes in parts, which LazyFUSE copies into the reply one by one."""
        return self.source.read(path, size, offset)

    def statfs(self, path: str) -> dict[str, int]:
        return self.source.statfs()


class LazyFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE, whose readdir hands the kernel each entry's full attributes.

    mfusepy fills only st_mode and st_ino of an entry, never sets FUSE_FILL_DIR_PLUS, and passes
    offset 0, with which libfuse's high-level API sends no attributes in a READDIRPLUS answer
    anyway: the kernel would still look up every entry on its own. Here each entry goes with its
    full stat, the flag and its offset in the listing (libfuse then calls again from an offset
    when the kernel's buffer is full).
    """

    def read(self, path: bytes, buf: Any, size: int, offset: int, fip: Any) -> int:
        """mfusepy's read, with the bytes copied into libfuse's buffer part by part, not joined first."""
        parts = self.operations.read(path.decode(self.encoding, self.errors), size, offset, fip.contents.fh)
        address = ctypes.addressof(buf.contents)
        done = 0
        for part in parts:
            ctypes.memmove(address + done, part, len(part))
            done += len(part)
        return done

    def readdir_fuse_3(
        self, path: bytes | None, buf: Any, filler: Any, offset: int, fip: Any, flags: int
    ) -> int:
        listing = self.operations.readdir(None, fip.contents.fh)
        status = mfusepy.c_stat()
        for index in range(offset, len(listing)):
            name, attrs, _ = listing[index]
            _fill(status, attrs)
            if filler(buf, name.encode(self.encoding, self.errors), status, index + 1, FILL_DIR_PLUS) != 0:
                break
        return 0


def _fill(status: Any, attrs: dict[str, int]) -> None:
    """A C stat from a stat dict (mfusepy's set_st_attrs, without its generic loop: a listing of a
    big directory fills thousands)."""
    ctypes.memset(ctypes.byref(status), 0, ctypes.sizeof(status))
    status.st_mode = attrs["st_mode"]
    if len(attrs) == 1:  # "." and "..": only their type
        return
    status.st_ino, status.st_nlink = attrs["st_ino"], attrs["st_nlink"]
    status.st_uid, status.st_gid = attrs["st_uid"], attrs["st_gid"]
    status.st_size, status.st_blocks, status.st_blksize = (
        attrs["st_size"],
        attrs["st_blocks"],
        attrs["st_blksize"],
    )
    status.st_rdev = attrs.get("st_rdev", 0)
    for name in ("st_atime", "st_mtime", "st_ctime"):
        timespec = getattr(status, name + "spec")
        timespec.tv_sec, timespec.tv_nsec = divmod(attrs[name], 1_000_000_000)
