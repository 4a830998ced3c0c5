"""An image as a read-only file system, without FUSE: its merged tree and reads of its files.

ratarmount's mount source: this module knows the image, `lazyfs.kernel` only speaks FUSE for it
(an operation's OSError becomes the FUSE error of the same errno) and `lazyctr ls`/`cat` print from
it. Paths are absolute and exact ("/etc/passwd"), as the kernel asks for them; `resolve` turns a
user's path, symlinks followed inside the image root, into one.

Nothing is computed per path ahead of time but its inode number: a stat or a directory listing is
made when asked, from the tree's nodes (a few dict lookups), since the kernel keeps what it is told
(lazyfs.kernel); a file's layout is made when it is first read. Inode numbers are stable (the order of
a sorted walk of the tree); hard links share one. File contents come from a
`PieceReader` (lazyfs's fetch engine): read, verified and cached by piece.

A reader that goes through a layer's files in blob order (a copy of the tree, a scan) has the
chunk files of the next ones read from disk ahead of it (`warm`: the chunk cache's `advise`), so
that cached files come off the disk as fast as an extracted tree does: many small reads in flight,
not one after another.
"""

from __future__ import annotations

import base64
import bisect
import errno
import os
import stat
from collections.abc import Callable, Iterator
from typing import NamedTuple

from lazyfs.readahead import READ_AHEAD
from storage.digest import Digest
from storage.errors import NotFound, UnsafePath
from storage.pieces import FileLayout, Piece, PieceReader, file_pieces
from storage.store import Image, Store
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
WARM_AHEAD = 8 << 20  # blob bytes of chunk files read ahead of a reader going through a layer in order
IN_ORDER_GAP = 64 << 10  # a file starting this close after the last one read comes next in the blob
NO_TRAIL = 1 << 62  # where "the last file read" ends in a layer none was read from yet

Stat = dict[str, int]  # os.stat_result's st_* names
Attributes = tuple[int, int, int, int, int, int, int, int]  # ino, mode, nlink, uid, gid, size, mtime ns, rdev


class Listed(NamedTuple):
    """One line of `ls -l`: the name to show, its stat and, for a symlink, its target."""

    name: str
    stat: Stat
    target: str


def image_tree(store: Store, image: Image) -> ImageTree:
    """The image's merged tree, from the layer TOCs in the store (no file contents needed)."""
    return ImageTree.from_tocs([store.layer_toc(layer) for layer in image.manifest.layers])


