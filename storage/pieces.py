"""The chunk rule: which bytes of a layer blob hold which bytes of a file, and how they are verified.

A `Piece` is what is fetched and verified at once: one chunk of a regular file (its digest is in
the TOC), or a whole file whose chunks carry no digests of their own (only the file's digest can
vouch for them). Holes (`zeros` chunks) are no pieces: they are made up, never fetched. A
`FileLayout` is a file as its pieces and holes in file order: which of them a byte range needs, and
its bytes put together from theirs. `unpack` turns a piece's compressed bytes into its verified
contents, or raises.

Everything that reads file contents out of a layer goes through here: `LayerReader` (a local
blob), lazyfs's image source (FUSE reads, `lazyctr cat`) and its fetch engine.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from storage.digest import Digest, verify
from storage.errors import CorruptLayer
from storage.toc import Chunk, TocEntry
from storage.zstd_chunked import compressed_bound, decompress_frames

HOLE_BLOCK = 1 << 20  # a hole is made up in blocks this large: it may be gigabytes


@dataclass(frozen=True, slots=True)
class Frame:
    """Where one chunk's bytes lie: the zstd frame(s) [start, end) of the blob, the chunk at `inner`."""

    start: int
    end: int
    inner: int
    size: int

    @classmethod
    def of(cls, chunk: Chunk) -> Frame:
        # A frame range longer than its chunk can need (stargz TOCs give no ends) is cut short.
        end = min(chunk.frame_end, chunk.frame_start + compressed_bound(chunk.inner_offset + chunk.size))
        return cls(chunk.frame_start, end, chunk.inner_offset, chunk.size)


@dataclass(frozen=True, eq=False, slots=True)
class Piece:
    layer: int
    digest: Digest
    file_offset: int
    size: int
    frames: tuple[Frame, ...]  # one, unless the piece is a whole file of digest-less chunks
    file_end: int = 0  # where the frames of the piece's file end in the blob
    name: str = ""  # the file's name in its TOC, for messages

    @property
    def start(self) -> int:
        return self.frames[0].start

    @property
    def end(self) -> int:
        return max(frame.end for frame in self.frames)


class PieceReader(Protocol):
    """Something that hands out pieces' verified bytes: a local blob, or the fetch engine."""

    def get(self, pieces: Sequence[Piece], ahead: Sequence[Piece] = ()) -> list[bytes]:
        """The bytes of `pieces`, in order; `ahead` are wanted next (a reader may fetch them early)."""
        ...


def file_pieces(entry: TocEntry, layer: int = 0) -> list[Piece | int]:
    """A regular file's pieces in file order; a hole (`zeros` chunk) is just its size."""
    chunks = entry.chunks
    frames = [None if c.zeros else Frame.of(c) for c in chunks]
    end = max((f.end for f in frames if f is not None), default=0)

    def piece(digest: Digest, offset: int, size: int, *frames: Frame) -> Piece:
        return Piece(layer, digest, offset, size, frames, end, entry.name)

    if len(chunks) == 1 and frames[0] is not None:
        digest = chunks[0].digest or entry.digest
        if digest is None:
            raise CorruptLayer(f"{entry.name}: no digest to verify")
        return [piece(digest, 0, entry.size, frames[0])]
    if all(c.digest or c.zeros for c in chunks):
        return [
            piece(c.digest, c.file_offset, c.size, f) if f is not None and c.digest else c.size
            for c, f in zip(chunks, frames, strict=True)
        ]
    if entry.digest is None:  # chunks without digests: only the whole file can be checked
        raise CorruptLayer(f"{entry.name}: no digest to verify")
    if any(f is None for f in frames):
        raise CorruptLayer(f"{entry.name}: holes in a file whose chunks have no digests")
    return [piece(entry.digest, 0, entry.size, *(f for f in frames if f is not None))]


