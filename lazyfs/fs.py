"""The FUSE file system of one image: its merged tree, read-only, with file contents from the fetch engine.

Everything about the tree is computed once at mount time (an image never changes): each path's
stat, each directory's listing, each file's pieces. The kernel is told so: entries, attributes
and even misses are cached for a day, page-cache contents are kept across opens, and reads come
in large blocks. So after the first look, metadata costs the kernel nothing here, and each file's
bytes cross into Python once.

Inode numbers are stable (the order of a sorted walk of the tree); hard links share one.
"""

from __future__ import annotations

import base64
import bisect
import errno
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import mfusepy

from lazyfs.fetcher import Fetcher, FetchError
from lazyfs.pieces import Piece, file_pieces
from lazyfs.readahead import READ_AHEAD
from storage.toc import TocEntry
from storage.tree import ImageTree, Node

TYPE_BITS = {
    "dir": stat.S_IFDIR,
    "reg": stat.S_IFREG,
    "symlink": stat.S_IFLNK,
    "char": stat.S_IFCHR,
    "block": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
}
BLOCK_SIZE = 1 << 20  # st_blksize: readers size their reads from it
CACHE_SECONDS = 86400.0


@dataclass
class OpenFile:
    """What a read of one file needs: its pieces (or hole sizes) and where each starts."""

    pieces: list[Piece | int]
    starts: list[int]
    size: int


