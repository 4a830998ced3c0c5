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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

from storage.digest import Digest
from storage.errors import BadArchive, CorruptLayer, InvalidReference, UnsafePath
from storage.paths import clean_name

ENTRY_TYPES = {"dir", "reg", "symlink", "hardlink", "char", "block", "fifo", "chunk"}
CHUNK_ZEROS = "zeros"
NS = 1_000_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_TIME_NS = -62135596800 * NS  # 0001-01-01T00:00:00Z
MAX_TIME_NS = 253402300799 * NS  # 9999-12-31T23:59:59Z
MAX_ENTRY_SIZE = 1 << 44  # 16 TiB: anything larger in a TOC is an attack or corruption
MAX_CHUNK_SIZE = 64 << 20  # a chunk with data is read into memory whole: refuse absurd ones


@dataclass(slots=True)
class Chunk:
    """One chunk of a file: `size` bytes at `file_offset`, stored in the frame [frame_start, frame_end)."""

    file_offset: int
    size: int
    frame_start: int
    frame_end: int
    digest: Digest | None
    zeros: bool = False
    inner_offset: int = 0  # where the chunk starts inside the decompressed frame(s)


@dataclass(slots=True)
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
        for key, (attribute, _) in _JSON_FIELDS.items():
            if value := getattr(self, attribute):
                out[key] = value
        return out

    @classmethod
    def from_json(cls, obj: Any) -> TocEntry:
        if not isinstance(obj, dict):
            raise CorruptLayer("TOC entry is not an object")
        kind = obj.get("type")
        name = obj.get("name")
        if kind not in ENTRY_TYPES or not isinstance(name, str):
            raise CorruptLayer(f"TOC entry with invalid type {kind!r} or name {name!r}")
        fields: dict[str, Any] = {}
        for key, value in obj.items():  # only the keys present: TOCs omit empty fields
            spec = _JSON_FIELDS.get(key)
            if spec is None or value is None:
                continue
            attribute, check = spec
            try:
                fields[attribute] = check(value)
            except (TypeError, ValueError, InvalidReference):
                raise CorruptLayer(f"TOC entry {name!r}: invalid {key} {value!r}") from None
        return cls(type=kind, name=name, **fields)


def _number(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_ENTRY_SIZE:
        raise ValueError(value)
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _digest(value: Any) -> Digest | None:
    return Digest(value) if value else None


def _xattrs(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise TypeError(value)
    return dict(value)


# TOC JSON key -> (TocEntry attribute, check and conversion of its value).
_JSON_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "linkName": ("link_name", _text),
    "mode": ("mode", _number),
    "size": ("size", _number),
    "modtime": ("modtime", _text),
    "uid": ("uid", _number),
    "gid": ("gid", _number),
    "devMajor": ("dev_major", _number),
    "devMinor": ("dev_minor", _number),
    "xattrs": ("xattrs", _xattrs),
    "digest": ("digest", _digest),
    "offset": ("offset", _number),
    "endOffset": ("end_offset", _number),
    "chunkSize": ("chunk_size", _number),
    "chunkOffset": ("chunk_offset", _number),
    "chunkDigest": ("chunk_digest", _digest),
    "chunkType": ("chunk_type", _text),
    "innerOffset": ("inner_offset", _number),
}


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
            if chunk.size > MAX_CHUNK_SIZE:
                raise CorruptLayer(f"TOC entry {entry.name!r}: chunk of {chunk.size} bytes is absurdly large")
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
            return _in_range(int(Decimal(text).scaleb(9).to_integral_value()), member.name)
    except ArithmeticError:
        pass
    if key != "mtime":
        return member_time_ns(member)
    try:
        return _in_range(int(member.mtime) * NS, member.name)
    except (OverflowError, ValueError):
        raise BadArchive(f"tar entry {member.name!r}: invalid time {member.mtime!r}") from None


def _in_range(ns: int, name: str) -> int:
    """Times RFC 3339 can write (years 1 to 9999), as TOCs and file systems need them."""
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise BadArchive(f"tar entry {name!r}: time {ns / NS:.0f} is out of range")
    return ns


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds where there are any, as Go's time.Time marshals."""
    seconds, frac = divmod(ns, NS)
    when = EPOCH + timedelta(seconds=seconds)
    stamp = (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}T{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )
    if frac:
        stamp += ("." + f"{frac:09d}").rstrip("0")
    return stamp + "Z"


@lru_cache(maxsize=4096)  # a layer's files share few times (a package's, a build's): a walk stats them all
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
