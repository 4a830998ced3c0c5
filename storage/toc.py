"""The table of contents (TOC) of a zstd:chunked layer: its entries, JSON form and validation.

Field names and their omit-when-empty behaviour follow containers/storage, whose writer (podman)
and reader (podman, stargz-snapshotter) we interoperate with. A regular file's first chunk is
described by the `reg` entry itself; further chunks follow it as `chunk` entries. Writers differ
in what they record: podman gives a chunk only its start `offset` (its frame ends where the next
chunk's begins, the last one at the file's `endOffset`); `parse` fills those gaps so that every
`Chunk` knows its exact frame.
"""

from __future__ import annotations

import json
import re
import tarfile
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from storage.digest import Digest
from storage.errors import CorruptLayer, InvalidReference, UnsafePath
from storage.paths import clean_name

ENTRY_TYPES = {"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"}
CHUNK_ZEROS = "zeros"
NS = 1_000_000_000
MAX_ENTRY_SIZE = 1 << 44  # 16 TiB: anything larger in a TOC is an attack or corruption


@dataclass
class Chunk:
    """One chunk of a file: `size` bytes at `file_offset`, stored in the frame [frame_start, frame_end)."""

    file_offset: int
    size: int
    frame_start: int
    frame_end: int
    digest: Digest | None
    zeros: bool = False
    inner_offset: int = 0  # where the chunk starts inside the decompressed frame(s)


@dataclass
class TocEntry:
    type: str
    name: str  # as written; `path` is its canonical form
    link_name: str = ""
    mode: int = 0
    size: int = 0
    modtime: str | None = None
    uid: int = 0
    gid: int = 0
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)  # base64 values, as in the JSON
    digest: Digest | None = None
    offset: int = 0
    end_offset: int = 0
    chunk_size: int = 0
    chunk_offset: int = 0
    chunk_digest: Digest | None = None
    chunk_type: str = ""
    inner_offset: int = 0
    path: str = ""
    chunks: list[Chunk] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.path:
            self.path = clean_name(self.name)

    @property
    def mtime_ns(self) -> int:
        return parse_time_ns(self.modtime)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name}
        for key, value in (
            ("linkName", self.link_name),
            ("mode", self.mode),
            ("size", self.size),
            ("modtime", self.modtime),
            ("uid", self.uid),
            ("gid", self.gid),
            ("devMajor", self.dev_major),
            ("devMinor", self.dev_minor),
            ("xattrs", self.xattrs),
            ("digest", self.digest),
            ("offset", self.offset),
            ("endOffset", self.end_offset),
            ("chunkSize", self.chunk_size),
            ("chunkOffset", self.chunk_offset),
            ("chunkDigest", self.chunk_digest),
            ("chunkType", self.chunk_type),
            ("innerOffset", self.inner_offset),
        ):
            if value:
                out[key] = str(value) if isinstance(value, Digest) else value
        return out

    @classmethod
    def from_json(cls, obj: Any) -> TocEntry:
        if not isinstance(obj, dict):
            raise CorruptLayer("TOC entry is not an object")
        kind = obj.get("type")
        name = obj.get("name")
        if kind not in ENTRY_TYPES or not isinstance(name, str):
            raise CorruptLayer(f"TOC entry with invalid type {kind!r} or name {name!r}")

        def number(key: str) -> int:
            value = obj.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ENTRY_SIZE:
                raise CorruptLayer(f"TOC entry {name!r}: invalid {key} {value!r}")
            return value

        def digest(key: str) -> Digest | None:
            value = obj.get(key)
            if not value:
                return None
            try:
                return Digest(value)
            except InvalidReference:
                raise CorruptLayer(f"TOC entry {name!r}: invalid {key} {value!r}") from None

        xattrs = obj.get("xattrs") or {}
        if not isinstance(xattrs, dict) or not all(isinstance(v, str) for v in xattrs.values()):
            raise CorruptLayer(f"TOC entry {name!r}: invalid xattrs")
        modtime = obj.get("modtime")
        return cls(
            type=kind,
            name=name,
            link_name=str(obj.get("linkName") or ""),
            mode=number("mode"),
            size=number("size"),
            modtime=modtime if isinstance(modtime, str) else None,
            uid=number("uid"),
            gid=number("gid"),
            dev_major=number("devMajor"),
            dev_minor=number("devMinor"),
            xattrs=dict(xattrs),
            digest=digest("digest"),
            offset=number("offset"),
            end_offset=number("endOffset"),
            chunk_size=number("chunkSize"),
            chunk_offset=number("chunkOffset"),
            chunk_digest=digest("chunkDigest"),
            chunk_type=str(obj.get("chunkType") or ""),
            inner_offset=number("innerOffset"),
        )


