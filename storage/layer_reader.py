"""Random access to a zstd:chunked layer: find its TOC, verify it, read one file or one chunk.

A reader needs only a `RangeSource`, something that returns byte ranges of the blob: a local file
here, a registry's blob over HTTP Range requests in lazyfs. Every chunk is checked against the
digest its (verified) TOC promises before any byte of it is returned.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from storage.digest import Digest, verify
from storage.errors import CorruptLayer, DigestMismatch, NotFound
from storage.toc import MAX_CHUNK_SIZE, Chunk, LayerToc, TocEntry
from storage.zstd_chunked import (
    MAX_FOOTER_FRAME,
    compressed_bound,
    decompress_frames,
    decompress_toc,
    parse_footer,
    position_from_annotations,
)


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
        return cls(source, toc, Digest.of(compressed))

    def entry(self, path: str) -> TocEntry:
        try:
            return self.by_path[path]
        except KeyError:
            raise NotFound(f"no such file in layer: /{path}") from None

    def read_chunk(self, entry: TocEntry, chunk: Chunk) -> bytes:
        """One chunk's bytes, verified against its digest."""
        if chunk.zeros:
            if chunk.size > MAX_CHUNK_SIZE:
                raise CorruptLayer(f"{entry.name}: hole of {chunk.size} bytes: read it with iter_file")
            return bytes(chunk.size)
        expected = chunk.digest or (entry.digest if len(entry.chunks) == 1 else None)
        if expected is None:
            raise CorruptLayer(f"{entry.name}: chunk at {chunk.file_offset} has no digest to verify")
        data = self._chunk_bytes(entry, chunk)
        verify(data, expected, f"{entry.name} chunk at {chunk.file_offset}")
        return data

    def iter_file(self, entry: TocEntry) -> Iterator[bytes]:
        """A regular file's contents, chunk by chunk; each chunk (or the whole) is verified."""
        if entry.type != "reg":
            raise CorruptLayer(f"{entry.name} is not a regular file")
        if len(entry.chunks) == 1 or all(c.digest or c.zeros for c in entry.chunks):
            for chunk in entry.chunks:
                if chunk.zeros:  # holes can be huge: made up in pieces, never fetched
                    for start in range(0, chunk.size, 1 << 20):
                        yield bytes(min(1 << 20, chunk.size - start))
                else:
                    yield self.read_chunk(entry, chunk)
            return
        # Chunks without their own digests: only the whole file can be checked.
        if entry.digest is None:
            raise CorruptLayer(f"{entry.name}: no digest to verify")
        hasher = hashlib.sha256()
        data = [self._chunk_bytes(entry, chunk) for chunk in entry.chunks]
        for piece in data:
            hasher.update(piece)
        if Digest.from_hasher(hasher) != entry.digest:
            raise DigestMismatch(f"{entry.name}: digest mismatch: expected {entry.digest}")
        yield from data

    def read_file(self, entry: TocEntry) -> bytes:
        return b"".join(self.iter_file(entry))

    def _chunk_bytes(self, entry: TocEntry, chunk: Chunk) -> bytes:
        if chunk.zeros:
            return bytes(chunk.size)
        want = chunk.inner_offset + chunk.size
        # A frame range longer than the chunk can need (stargz TOCs give no ends) is read no further.
        length = min(chunk.frame_end - chunk.frame_start, compressed_bound(want))
        frame = self.source.read_range(chunk.frame_start, length)
        data = decompress_frames(frame, chunk.inner_offset + chunk.size)
        data = data[chunk.inner_offset : chunk.inner_offset + chunk.size]
        if len(data) != chunk.size:
            raise CorruptLayer(
                f"{entry.name}: chunk at {chunk.file_offset} is {len(data)} bytes, expected {chunk.size}"
            )
        return data
