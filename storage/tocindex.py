"""The TOC index: a layer's parsed and validated TOC kept on disk in a form that loads without JSON.

A TOC is JSON of a few MB for a distribution image (6768 entries for Debian minbase, 1.6 MB), and
parsing and validating it costs ~100 ms and a peak of several times its size in Python objects. A
mount needs it every time, so the first parse of a TOC (at pull time, else on first use) also
writes its index to `<root>/toc-index/<TOC digest hex>`: the entries as marshal'd tuples,
zstd-compressed, which load in a few ms straight into `TocEntry` and `Chunk` objects.

Nothing untrusted comes in this way. An index is only ever written from a `LayerToc` that
`LayerToc.parse` made of a TOC whose bytes hashed to the digest the layer descriptor promises, so it
holds exactly what that check vouched for (and only if its hard links stack, the one thing a tree
could still refuse). Its header names that TOC digest and the layer's `frames_end` (part of the
validation: no chunk lies outside the frames), and carries the sha256 of the body; an index whose
header does not match what the caller expects, or whose body does not hash to its header, is
ignored (and rewritten from the TOC), never loaded. The store still reads the TOC's bytes and checks
them against the digest at every use (`Store.layer_toc`: ~1 ms): the index only spares the parse.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import operator
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import zstandard

from storage.digest import Digest
from storage.errors import CorruptLayer
from storage.files import atomic_write
from storage.toc import Chunk, LayerToc, TocEntry
from storage.tree import check_hard_links

INDEX_DIR = "toc-index"  # under the lazyctr root, beside `store/`
MAGIC = b"lazyctr-toc-index-1\n"  # a new layout of the tuples gets a new magic: old ones are ignored
_HEADER = struct.Struct(f"{len(MAGIC)}s71sQ32s")  # magic, TOC digest, frames_end, sha256 of the body
_ENTRY_FIELDS = [f.name for f in fields(TocEntry)]
_CHUNK_FIELDS = [f.name for f in fields(Chunk)]
# Where each field sits in an entry's row (the dataclass's field order) and in a chunk's.
_TYPE, _MODTIME, _XATTRS, _DIGEST, _CHUNK_DIGEST, _CHUNKS = (
    _ENTRY_FIELDS.index(name) for name in ("type", "modtime", "xattrs", "digest", "chunk_digest", "chunks")
)
_DIGEST_OF_CHUNK = _CHUNK_FIELDS.index("digest")
# Every field's value in one call: the rows of a Debian TOC took 18-29 ms with a getattr per field, 13.
_entry_values = operator.attrgetter(*_ENTRY_FIELDS)
_chunk_values = operator.attrgetter(*_CHUNK_FIELDS)
_NO_XATTRS: dict[str, str] = {}
_NO_CHUNKS: list[Chunk] = []


def index_path(root: Path, toc_digest: Digest) -> Path:
    return root / INDEX_DIR / toc_digest.hex


def cached_toc(root: Path, toc_digest: Digest, frames_end: int, parse: Callable[[], LayerToc]) -> LayerToc:
    """The TOC `toc_digest` as this process last had it, or from its index; else `parse()` (which
    verifies and validates it), indexed."""
    key = _recent_key(root, toc_digest, frames_end)
    toc = _recent.get(key)
    if toc is None:
        toc = load_index(index_path(root, toc_digest), toc_digest, frames_end)
    if toc is not None:
        _keep(key, toc)
        return toc
    toc = parse()
    remember(root, toc_digest, frames_end, toc)
    return toc


def remember(root: Path, toc_digest: Digest, frames_end: int, toc: LayerToc) -> None:
    """Index `toc`, just parsed from the TOC blob `toc_digest` (verified) for a layer whose frames
    end at `frames_end`; a store that cannot be written to does without (it parses every time)."""
    try:
        check_hard_links(toc)  # what else stacking the layer could refuse: an indexed TOC mounts
    except CorruptLayer:
        return  # never indexed: each use parses it again, and fails as it did
    _keep(_recent_key(root, toc_digest, frames_end), toc)
    with contextlib.suppress(OSError):
        save_index(index_path(root, toc_digest), toc_digest, frames_end, toc)


# The TOCs this process indexed or loaded last: a lazy pull followed by a mount in one process (the
# service's child, whose mount daemon is its fork) loads each once: flask's two large TOCs cost a
# mount 50-60 ms from their indexes. A few only: a long-lived process that mounts many images must
# not keep them all. What is kept passed the checks an index's load makes; `Store.layer_toc` still
# checks the TOC's bytes against their digest at every use.
RECENT_TOCS = 8
_recent: OrderedDict[tuple[Path, str, int], LayerToc] = OrderedDict()
_recent_lock = threading.Lock()


def forget_recent() -> None:
    """Let go of the TOCs this process keeps: the next use of each loads its index (or parses it)."""
    _recent.clear()


def _recent_key(root: Path, toc_digest: Digest, frames_end: int) -> tuple[Path, str, int]:
    return root, str(toc_digest), frames_end


def _keep(key: tuple[Path, str, int], toc: LayerToc) -> None:
    with _recent_lock:  # TOCs are parsed in threads, side by side
        _recent[key] = toc
        _recent.move_to_end(key)
        while len(_recent) > RECENT_TOCS:
            _recent.popitem(last=False)


def save_index(path: Path, toc_digest: Digest, frames_end: int, toc: LayerToc) -> None:
    """Write the index of `toc`, verified against `toc_digest` and validated for `frames_end`."""
    rows = [_row(entry) for entry in toc.entries]
    body = zstandard.ZstdCompressor(level=3).compress(marshal.dumps((toc.version, rows)))
    header = _HEADER.pack(MAGIC, str(toc_digest).encode(), frames_end, hashlib.sha256(body).digest())
    atomic_write(path, header + body)


def _row(entry: TocEntry) -> tuple[Any, ...]:
    """An entry as a tuple of plain values in field order (marshal takes no str subclass: Digest)."""
    values = list(_entry_values(entry))
    values[_XATTRS] = values[_XATTRS] or None
    values[_DIGEST] = _plain(values[_DIGEST])
    values[_CHUNK_DIGEST] = _plain(values[_CHUNK_DIGEST])
    values[_CHUNKS] = tuple(_chunk_row(chunk) for chunk in values[_CHUNKS])
    return tuple(values)


def _chunk_row(chunk: Chunk) -> tuple[Any, ...]:
    values = list(_chunk_values(chunk))
    values[_DIGEST_OF_CHUNK] = _plain(values[_DIGEST_OF_CHUNK])
    return tuple(values)


def _plain(digest: Digest | None) -> str | None:
    return str(digest) if digest else None


def is_indexed(root: Path, toc_digest: Digest, frames_end: int) -> bool:
    """Whether the TOC has an index that checks out: it was valid, and loads without fail."""
    return _checked_body(index_path(root, toc_digest), toc_digest, frames_end) is not None


def _checked_body(path: Path, toc_digest: Digest, frames_end: int) -> memoryview | None:
    """The body of the index at `path` if its header is the expected one and the body hashes to it."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < _HEADER.size:
        return None
    magic, digest, end, body_hash = _HEADER.unpack_from(data)
    body = memoryview(data)[_HEADER.size :]
    if (magic, digest, end) != (MAGIC, str(toc_digest).encode(), frames_end):
        return None
    return body if hashlib.sha256(body).digest() == body_hash else None