def pieces_with_digests(
    entries: Iterable[TocEntry], wanted: Container[str], layer: int = 0
) -> dict[str, tuple[TocEntry, Piece]]:
    """The pieces of `entries`' regular files whose digests are `wanted`, by digest, each with its
    file (the first that has it). Only the files that hold one are cut into pieces: a distribution
    layer has thousands of files, and an access profile names a few hundred pieces."""
    out: dict[str, tuple[TocEntry, Piece]] = {}
    for entry in entries:
        if entry.type != "reg" or not entry.size:
            continue
        if entry.digest not in wanted and not any(chunk.digest in wanted for chunk in entry.chunks):
            continue
        with contextlib.suppress(CorruptLayer):  # a file that cannot be read holds nothing to find
            for piece in file_pieces(entry, layer):
                if isinstance(piece, Piece) and piece.digest in wanted:
                    out.setdefault(str(piece.digest), (entry, piece))
    return out


def unpack(piece: Piece, blob: bytes, blob_offset: int) -> bytes:
    """A piece's contents from compressed bytes of its layer blob (`blob` starts at `blob_offset`),
    verified against the digest the TOC promises: never returned unless they match."""
    data = b"".join(
        decompress_frames(blob[f.start - blob_offset : f.end - blob_offset], f.inner + f.size)[f.inner :]
        for f in piece.frames
    )
    where = f"{piece.name or 'a file'} at {piece.file_offset} (layer {piece.layer})"
    if len(data) != piece.size:
        raise CorruptLayer(f"{where}: chunk is {len(data)} bytes, expected {piece.size}")
    verify(data, piece.digest, where)
    return data


@dataclass(frozen=True, slots=True)
class FileLayout:
    """A regular file as the pieces and holes that tile it, and where each starts."""

    parts: list[Piece | int]
    starts: list[int]
    size: int

    @classmethod
    def of(cls, entry: TocEntry, layer: int = 0) -> FileLayout:
        parts = file_pieces(entry, layer)
        starts, offset = [], 0
        for part in parts:
            starts.append(offset)
            offset += part.size if isinstance(part, Piece) else part
        return cls(parts, starts, entry.size)

    @property
    def pieces(self) -> list[Piece]:
        return [part for part in self.parts if isinstance(part, Piece)]

    def read(self, reader: PieceReader, offset: int, size: int, ahead: int = 0) -> bytes:
        """The file's bytes [offset, offset + size), from the pieces that hold them; the reader is
        also told of the file's next pieces, up to `ahead` bytes of them."""
        out = self.read_parts(reader, offset, size, ahead)
        return out[0] if len(out) == 1 else b"".join(out)

    def read_parts(self, reader: PieceReader, offset: int, size: int, ahead: int = 0) -> list[bytes]:
        """`read`'s bytes, one part per piece or hole: a caller that copies them anyway (into a
        FUSE reply) need not join them first."""
        end = min(offset + size, self.size)
        if offset >= end:
            return []
        first = bisect.bisect_right(self.starts, offset) - 1
        last = bisect.bisect_left(self.starts, end) - 1
        wanted = self.parts[first : last + 1]
        pieces = [part for part in wanted if isinstance(part, Piece)]
        fetched = iter(reader.get(pieces, self._following(last + 1, ahead)) if pieces else [])
        out: list[bytes] = []
        for index, part in enumerate(wanted, first):
            start = self.starts[index]
            if isinstance(part, Piece):
                out.append(next(fetched)[max(0, offset - start) : end - start])  # a whole piece: no copy
            else:  # a hole: only the zeros this read covers
                out.append(bytes(min(end, start + part) - max(offset, start)))
        return out

    def chunks(self, reader: PieceReader) -> Iterator[bytes]:
        """The whole file, piece by piece (a hole in blocks of at most HOLE_BLOCK bytes)."""
        for part in self.parts:
            if isinstance(part, Piece):
                yield reader.get([part])[0]
            else:
                for start in range(0, part, HOLE_BLOCK):
                    yield bytes(min(HOLE_BLOCK, part - start))

    def _following(self, index: int, budget: int) -> list[Piece]:
        out: list[Piece] = []
        size = 0
        for part in self.parts[index:]:
            if size >= budget:
                break
            if isinstance(part, Piece):
                out.append(part)
                size += part.size
        return out
