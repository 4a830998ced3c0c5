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
import posixpath
import stat
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import mfusepy

from lazyfs.source import BLOCK_SIZE, ImageSource
from storage.errors import StorageError

CACHE_SECONDS = 86400.0
LISTINGS_KEPT = 256  # directory listings kept between a reader's pieces of them
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
        # Directory listings being read, by path: made at offset 0, dropped once read to the end.
        self.listings: dict[str, list[DirEntry]] = {}

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
    def readdir_with_offset(self, path: str, offset: int, fh: int) -> list[DirEntry]:
        """A directory's entries from `offset` on, each with its full stat (see LazyFUSE) and the
        offset of the next. The kernel reads a listing in pieces of a page, then once more past its
        end: it is made for the first, kept for the next and dropped after the last. There is no
        opendir or releasedir, so a directory costs no other call into Python (the kernel keeps
        what it learns: see CACHE_SECONDS)."""
        listing = self.listings.get(path) if offset else None
        if listing is None:
            # Dots need their inode numbers: a reader skips an entry of inode 0.
            here, parent = (
                self.source.stat(path)["st_ino"],
                self.source.stat(posixpath.dirname(path))["st_ino"],
            )
            listing = [(".", {"st_mode": stat.S_IFDIR, "st_ino": here}, 1)]
            listing.append(("..", {"st_mode": stat.S_IFDIR, "st_ino": parent}, 2))
            listing += [
                (name, attrs, index) for index, (name, attrs) in enumerate(self.source.listing(path), 3)
            ]
            if len(self.listings) >= LISTINGS_KEPT:  # readers that stopped early: forget theirs
                self.listings.clear()
            self.listings[path] = listing
        if offset >= len(listing):
            self.listings.pop(path, None)
        return listing[offset:]

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

    def readdir_fuse_3(self, path: bytes, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        entries = self.operations.readdir_with_offset(path.decode(self.encoding, self.errors), offset, 0)
        status = mfusepy.c_stat()
        for name, attrs, following in entries:
            _fill(status, attrs)
            if filler(buf, name.encode(self.encoding, self.errors), status, following, FILL_DIR_PLUS) != 0:
                break
        return 0


def _fill(status: Any, attrs: dict[str, int]) -> None:
    """A C stat from a stat dict (mfusepy's set_st_attrs, without its generic loop: a listing of a
    big directory fills thousands)."""
    ctypes.memset(ctypes.byref(status), 0, ctypes.sizeof(status))
    status.st_mode, status.st_ino = attrs["st_mode"], attrs["st_ino"]
    if len(attrs) == 2:  # "." and "..": only their type and inode (libfuse sends no attributes for them)
        return
    status.st_nlink = attrs["st_nlink"]
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
