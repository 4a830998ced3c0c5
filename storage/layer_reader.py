"""Random access to a zstd:chunked layer: find its TOC, verify it, read one file or one chunk.

A reader needs only a `RangeSource`, something that returns byte ranges of the blob: a local file
here, a registry's blob over HTTP Range requests in lazyfs. Every chunk is checked against the
digest its (verified) TOC promises before any byte of it is returned (the rule is `storage.pieces`'s:
a `LayerReader` is one of its `PieceReader`s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from storage.digest import Digest, verify
from storage.errors import CorruptLayer, NotFound
from storage.pieces import FileLayout, Piece, unpack
from storage.toc import MAX_CHUNK_SIZE, Chunk, LayerToc, TocEntry
from storage.zstd_chunked import MAX_FOOTER_FRAME, decompress_toc, parse_footer, position_from_annotations


class RangeSource(Protocol):
    @property
    def size(self) -> int: ...

    def read_range(self, offset: int, length: int) -> bytes: ...


class FileRangeSource:
    """A blob in a local file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    def read_range(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise CorruptLayer(f"{self.path}: short read at {offset}+{length} (blob truncated?)")
        return data

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> FileRangeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LayerReader:
    def __init__(self, source: RangeSource, toc: LayerToc, toc_digest: Digest) -> None:
        self.source = source
        self.toc = toc
        self.toc_digest = toc_digest
        self.by_path = {entry.path: entry for entry in toc.entries}

    @classmethod
    def open(cls, source: RangeSource, annotations: Mapping[str, str] | None = None) -> LayerReader:
        """Locate the TOC (from the descriptor's annotations, else the footer) and verify it.

        With annotations, the TOC must hash to the digest they promise; without, the caller
        vouches for the blob as a whole (e.g. it was verified against its own digest).
        """
        expected, position = position_from_annotations(dict(annotations or {}), source.size) or (None, None)
        if position is None:
            tail_length = min(source.size, MAX_FOOTER_FRAME)
            position = parse_footer(source.read_range(source.size - tail_length, tail_length), source.size)
        compressed = source.read_range(position.offset, position.length)
        if expected is not None:
            verify(compressed, expected, "layer TOC")
        toc = LayerToc.parse(decompress_toc(compressed, position), position.frames_end)
        return cls(source, toc, expected or Digest.of(compressed))  # the digest it was promised by

    def entry(self, path: str) -> TocEntry:
        try:
            return self.by_path[path]
        except KeyError:
            raise NotFound(f"no such file in layer: /{path}") from None

    def get(self, pieces: Sequence[Piece], ahead: Sequence[Piece] = ()) -> list[bytes]:
        """The verified bytes of `pieces`, each read by its own range (`ahead` is no use here)."""
        return [
            unpack(piece, self.source.read_range(piece.start, piece.end - piece.start), piece.start)
            for piece in pieces
        ]

    def read_chunk(self, entry: TocEntry, chunk: Chunk) -> bytes:
        """One chunk's bytes, verified against its digest."""
        layout = FileLayout.of(entry)
        part = layout.parts[layout.starts.index(chunk.file_offset)]
        if not isinstance(part, Piece):
            if chunk.size > MAX_CHUNK_SIZE:
                raise CorruptLayer(f"{entry.name}: hole of {chunk.size} bytes: read it with iter_file")
            return bytes(chunk.size)
        if part.size != chunk.size:
            raise CorruptLayer(f"{entry.name}: chunk at {chunk.file_offset} has no digest to verify")
        return self.get([part])[0]

    def iter_file(self, entry: TocEntry) -> Iterator[bytes]:
        """A regular file's contents, piece by piece, each verified (holes made up, never read)."""
        if entry.type != "reg":
            raise CorruptLayer(f"{entry.name} is not a regular file")
        return FileLayout.of(entry).chunks(self)

    def read_file(self, entry: TocEntry) -> bytes:
        return b"".join(self.iter_file(entry))
