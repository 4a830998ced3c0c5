"""Tar stream -> zstd:chunked blob.

The blob decompresses to the input tar byte for byte, so the layer's diff_id is the sha256 of the
input. Frames are cut at file payload boundaries: tar headers (and padding) go into metadata frames,
each chunk of a regular file's payload into a frame of its own, so that one byte range of the blob
decompresses to exactly one chunk. Chunks have a fixed size (the last one shorter); a chunk of only
zero bytes is marked `zeros`, so readers can make it up instead of fetching it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from storage.digest import Digest, HashingWriter
from storage.errors import BadArchive, StorageError
from storage.oci import MEDIA_LAYER_ZSTD, Descriptor
from storage.paths import clean_name
from storage.toc import CHUNK_ZEROS, Chunk, LayerToc, TocEntry, format_time, member_time_ns
from storage.zstd_chunked import (
    LEGACY_CHECKSUM_KEY,
    LEGACY_POSITION_KEY,
    SKIPPABLE_HEADER,
    TocPosition,
    legacy_footer,
    skippable_frame,
)

DEFAULT_CHUNK_SIZE = 256 * 1024
DEFAULT_LEVEL = 3
METADATA_FRAME_LIMIT = 4 << 20  # cut long runs of headers (many symlinks, say) into several frames

_TAR_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hardlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


@dataclass
class WrittenLayer:
    digest: Digest
    size: int
    diff_id: Digest
    toc_digest: Digest
    toc_position: TocPosition
    toc: LayerToc

    def descriptor(self) -> Descriptor:
        annotations = {
            LEGACY_CHECKSUM_KEY: str(self.toc_digest),
            LEGACY_POSITION_KEY: self.toc_position.annotation(),
        }
        return Descriptor(MEDIA_LAYER_ZSTD, self.digest, self.size, annotations)


def entry_name(path: str) -> str:
    """How we spell a name in the TOC: `./` + the canonical path, as podman does."""
    return "./" + path


def xattrs_of(member: tarfile.TarInfo) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            raw = value.encode("utf-8", "surrogateescape")
            out[key.removeprefix("SCHILY.xattr.")] = base64.b64encode(raw).decode()
        elif key.startswith("LIBARCHIVE.xattr."):
            out[key.removeprefix("LIBARCHIVE.xattr.")] = value  # already base64
    return out


class _FrameWriter:
    """Appends zstd frames to the blob and the raw tar bytes they hold to the diff_id hash."""

    def __init__(self, out: BinaryIO, level: int) -> None:
        self.blob = HashingWriter(out)
        self.tar_hash = hashlib.sha256()
        self.cctx = zstandard.ZstdCompressor(level=level)
        self.pending = bytearray()  # metadata bytes not yet framed

    def metadata(self, data: bytes) -> None:
        self.tar_hash.update(data)
        self.pending += data
        if len(self.pending) >= METADATA_FRAME_LIMIT:
            self.flush_metadata()

    def flush_metadata(self) -> None:
        if self.pending:
            self.blob.write(self.cctx.compress(bytes(self.pending)))
            self.pending.clear()

    def payload(self, data: bytes) -> tuple[int, int]:
        """Write one chunk as its own frame; returns the frame's [start, end) in the blob."""
        self.flush_metadata()
        self.tar_hash.update(data)
        start = self.blob.size
        self.blob.write(self.cctx.compress(data))
        return start, self.blob.size


def write_chunked_layer(
    tar_path: Path, out: BinaryIO, chunk_size: int = DEFAULT_CHUNK_SIZE, level: int = DEFAULT_LEVEL
) -> WrittenLayer:
    """Write the tar at `tar_path` as a zstd:chunked blob to `out`."""
    frames = _FrameWriter(out, level)
    with open(tar_path, "rb") as raw:
        entries = _frame_tar(raw, frames, chunk_size)
    toc = LayerToc(entries)
    toc_json = toc.to_bytes()
    compressed_toc = frames.cctx.compress(toc_json)
    position = TocPosition(frames.blob.size + SKIPPABLE_HEADER, len(compressed_toc), len(toc_json))
    frames.blob.write(skippable_frame(compressed_toc))
    frames.blob.write(legacy_footer(position))
    return WrittenLayer(
        digest=frames.blob.digest,
        size=frames.blob.size,
        diff_id=Digest.from_hasher(frames.tar_hash),
        toc_digest=Digest.of(compressed_toc),
        toc_position=position,
        toc=toc,
    )