@dataclass
class LayerToc:
    entries: list[TocEntry]  # every entry but `chunk`s, which hang off their file's `chunks`
    version: int = 1

    def to_bytes(self) -> bytes:
        out: list[dict[str, Any]] = []
        for entry in self.entries:
            out.append(entry.to_json())
            for chunk in entry.chunks[1:]:
                out.append(chunk_entry_json(entry.name, chunk))
        return json.dumps({"version": self.version, "entries": out}, separators=(",", ":")).encode()

    @classmethod
    def parse(cls, data: bytes, frames_end: int) -> LayerToc:
        """Parse and validate TOC JSON; `frames_end` is where the layer's tar frames end in the blob."""
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptLayer(f"TOC is not valid JSON: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("entries"), list):
            raise CorruptLayer("TOC has no 'entries' list")
        if obj.get("version") != 1:
            raise CorruptLayer(f"unsupported TOC version {obj.get('version')!r}")
        try:
            raw = [TocEntry.from_json(e) for e in obj["entries"]]
        except UnsafePath as e:
            raise UnsafePath(f"TOC entry escapes the layer root: {e}") from None
        entries: list[TocEntry] = []
        seen: set[str] = set()
        for entry in raw:
            if entry.type == "chunk":
                if not entries or entries[-1].type != "reg" or entries[-1].path != entry.path:
                    raise CorruptLayer(f"TOC chunk for {entry.name!r} does not follow its file")
                entries[-1].chunks.append(_chunk_of(entry))
                continue
            if entry.path in seen:
                raise CorruptLayer(f"duplicate TOC entry {entry.name!r}")
            seen.add(entry.path)
            if entry.type == "hardlink":
                entry.link_name = clean_name(entry.link_name)
            if entry.type == "reg" and entry.size:
                entry.chunks.append(_chunk_of(entry))
            entries.append(entry)
        _close_chunk_ranges(entries, frames_end)
        return cls(entries, obj["version"])


def chunk_entry_json(name: str, chunk: Chunk) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "chunk", "name": name, "offset": chunk.frame_start}
    out["endOffset"] = chunk.frame_end
    out["chunkSize"] = chunk.size
    out["chunkOffset"] = chunk.file_offset
    if chunk.digest:
        out["chunkDigest"] = str(chunk.digest)
    if chunk.zeros:
        out["chunkType"] = CHUNK_ZEROS
    return out


def _chunk_of(entry: TocEntry) -> Chunk:
    return Chunk(
        file_offset=entry.chunk_offset,
        size=entry.chunk_size,  # 0 = unknown yet: runs to the next chunk or the end of the file
        frame_start=entry.offset,
        frame_end=entry.end_offset if entry.type == "chunk" else 0,
        digest=entry.chunk_digest,
        zeros=entry.chunk_type == CHUNK_ZEROS,
        inner_offset=entry.inner_offset,
    )


def _close_chunk_ranges(entries: list[TocEntry], frames_end: int) -> None:
    """Give every chunk its size and frame end, and check they lie inside the layer's tar frames."""
    starts = sorted({c.frame_start for e in entries for c in e.chunks if not c.zeros} | {frames_end})
    for entry in entries:
        chunks = entry.chunks
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            next_offset = entry.size if last else chunks[i + 1].file_offset
            if not chunk.size:
                chunk.size = next_offset - chunk.file_offset
            if (
                chunk.size <= 0
                or chunk.file_offset + chunk.size > entry.size
                or (chunk.file_offset + chunk.size != next_offset)
            ):
                raise CorruptLayer(f"TOC entry {entry.name!r}: chunks do not tile the file")
            if chunk.zeros:
                continue
            if not chunk.frame_end:
                if last and entry.end_offset and len(chunks) > 1:
                    chunk.frame_end = entry.end_offset
                elif not last and chunks[i + 1].frame_start > chunk.frame_start:
                    chunk.frame_end = chunks[i + 1].frame_start
                elif len(chunks) == 1 and entry.end_offset:
                    chunk.frame_end = entry.end_offset
                else:  # stargz-style TOCs record no ends: the frame runs to the next known start
                    chunk.frame_end = (
                        starts[bisect_right(starts, chunk.frame_start)]
                        if (chunk.frame_start < frames_end)
                        else 0
                    )
            if not 0 <= chunk.frame_start < chunk.frame_end <= frames_end:
                raise CorruptLayer(f"TOC entry {entry.name!r}: chunk frame outside the layer's data")
        if chunks and chunks[0].file_offset != 0:
            raise CorruptLayer(f"TOC entry {entry.name!r}: first chunk does not start the file")


def member_time_ns(member: tarfile.TarInfo, key: str = "mtime") -> int:
    """A tar member's time in nanoseconds; pax records keep digits a float would lose."""
    text = member.pax_headers.get(key)
    try:
        if text is not None:
            return int(Decimal(text).scaleb(9).to_integral_value())
    except ArithmeticError:
        pass
    return int(member.mtime) * NS if key == "mtime" else member_time_ns(member)


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds where there are any, as Go's time.Time marshals."""
    seconds, frac = divmod(ns, NS)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        stamp += ("." + f"{frac:09d}").rstrip("0")
    return stamp + "Z"


def parse_time_ns(stamp: str | None) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time (0 when absent or malformed)."""
    match = _RFC3339.match(stamp or "")
    if not match:
        return 0
    whole, frac, zone = match.groups()
    try:
        seconds = int(datetime.fromisoformat(whole + (zone.replace("Z", "+00:00") or "+00:00")).timestamp())
    except ValueError:
        return 0
    return seconds * NS + int((frac or "").ljust(9, "0")[:9] or 0)


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")