def load_index(path: Path, toc_digest: Digest, frames_end: int) -> LayerToc | None:
    """The TOC kept in the index at `path`, or None if there is none that matches and checks out."""
    body = _checked_body(path, toc_digest, frames_end)
    if body is None:
        return None
    try:
        version, rows = marshal.loads(zstandard.ZstdDecompressor().decompress(body))
        interned = _Interned()
        entries = []
        for at, row in enumerate(rows):
            entries.append(interned.entry(row))
            rows[at] = None  # the row goes as its entry comes: rows and entries never all live at once
        return LayerToc(entries, version)
    except (ValueError, TypeError, EOFError, zstandard.ZstdError):
        return None


class _Interned:
    """Builds a TOC's objects from their rows, one object per distinct digest, type and time string
    (most of them repeat: a file's digest is its only chunk's, a package's files share a time)."""

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}
        self.digests: dict[str, Digest] = {}

    def entry(self, row: tuple[Any, ...]) -> TocEntry:
        values = list(row)
        strings = self.strings
        for at in (_TYPE, _MODTIME):
            if (value := values[at]) is not None:
                values[at] = strings.setdefault(value, value)
        # Entries without xattrs or chunks share one empty dict and list: a TOC's entries are not
        # changed once parsed, and an image's thousands of empty containers would cost ~0.5 MB.
        values[_XATTRS] = values[_XATTRS] or _NO_XATTRS
        values[_DIGEST] = self.digest(values[_DIGEST])
        values[_CHUNK_DIGEST] = self.digest(values[_CHUNK_DIGEST])
        values[_CHUNKS] = [self.chunk(chunk) for chunk in values[_CHUNKS]] if values[_CHUNKS] else _NO_CHUNKS
        return TocEntry(*values)

    def chunk(self, row: tuple[Any, ...]) -> Chunk:
        values = list(row)
        values[_DIGEST_OF_CHUNK] = self.digest(values[_DIGEST_OF_CHUNK])
        return Chunk(*values)

    def digest(self, value: str | None) -> Digest | None:
        if value is None:
            return None
        found = self.digests.get(value)
        if found is None:
            # Checked by Digest() when the TOC was parsed, and the index hashed since: no regexes again.
            found = self.digests[value] = str.__new__(Digest, value)
        return found
