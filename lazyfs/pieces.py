"""Pieces: what of a layer blob holds a file's bytes, in units that are fetched and verified at once.

A `Piece` is one chunk of a regular file (its digest is in the TOC), or a whole file whose chunks
carry no digests of their own (only the file's digest can vouch for them). Holes (`zeros` chunks)
are no pieces: they are made up, never fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from storage.digest import Digest
from storage.errors import CorruptLayer
from storage.toc import TocEntry
from storage.zstd_chunked import compressed_bound


@dataclass(frozen=True)
class Frame:
    """Where one chunk's bytes lie: the zstd frame(s) [start, end) of the blob, the chunk at `inner`."""

    start: int
    end: int
    inner: int
    size: int


@dataclass(frozen=True, eq=False)
class Piece:
    layer: int
    digest: Digest
    file_offset: int
    size: int
    frames: tuple[Frame, ...]  # one, unless the piece is a whole file of digest-less chunks
    file_end: int = 0  # where the frames of the piece's file end in the blob

    @property
    def start(self) -> int:
        return self.frames[0].start

    @property
    def end(self) -> int:
        return max(frame.end for frame in self.frames)


def file_pieces(entry: TocEntry, layer: int) -> list[Piece | int]:
    """A regular file's pieces in file order; a hole (`zeros` chunk) is just its size."""

    def frame(c: Any) -> Frame:
        # A frame range longer than its chunk can need (stargz TOCs give no ends) is cut short.
        end = min(c.frame_end, c.frame_start + compressed_bound(c.inner_offset + c.size))
        return Frame(c.frame_start, end, c.inner_offset, c.size)

    chunks = entry.chunks
    end = max((frame(c).end for c in chunks if not c.zeros), default=0)
    if len(chunks) == 1 and not chunks[0].zeros:
        digest = chunks[0].digest or entry.digest
        if digest is None:
            raise CorruptLayer(f"{entry.name}: no digest to verify")
        return [Piece(layer, digest, 0, entry.size, (frame(chunks[0]),), end)]
    if all(c.digest or c.zeros for c in chunks):
        return [
            c.size if c.zeros else Piece(layer, c.digest, c.file_offset, c.size, (frame(c),), end)  # type: ignore[arg-type]
            for c in chunks
        ]
    if entry.digest is None:  # chunks without digests: only the whole file can be checked
        raise CorruptLayer(f"{entry.name}: no digest to verify")
    if any(c.zeros for c in chunks):
        raise CorruptLayer(f"{entry.name}: holes in a file whose chunks have no digests")
    return [Piece(layer, entry.digest, 0, entry.size, tuple(frame(c) for c in chunks), end)]