class LazyFS(mfusepy.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, tree: ImageTree, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.attrs: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, Node] = {}
        self.listings: list[list[tuple[str, dict[str, int], int]]] = []  # by directory handle
        self.directories: dict[str, int] = {}  # path -> handle (readdir gets no path: nullpath_ok)
        self.files: dict[int, OpenFile] = {}  # by inode, built on first open
        self.total_size = 0
        self.on_ready: Callable[[], None] | None = None  # called once the kernel has mounted us
        self._all_pieces: list[Piece] | None = None
        self._index(tree)

    def _index(self, tree: ImageTree) -> None:
        inodes: dict[int, int] = {}  # id of the entry holding the data -> inode
        links: dict[int, int] = {}
        walked = list(tree.walk())
        for _, node in walked:
            links[id(node.content)] = links.get(id(node.content), 0) + 1
        for path, node in walked:
            key = "/" + path
            content = node.content
            ino = inodes.setdefault(id(content), len(inodes) + 1)
            self.nodes[key] = node
            self.attrs[key] = self._stat(node, ino, links[id(content)])
            if node.kind == "reg":
                self.total_size += content.size
        for key, node in self.nodes.items():
            if node.children is not None:
                prefix = key.rstrip("/") + "/"
                listing: list[tuple[str, dict[str, int], int]] = [(".", {}, 0), ("..", {}, 0)]
                for name in node.children:
                    child = self.attrs[prefix + name]
                    listing.append((name, {"st_mode": child["st_mode"], "st_ino": child["st_ino"]}, 0))
                self.directories[key] = len(self.listings)
                self.listings.append(listing)
                subdirs = sum(1 for child in node.children.values() if child.is_dir)
                self.attrs[key]["st_nlink"] = 2 + subdirs

    @staticmethod
    def _stat(node: Node, ino: int, nlink: int) -> dict[str, Any]:
        content = node.content
        meta = content  # a hard link shows the metadata of what it links to
        mtime = meta.mtime_ns
        size = content.size if node.kind == "reg" else len(meta.link_name) if node.kind == "symlink" else 0
        out: dict[str, Any] = {
            # Linux shows every symlink as 0777, whatever the tar said.
            "st_mode": TYPE_BITS[node.kind] | (0o777 if node.kind == "symlink" else meta.mode & 0o7777),
            "st_ino": ino,
            "st_nlink": nlink,
            "st_uid": meta.uid,
            "st_gid": meta.gid,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": BLOCK_SIZE,
            "st_atime": mtime,
            "st_mtime": mtime,
            "st_ctime": mtime,
        }
        if node.kind in ("char", "block"):
            out["st_rdev"] = os.makedev(meta.dev_major, meta.dev_minor)
        return out

    # -- FUSE operations ------------------------------------------------------------------------

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

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            return self.attrs[path]
        except KeyError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None

    def readdir(self, path: str | None, fh: int) -> Iterable[tuple[str, dict[str, int], int]]:
        return self.listings[fh]

    def opendir(self, path: str) -> int:
        handle = self.directories.get(path)
        if handle is None:
            raise mfusepy.FuseOSError(errno.ENOTDIR if path in self.attrs else errno.ENOENT)
        return handle

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.kind != "symlink":
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node.content.link_name

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value = self._node(path).content.xattrs.get(name)
        if value is None:
            raise mfusepy.FuseOSError(errno.ENODATA)
        return base64.b64decode(value)

    def listxattr(self, path: str) -> list[str]:
        return list(self._node(path).content.xattrs)

    def open(self, path: str, flags: int) -> int:
        node = self._node(path)
        if flags & (0o3 | 0o1000):  # O_WRONLY, O_RDWR, O_TRUNC
            raise mfusepy.FuseOSError(errno.EROFS)
        ino = int(self.attrs[path]["st_ino"])
        if ino not in self.files and node.kind == "reg":
            self.files[ino] = open_file(node.content, node.layer)  # a hard link's data is in its layer
        return ino

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        file = self.files.get(fh)
        if file is None:
            raise mfusepy.FuseOSError(errno.EISDIR)
        end = min(offset + size, file.size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(file.starts, offset) - 1
        last = bisect.bisect_left(file.starts, end) - 1
        wanted = file.pieces[first : last + 1]
        pieces = [p for p in wanted if isinstance(p, Piece)]
        ahead: list[Piece] = []
        budget = 0
        for p in file.pieces[last + 1 :]:
            if budget >= READ_AHEAD:
                break
            if isinstance(p, Piece):
                ahead.append(p)
                budget += p.size
        try:
            fetched = iter(self.fetcher.get(pieces, ahead) if pieces else [])
        except FetchError:
            raise mfusepy.FuseOSError(errno.EIO) from None
        out = bytearray()
        for index, p in enumerate(wanted, first):
            start = file.starts[index]
            if isinstance(p, Piece):
                out += next(fetched)[max(0, offset - start) : end - start]
            else:  # a hole: only the zeros this read covers (a hole may be gigabytes)
                out += bytes(min(end, start + p) - max(offset, start))
        return bytes(out)

    def statfs(self, path: str) -> dict[str, int]:
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": BLOCK_SIZE,
            "f_blocks": (self.total_size + BLOCK_SIZE - 1) // BLOCK_SIZE,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": len(self.attrs),
            "f_ffree": 0,
            "f_namemax": 255,
        }

    def all_pieces(self) -> list[Piece]:
        """Every piece of every file, once each, in layer order and blob order."""
        if self._all_pieces is not None:
            return self._all_pieces
        seen: dict[tuple[int, str], Piece] = {}
        for node in self.nodes.values():
            if node.kind == "reg" and node.content.size:
                for p in file_pieces(node.content, node.layer):
                    if isinstance(p, Piece):
                        seen.setdefault((p.layer, p.digest), p)
        self._all_pieces = sorted(seen.values(), key=lambda p: (p.layer, p.start))
        return self._all_pieces

    def pieces_for(self, profile: Iterable[dict[str, Any]], layers: list[str]) -> list[Piece]:
        """The pieces an access profile names (by layer digest and piece digest), in its order."""
        by_key = {(layers[p.layer], str(p.digest)): p for p in self.all_pieces()}
        return [by_key[key] for item in profile if (key := (item.get("layer"), item.get("digest"))) in by_key]

    def _node(self, path: str) -> Node:
        try:
            return self.nodes[path]
        except KeyError:
            raise mfusepy.FuseOSError(errno.ENOENT) from None


def open_file(entry: TocEntry, layer: int) -> OpenFile:
    pieces = file_pieces(entry, layer) if entry.size else []
    starts, offset = [], 0
    for p in pieces:
        starts.append(offset)
        offset += p.size if isinstance(p, Piece) else p
    return OpenFile(pieces, starts, entry.size)