class ImageSource:
    def __init__(
        self,
        tree: ImageTree,
        reader: PieceReader | None = None,
        name: str = "the image",
        warm: Callable[[list[Digest]], None] | None = None,
    ) -> None:
        self.tree = tree
        self.reader = reader  # None: metadata only (`ls`), no file contents
        self.name = name
        self.warm = warm  # reads cached chunks into the page cache ahead of a reader
        self._blob_order: dict[int, tuple[list[Piece], list[int]]] = {}  # by layer: pieces, their starts
        self._trail: dict[int, tuple[int, int]] = {}  # by layer: where the last file read ends, warmed up to
        self.files: dict[int, FileLayout] = {}  # by inode, made on first read
        self.paths = 0
        self.total_size = 0
        self._links: dict[int, int] = {}  # id of a hard-linked file's entry -> its link count
        self._all_pieces: list[Piece] | None = None
        self._number()

    def _number(self) -> None:
        """Give every node its inode number, in the order of a sorted walk of the tree (so they are
        stable); the paths of a hard-linked file share one."""
        nodes = list(self.tree.nodes())
        linked = {id(node.data) for node in nodes if node.data is not None}
        inodes: dict[int, int] = {}  # id of a hard-linked file's entry -> its inode
        number = 0
        for node in nodes:
            content = node.content
            if id(content) in linked:
                self._links[id(content)] = self._links.get(id(content), 0) + 1
                if id(content) in inodes:
                    node.ino = inodes[id(content)]
                    continue
                inodes[id(content)] = number + 1
            number += 1
            node.ino = number
            if node.kind == "reg":
                self.total_size += content.size
        self.paths = len(nodes)

    # -- metadata -------------------------------------------------------------------------------

    def stat(self, path: str) -> Stat:
        """What `stat` says of `path`, made when asked: the kernel keeps it (see lazyfs.kernel)."""
        return self._stat(self._node(path))

    def inode(self, path: str) -> int:
        """`path`'s inode number (what `stat` says as st_ino, without the rest of it)."""
        return self._node(path).ino

    def attributes(self, path: str) -> Attributes:
        """`stat` as a plain tuple (see Attributes), as lazyfs.kernel packs it."""
        return self._attributes(self._node(path))

    def listing(self, path: str) -> list[tuple[str, Attributes]]:
        """A directory's entries with their attributes, in the layers' order (see `entries`): plain
        tuples, not stat dicts, since a walk lists every directory."""
        children = self._node(path).children
        if children is None:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return [(name, self._attributes(child)) for name, child in children.items()]

    def _stat(self, node: Node) -> Stat:
        return stat_of(self._attributes(node))

    def _attributes(self, node: Node) -> Attributes:
        if node.children is not None:  # a directory's links: its entry, its ".", its subdirectories' ".."
            nlink = 2 + sum(1 for child in node.children.values() if child.children is not None)
        else:
            nlink = self._links.get(id(node.data or node.entry), 1)
        return node_attributes(node, node.ino, nlink)

    def entries(self, path: str) -> list[str]:
        """A directory's entry names in the layers' order, not sorted: a reader going through the
        directory then goes through the blob in order, which read-ahead turns into few requests."""
        children = self._node(path).children
        if children is None:
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return list(children)

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if node.kind != "symlink":
            raise OSError(errno.EINVAL, "not a symbolic link", path)
        return node.content.link_name

    def xattr(self, path: str, name: str) -> bytes:
        value = self._node(path).content.xattrs.get(name)
        if value is None:
            raise OSError(errno.ENODATA, f"no extended attribute {name}", path)
        return base64.b64decode(value)

    def xattrs(self, path: str) -> list[str]:
        return list(self._node(path).content.xattrs)

    def statfs(self) -> dict[str, int]:
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": BLOCK_SIZE,
            "f_blocks": (self.total_size + BLOCK_SIZE - 1) // BLOCK_SIZE,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.paths,
            "f_ffree": 0,
            "f_namemax": 255,
        }

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """The exact path of a user's `path`, symlinks resolved as if the image root were `/`
        (raises NotFound, or UnsafePath for a symlink loop)."""
        return "/" + self.tree.resolve(path, follow_last)

    def ls(self, path: str, recursive: bool = False) -> Iterator[Listed]:
        """What `ls -l PATH` shows: a directory's entries (with -R every path below it, by full
        name), or the file itself; a symlink to a directory lists the directory."""
        exact = self.resolve(path, follow_last=False)  # a dangling or looping symlink still lists
        if self._node(exact).kind == "symlink":
            try:
                target = self.resolve(path)
            except (NotFound, UnsafePath):  # dangling or looping: the link itself is listed
                target = exact
            exact = target if self._node(target).is_dir else exact
        if not self._node(exact).is_dir:
            yield self._listed(path, exact)
        elif recursive:
            shown = path.strip("/")
            for relative, _ in self.tree.walk(self._node(exact)):
                if relative:
                    yield self._listed("/" + (f"{shown}/{relative}" if shown else relative), exact, relative)
        else:
            for name in sorted(self.entries(exact)):
                yield self._listed(name, exact, name)

    def _listed(self, shown: str, exact: str, below: str = "") -> Listed:
        key = f"{exact.rstrip('/')}/{below}" if below else exact
        attrs = self.stat(key)
        return Listed(shown, attrs, self.readlink(key) if stat.S_ISLNK(attrs["st_mode"]) else "")

    # -- contents -------------------------------------------------------------------------------

    def read(self, path: str, size: int, offset: int) -> list[bytes]:
        """Bytes of the regular file at `path`, in parts (see FileLayout.read_parts); what it reads
        next is asked for along (read-ahead).

        By path, not by a handle from an `open` of ours: the kernel's open then costs no call into
        Python (the mount is read-only, so the kernel refuses writes itself)."""
        node = self._node(path)
        layout = self.files.get(node.ino)
        if layout is None:
            if node.kind != "reg":
                raise IsADirectoryError(errno.EISDIR, "not a regular file", path)
            # A hard link's data is in the layer of what it links to.
            layout = self.files[node.ino] = FileLayout.of(node.content, node.layer)
        if offset == 0 and self.warm is not None:
            self._warm_after(layout.pieces)
        return layout.read_parts(self._reader(), offset, size, READ_AHEAD)

    def _warm_after(self, pieces: list[Piece]) -> None:
        """A file read from its start: if it starts where the last one ended in its layer's blob, the
        chunks of the files that follow it are read ahead (WARM_AHEAD of them, renewed halfway)."""
        if not pieces:
            return
        layer, start, end = pieces[0].layer, pieces[0].start, pieces[-1].end
        last_end, warmed = self._trail.get(layer, (-NO_TRAIL, -NO_TRAIL))
        self._trail[layer] = (end, warmed)
        if not last_end <= start <= last_end + IN_ORDER_GAP or warmed - end > WARM_AHEAD // 2:
            return
        order, starts = self._pieces_of_layer(layer)
        first = bisect.bisect_left(starts, max(end, warmed))
        stop = bisect.bisect_left(starts, end + WARM_AHEAD, first)
        if stop > first and self.warm is not None:
            self._trail[layer] = (end, order[stop - 1].end)
            self.warm([piece.digest for piece in order[first:stop]])

    def _pieces_of_layer(self, layer: int) -> tuple[list[Piece], list[int]]:
        known = self._blob_order.get(layer)
        if known is None:
            pieces = [piece for piece in self.all_pieces() if piece.layer == layer]  # in blob order
            known = self._blob_order[layer] = (pieces, [piece.start for piece in pieces])
        return known

    def regular_files(self) -> Iterator[tuple[str, int]]:
        """The path and inode number of every regular file, in a sorted walk of the tree."""
        for path, node in self.tree.walk():
            if node.kind == "reg":
                yield "/" + path, node.ino

    def size(self, path: str) -> int:
        return self._node(path).content.size

    def pieces(self, path: str) -> list[Piece] | None:
        """The pieces of the regular file at `path` in file order (holes left out), or None if it
        is not a regular file."""
        node = self._node(path)
        if node.kind != "reg":
            return None
        layout = self.files.get(node.ino) or FileLayout.of(node.content, node.layer)
        return layout.pieces

    def contents(self, path: str) -> Iterator[bytes]:
        """A regular file's whole contents, piece by piece (what `cat` prints)."""
        node = self._node(path)
        if node.kind != "reg":
            raise IsADirectoryError(errno.EISDIR, f"{path} is not a regular file in {self.name}")
        return FileLayout.of(node.content, node.layer).chunks(self._reader())

    def all_pieces(self) -> list[Piece]:
        """Every piece of every file, once each, in layer order and blob order."""
        if self._all_pieces is not None:
            return self._all_pieces
        seen: dict[tuple[int, str], Piece] = {}
        for node in self.tree.nodes():
            if node.kind == "reg":
                for p in file_pieces(node.content, node.layer):
                    if isinstance(p, Piece):
                        seen.setdefault((p.layer, p.digest), p)
        self._all_pieces = sorted(seen.values(), key=lambda p: (p.layer, p.start))
        return self._all_pieces

    def _node(self, path: str) -> Node:
        node = self.tree.node(path.strip("/")) if path.startswith("/") else None
        if node is None:
            raise FileNotFoundError(errno.ENOENT, f"no such file or directory in {self.name}", path)
        return node

    def _reader(self) -> PieceReader:
        if self.reader is None:
            raise RuntimeError("this image source reads no file contents (it was made for metadata only)")
        return self.reader