def _frame_tar(raw: BinaryIO, frames: _FrameWriter, chunk_size: int) -> list[TocEntry]:
    """Hand every byte of the tar to `frames`, cutting at payloads; returns the TOC entries."""
    fd = raw.fileno()
    tar_size = os.fstat(fd).st_size
    consumed = 0  # bytes of the tar already handed to the frame writer

    def take(end: int) -> bytes:
        nonlocal consumed
        data = os.pread(fd, end - consumed, consumed)
        if len(data) != end - consumed:
            raise BadArchive("tar archive is truncated")
        consumed = end
        return data

    entries: list[TocEntry] = []
    seen: dict[str, str] = {}  # path -> entry type
    try:
        with tarfile.open(fileobj=raw, mode="r:") as archive:
            for member in archive:
                entry = _entry_for(member)
                if entry.path in seen:
                    raise BadArchive(f"tar archive has a duplicate entry {member.name!r}")
                if entry.type == "hardlink" and seen.get(entry.link_name.removeprefix("./"), "dir") == "dir":
                    raise BadArchive(f"hard link {member.name!r} does not point to an earlier file")
                seen[entry.path] = entry.type
                if entry.type == "reg" and member.size:
                    if member.offset_data + member.size > tar_size:
                        raise BadArchive(f"tar archive is truncated in {member.name!r}")
                    frames.metadata(take(member.offset_data))
                    entry.digest, entry.chunks = _write_payload(frames, take, member, chunk_size)
                    _describe_chunks(entry)
                entries.append(entry)
            end_of_entries = archive.offset
    except tarfile.TarError as e:
        raise BadArchive(f"malformed tar archive: {e}") from None
    if not entries:
        raise BadArchive("tar archive has no entries")
    frames.metadata(take(max(end_of_entries, consumed)))
    while consumed < tar_size:  # end-of-archive blocks and padding, in bounded pieces
        piece = take(min(tar_size, consumed + (1 << 20)))
        if piece.count(0) != len(piece):
            # tarfile stops quietly at a cut-off header: only zero blocks may follow the last entry.
            raise BadArchive("tar archive is truncated or has garbage after its last entry")
        frames.metadata(piece)
    frames.flush_metadata()
    return entries


def _entry_for(member: tarfile.TarInfo) -> TocEntry:
    kind = _TAR_TYPES.get(member.type)
    if kind is None or member.issparse():
        raise BadArchive(f"unsupported tar entry type {member.type!r} for {member.name!r}")
    try:
        entry = TocEntry(type=kind, name="")
        entry.path = clean_name(member.name)
    except StorageError as e:
        raise type(e)(f"tar entry {member.name!r}: {e}") from None
    entry.name = entry_name(entry.path)
    entry.mode = member.mode
    entry.size = member.size if kind == "reg" else 0
    entry.modtime = format_time(member_time_ns(member))
    entry.uid, entry.gid = member.uid, member.gid
    entry.xattrs = xattrs_of(member)
    if kind == "symlink":
        entry.link_name = member.linkname
    elif kind == "hardlink":
        entry.link_name = entry_name(clean_name(member.linkname))
    elif kind in ("char", "block"):
        entry.dev_major, entry.dev_minor = member.devmajor, member.devminor
    return entry


def _write_payload(
    frames: _FrameWriter, take: Callable[[int], bytes], member: tarfile.TarInfo, chunk_size: int
) -> tuple[Digest, list[Chunk]]:
    file_hash = hashlib.sha256() if member.size > chunk_size else None  # else: the one chunk's digest
    chunks: list[Chunk] = []
    for file_offset in range(0, member.size, chunk_size):
        size = min(chunk_size, member.size - file_offset)
        data = take(member.offset_data + file_offset + size)
        if file_hash is not None:
            file_hash.update(data)
        start, end = frames.payload(data)
        # Only a tiny frame can hold a run of zeros: count bytes only then.
        zeros = end - start < 64 + size // 256 and data.count(0) == size
        chunk_digest = Digest.of(data)
        chunks.append(Chunk(file_offset, size, start, end, chunk_digest, zeros))
    return (Digest.from_hasher(file_hash) if file_hash else chunk_digest), chunks


def _describe_chunks(entry: TocEntry) -> None:
    """Put the file's frame range, and its first chunk if there are several, on the `reg` entry."""
    first = entry.chunks[0]
    entry.offset, entry.end_offset = first.frame_start, entry.chunks[-1].frame_end
    if len(entry.chunks) > 1:
        entry.chunk_size, entry.chunk_digest = first.size, first.digest
        entry.chunk_type = CHUNK_ZEROS if first.zeros else ""
