"""The zstd:chunked container: skippable frames, the two footer versions and the layer annotations.

Layout of a blob: the tar stream as zstd frames (each file chunk its own frame), then a skippable
frame holding the zstd-compressed TOC, then (current version only) one holding the tar-split data,
then the footer in a skippable frame. Footer offsets point past the 8-byte skippable-frame header.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import zstandard

from storage.digest import Digest
from storage.errors import CorruptLayer, InvalidReference
from storage.oci import MEDIA_LAYER_ZSTD, Descriptor

SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
SKIPPABLE_HEADER = 8
LEGACY_MAGIC = b"GnUlInUx"
CURRENT_MAGIC = b"GNUlInUx"
LEGACY_FOOTER = 40  # content bytes; on disk each footer is preceded by a skippable-frame header
CURRENT_FOOTER = 64
MAX_FOOTER_FRAME = SKIPPABLE_HEADER + CURRENT_FOOTER
MANIFEST_TYPE_CRFS = 1
MAX_TOC_SIZE = 256 << 20  # uncompressed; ~1M entries. A larger TOC is refused as absurd

# Podman 4 and stargz-snapshotter write (and read) the first pair; newer containers/storage the second.
LEGACY_CHECKSUM_KEY = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_POSITION_KEY = "io.containers.zstd-chunked.manifest-position"
CURRENT_CHECKSUM_KEY = "io.github.containers.zstd-chunked.manifest-checksum"
CURRENT_POSITION_KEY = "io.github.containers.zstd-chunked.manifest-position"


def skippable_frame(payload: bytes) -> bytes:
    return SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


@dataclass(frozen=True)
class TocPosition:
    """Where the compressed TOC lies in the blob, and its sizes."""

    offset: int
    length: int
    uncompressed_length: int

    @property
    def frames_end(self) -> int:
        """The end of the tar frames: the TOC's skippable-frame header starts there."""
        return self.offset - SKIPPABLE_HEADER

    def annotation(self) -> str:
        return f"{self.offset}:{self.length}:{self.uncompressed_length}:{MANIFEST_TYPE_CRFS}"


def legacy_footer(toc: TocPosition) -> bytes:
    content = struct.pack("<4Q", toc.offset, toc.length, toc.uncompressed_length, MANIFEST_TYPE_CRFS)
    return skippable_frame(content + LEGACY_MAGIC)


def parse_footer(tail: bytes, blob_size: int) -> TocPosition:
    """Read the TOC position from the last bytes of a blob; both footer versions are accepted."""
    if tail.endswith(CURRENT_MAGIC) and len(tail) >= SKIPPABLE_HEADER + CURRENT_FOOTER:
        content = tail[-CURRENT_FOOTER:]
    elif tail.endswith(LEGACY_MAGIC) and len(tail) >= SKIPPABLE_HEADER + LEGACY_FOOTER:
        content = tail[-LEGACY_FOOTER:]
    else:
        raise CorruptLayer("no zstd:chunked footer at the end of the layer (truncated or not zstd:chunked)")
    header = tail[-len(content) - SKIPPABLE_HEADER : -len(content)]
    if header != SKIPPABLE_MAGIC + struct.pack("<I", len(content)):
        raise CorruptLayer("zstd:chunked footer is not in a skippable frame")
    offset, length, ulength, manifest_type = struct.unpack("<4Q", content[:32])
    if manifest_type != MANIFEST_TYPE_CRFS:
        raise CorruptLayer(f"unsupported zstd:chunked manifest type {manifest_type}")
    return _checked(TocPosition(offset, length, ulength), blob_size - len(content) - SKIPPABLE_HEADER)


def position_from_annotations(
    annotations: dict[str, str], blob_size: int
) -> tuple[Digest, TocPosition | None] | None:
    """The TOC digest (and position, if given) a layer descriptor promises; None if it promises none."""
    for checksum_key, position_key in (
        (CURRENT_CHECKSUM_KEY, CURRENT_POSITION_KEY),
        (LEGACY_CHECKSUM_KEY, LEGACY_POSITION_KEY),
    ):
        if checksum_key not in annotations:
            continue
        try:
            toc_digest = Digest(annotations[checksum_key])
        except InvalidReference as e:
            raise CorruptLayer(f"layer annotation {checksum_key}: {e}") from None
        position = annotations.get(position_key)
        if position is None:
            return toc_digest, None  # the footer says where; the digest still has to match
        try:
            offset, length, ulength, manifest_type = (int(x) for x in str(position).split(":"))
        except ValueError:
            raise CorruptLayer(f"layer annotation {position_key}: malformed {position!r}") from None
        if manifest_type != MANIFEST_TYPE_CRFS:
            raise CorruptLayer(f"unsupported zstd:chunked manifest type {manifest_type}")
        return toc_digest, _checked(TocPosition(offset, length, ulength), blob_size)
    return None


def _checked(toc: TocPosition, limit: int) -> TocPosition:
    if toc.offset < SKIPPABLE_HEADER or toc.length <= 0 or toc.offset + toc.length > limit:
        raise CorruptLayer(f"zstd:chunked TOC position {toc.offset}+{toc.length} lies outside the blob")
    if toc.uncompressed_length > MAX_TOC_SIZE:
        raise CorruptLayer(f"zstd:chunked TOC of {toc.uncompressed_length} bytes is absurdly large")
    return toc


def decompress_toc(data: bytes, toc: TocPosition) -> bytes:
    out = decompress_frames(data, toc.uncompressed_length + 1)  # never more than promised (+1 to notice)
    if len(out) != toc.uncompressed_length:
        raise CorruptLayer(f"zstd:chunked TOC is {len(out)} bytes, expected {toc.uncompressed_length}")
    return out


def decompress_frames(data: bytes, want: int) -> bytes:
    """Decompress consecutive zstd frames from `data` until `want` bytes are out (or the data ends).

    Bounded by `want`, whatever the frames claim: a small hostile frame cannot make us allocate more.
    """
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    out = bytearray()
    try:
        while len(out) < want and (piece := reader.read(min(want - len(out), 1 << 20))):
            out += piece
    except zstandard.ZstdError as e:
        raise CorruptLayer(f"zstd frame does not decompress: {e}") from None
    return bytes(out)


def compressed_bound(size: int) -> int:
    """The most compressed bytes `size` bytes can need (ZSTD_compressBound, plus frame headers)."""
    return size + (size >> 7) + (64 << 10)


def toc_position(layer: Descriptor) -> TocPosition | None:
    """Where a layer's TOC is, as its descriptor promises; None for a layer without one."""
    if layer.media_type != MEDIA_LAYER_ZSTD:
        return None
    promised = position_from_annotations(layer.annotations, layer.size)
    return promised[1] if promised is not None else None
