"""A lazily pulled image's merged root as a plain directory, assembled from its TOCs and the chunk cache.

Once the background fill has put every piece of an image in the chunk cache, a new container needs
lazyfs for nothing: overlayfs over a plain directory reads at the speed of the local disk, with no
FUSE round trip. `materialise_root` makes that directory (`layers/root-...`, storage.layers), which
the lazy driver then gives new containers; running ones keep their FUSE mount until they end.

Why the merged root of the image, and not one directory per layer as the overlay driver has:
- the fill fetches the pieces of the merged tree, what a container can read; a layer's files that an
  upper layer hides or replaces are never fetched, so its layers are seldom complete, and fetching
  them only to hide them again would spend the link on bytes nobody reads;
- the tree is the one lazyfs serves (storage.tree stacks the layers for both), so a container sees
  the same files, owners, modes, times, xattrs and hard links whichever way it gets them;
- one lower directory is the cheapest overlayfs lookup, and no whiteouts or opaque directories are
  needed. The cost: two images with a common base each get a root of their own (their chunks, in the
  cache, are still shared).
Reassembling the layer blobs and extracting them would need the tar-split data too (not fetched) and
copy every byte twice; the TOC says everything the tar would, so its entries become tar headers that
go through storage.extract's extractor (`extract_members`): the same path checks, owners, modes,
times, xattrs, devices and hard links as an extracted layer, no second extractor.

Nothing unverified gets in: each piece is read from its chunk file and hashed as it is copied, and
must match the digest its (verified) TOC promises. A chunk file that is missing or was changed on
disk fails the whole root (a damaged one is removed, as the chunk cache does, so a later fill fetches
it again), and storage.layers removes the half-made directory: a root is all there or not there.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tarfile
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path

from storage.chunks import ChunkCache
from storage.digest import Digest
from storage.errors import IntegrityError
from storage.extract import XATTR_PAX_PREFIX, Member, extract_members
from storage.layers import LayerCache, root_name
from storage.pieces import FileLayout, Piece
from storage.store import Image, Store
from storage.toc import NS
from storage.tree import ImageTree, Node

TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "reg": tarfile.REGTYPE,
    "symlink": tarfile.SYMTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


class ChunkNotCached(IntegrityError):
    """A piece an assembled root needs is not in the chunk cache, or its file there is damaged."""


def materialise_root(store: Store, image: Image, tree: ImageTree | None = None) -> Path | None:
    """Assemble the image's root from the chunk cache into `layers/` (if it is not there yet) and
    return it; None for an image whose TOCs the layer descriptors do not name. `tree`: the image's
    merged tree, if the caller has it (a mount daemon does). Raises ChunkNotCached when a piece is
    missing or damaged, and what extraction raises (nothing is left behind either way)."""
    name = root_name(image)
    if name is None:
        return None
    if tree is None:
        tree = ImageTree.from_tocs([store.layer_toc(layer) for layer in image.manifest.layers])
    chunks = VerifiedChunks(ChunkCache(store.root))

    def build(staging: Path) -> None:
        extract_members(members(tree, chunks), staging)
        # On disk before the rename publishes it: made in the background, it can afford what an
        # extraction on the way to a container's start does not (a crash must not leave empty files).
        os.sync()

    return LayerCache(store).place(name, build)


class VerifiedChunks:
    """A PieceReader over the chunk files on disk, which hashes every piece it hands out."""

    def __init__(self, cache: ChunkCache) -> None:
        self.cache = cache

    def get(self, pieces: Sequence[Piece], ahead: Sequence[Piece] = ()) -> list[bytes]:
        return [self._read(piece) for piece in pieces]

    def _read(self, piece: Piece) -> bytes:
        path = self.cache.path(piece.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ChunkNotCached(f"{piece.name}: chunk {piece.digest} is not in the chunk cache") from None
        found = Digest.of(data, piece.digest.algorithm)
        if found != piece.digest:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a miss from now on: a fill fetches it again
            raise ChunkNotCached(f"{piece.name}: chunk file {path} was changed on disk: it hashes to {found}")
        return data


def members(tree: ImageTree, reader: VerifiedChunks) -> Iterator[Member]:
    """The tree as tar entries, parents first, each with its contents for a regular file. The paths
    of a hard-linked file (nodes that share one TOC entry) become one file and links to its first
    path: the entry a hard link names may have been replaced by an upper layer since."""
    shared = {id(node.data) for node in tree.nodes() if node.data is not None}
    first_path: dict[int, str] = {}
    for path, node in tree.walk():
        content = node.content
        if id(content) in shared:
            if id(content) in first_path:
                yield _header(path, node, link=first_path[id(content)]), None
                continue
            first_path[id(content)] = path
        yield (
            _header(path, node),
            FileLayout.of(content, node.layer).chunks(reader) if node.kind == "reg" else None,
        )


def _header(path: str, node: Node, link: str = "") -> tarfile.TarInfo:
    """A tar header saying what the node's TOC entry says (a hard link's: what it links to)."""
    meta = node.content
    member = tarfile.TarInfo(path or ".")
    if link:
        member.type, member.linkname = tarfile.LNKTYPE, link
        return member
    member.type = TAR_TYPES[node.kind]
    member.mode, member.uid, member.gid, member.size = meta.mode, meta.uid, meta.gid, meta.size
    member.linkname = meta.link_name if node.kind == "symlink" else ""
    member.devmajor, member.devminor = meta.dev_major, meta.dev_minor
    mtime_ns = meta.mtime_ns
    member.mtime = mtime_ns // NS
    member.pax_headers = {"mtime": str(Decimal(mtime_ns).scaleb(-9))}  # to the nanosecond
    for name, value in meta.xattrs.items():
        raw = base64.b64decode(value)
        member.pax_headers[XATTR_PAX_PREFIX + name] = raw.decode("utf-8", "surrogateescape")
    return member