def node_stat(node: Node, ino: int = 1, nlink: int = 1) -> Stat:
    """What `stat` says of a node of the tree (the inode and link count are the caller's to know)."""
    return stat_of(node_attributes(node, ino, nlink))


def node_attributes(node: Node, ino: int, nlink: int) -> Attributes:
    meta = node.data or node.entry  # a hard link shows the metadata of what it links to
    kind = meta.type
    size = meta.size if kind == "reg" else len(meta.link_name) if kind == "symlink" else 0
    # Linux shows every symlink as 0777, whatever the tar said.
    mode = TYPE_BITS[kind] | (0o777 if kind == "symlink" else meta.mode & 0o7777)
    rdev = os.makedev(meta.dev_major, meta.dev_minor) if kind in ("char", "block") else 0
    return ino, mode, nlink, meta.uid, meta.gid, size, meta.mtime_ns, rdev


def stat_of(attributes: Attributes) -> Stat:
    ino, mode, nlink, uid, gid, size, mtime, rdev = attributes
    out = {
        "st_mode": mode,
        "st_ino": ino,
        "st_nlink": nlink,
        "st_uid": uid,
        "st_gid": gid,
        "st_size": size,
        "st_blocks": (size + 511) // 512,
        "st_blksize": BLOCK_SIZE,
        "st_atime": mtime,
        "st_mtime": mtime,
        "st_ctime": mtime,
    }
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        out["st_rdev"] = rdev
    return out
