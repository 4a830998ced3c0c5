"""First reads without an access profile: what else a starting program will want, guessed from
where the file it just missed lies in its layer.

A program that starts reads files one after the other, each miss a round trip it waits for. Over
the suite's link (100 Mbit/s, 20 ms RTT) one round trip lasts as long as ~250 KB of transfer
(RTT_BYTES), so bytes fetched along with a miss are cheap and the misses they spare are not. On a
miss that opens a file (its first piece), this module names, in this order and never more than
MISS_BUDGET compressed bytes in all:
- the rest of the file, up to WHOLE_FILE: programs and libraries are mapped and paged in all over
  (ld.so reads libc's first chunk, then its last, then the rest);
- from the second file opened in a layer smaller than SMALL_LAYER, the whole layer;
- from the second small file (SMALL_FILE or less) opened in a directory, its other small files, a
  window that starts at RTT_BYTES and doubles with every further one opened there as long as the
  start reads some of the files guessed there before (python's `__pycache__`, ruby's library
  directories, a package's modules; not /usr/lib for its libraries, and not /usr/bin for a script
  that runs a few of its programs: apache2's start script grew a window there to 2 MB, four
  windows of 3.8 MB of which it read nothing);
- with it, the run of small files that follows the file in the blob (its neighbours in tar
  order), up to NEIGHBOURS bytes: they come in the same range as the miss.
The first file opened in a directory or small layer brings only itself: a lone read (`cat` of one
file, a config file) fetches no more than it reads.

Every piece is named once (a guess that was fetched is not guessed again). The choices only say
what to fetch; the fetch engine verifies every piece like any other, and serves nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from storage.digest import Digest
from storage.pieces import Piece

RTT_BYTES = 256 << 10  # 100 Mbit/s x 20 ms: what the link carries in the time of one round trip
# A file this small (compressed) fetched for nothing costs a quarter of a round trip of link time;
# one that is then read spares a whole round trip.
SMALL_FILE = RTT_BYTES // 4
# A layer this small (its app's files, a config, a script) is worth taking whole once a start has
# read two of its files: four round trips of link time at worst, for all the reads it will spare.
SMALL_LAYER = 4 * RTT_BYTES
WHOLE_FILE = 16 * RTT_BYTES  # 4 MiB: a library or program (libcrypto, python3.11) comes in one go
DIRECTORY_WINDOW = RTT_BYTES  # a directory's first window of small files; it doubles from there
MAX_DIRECTORY_WINDOW = 8 * RTT_BYTES
NEIGHBOURS = RTT_BYTES // 2
MISS_BUDGET = 16 * RTT_BYTES  # what one miss may add at most: a third of a second of this link


@dataclass
class Directory:
    """A directory of one layer: its small files in blob order, how many of its files were opened
    by a miss, and the window of small files the next such miss asks for."""

    small: list[Piece] = field(default_factory=list)
    opened: int = 0
    window: int = 0
    read: int = 0  # its guessed files read since its last window was asked for


@dataclass
class Layer:
    pieces: list[Piece]  # in blob order, one per digest (the image's pieces are)
    # Where each digest's piece is in `pieces`: a miss on a copy of a file (ruby's rubygems are in
    # two directories) is the miss of its first copy, whose fetch serves both.
    position: dict[Digest, int]
    size: int  # compressed bytes of all its pieces
    directories: dict[str, Directory]
    opened: int = 0
    taken: set[Digest] = field(default_factory=set)  # the pieces missed or guessed so far


class FirstRead:
    """The guesses to fetch along with misses, for one image (thread-safe)."""

    def __init__(self, layers: dict[int, list[Piece]]) -> None:
        """`layers`: every piece of the image, by layer, in blob order."""
        self._layers = {number: _index(pieces) for number, pieces in layers.items()}
        self._lock = threading.Lock()
        self._guessed: dict[Digest, Directory] = {}  # a directory's guessed files, until first read

    def on_read(self, piece: Piece) -> None:
        """A reader had `piece` from the cache: a directory's guess that was right lets its window grow."""
        directory = self._guessed.pop(piece.digest, None)  # a dict's pop is atomic: no lock per read
        if directory is not None:
            with self._lock:
                directory.read += 1

    def on_miss(self, miss: Piece) -> list[list[Piece]]:
        """The pieces worth fetching along with `miss` (nothing unless it opens a file), most
        urgent first, in tiers: the file's last piece (ELF's dynamic section, a zip's directory: a
        reader of the first goes there next), the rest of the file, then the other guesses."""
        layer = self._layers.get(miss.layer)
        position = None if layer is None or miss.file_offset else layer.position.get(miss.digest)
        if layer is None or position is None:
            return []
        miss = layer.pieces[position]
        with self._lock:
            layer.taken.add(miss.digest)
            guesses = Guesses(layer.taken)
            rest = list(_rest_of_file(layer.pieces, position))
            spent = guesses.add(rest[-1:], WHOLE_FILE)
            guesses.add(rest, WHOLE_FILE - spent)
            layer.opened += 1
            if layer.size <= SMALL_LAYER and layer.opened == 2:
                guesses.add(layer.pieces, SMALL_LAYER)
            # Only small files say a start goes through a directory's files: two libraries opened
            # from /usr/lib are no reason to fetch the other small ones there.
            directory = layer.directories.get(_directory(miss)) if _small(miss) else None
            if directory is not None:
                directory.opened += 1
                if directory.opened >= 2:
                    grown = 2 * directory.window if directory.read else directory.window
                    directory.window = min(max(grown, DIRECTORY_WINDOW), MAX_DIRECTORY_WINDOW)
                    directory.read = 0
                    guesses.add(_after(layer.pieces, position), NEIGHBOURS, small_only=True)
                    guesses.add(_siblings(directory.small, miss), directory.window)
                    for tier in guesses.tiers[-2:]:  # the neighbours and the siblings
                        self._guessed.update((piece.digest, directory) for piece in tier)
            return [tier for tier in guesses.tiers if tier]


class Guesses:
    """Pieces chosen for one miss, a tier per `add`, within MISS_BUDGET, none chosen before (`taken`)."""

    def __init__(self, taken: set[Digest]) -> None:
        self.tiers: list[list[Piece]] = []
        self.size = 0
        self._taken = taken

    def add(self, candidates: Iterable[Piece], budget: int, small_only: bool = False) -> int:
        """Candidates in order, as the next tier, until `budget` bytes of them (or the miss's budget)
        are chosen; with `small_only`, up to the first one that is not a small file. Returns the bytes
        chosen."""
        tier: list[Piece] = []
        self.tiers.append(tier)
        spent = 0
        for piece in candidates:
            if small_only and not _small(piece):
                break
            if piece.digest in self._taken:
                continue
            size = piece.end - piece.start
            if spent + size > budget or self.size + size > MISS_BUDGET:
                break
            self._taken.add(piece.digest)
            tier.append(piece)
            spent += size
            self.size += size
        return spent


def _index(pieces: list[Piece]) -> Layer:
    directories: dict[str, Directory] = {}
    for piece in pieces:
        directory = directories.setdefault(_directory(piece), Directory())
        if _small(piece):
            directory.small.append(piece)
    size = sum(piece.end - piece.start for piece in pieces)
    return Layer(pieces, {piece.digest: i for i, piece in enumerate(pieces)}, size, directories)


def _directory(piece: Piece) -> str:
    return piece.name.rpartition("/")[0]


def _small(piece: Piece) -> bool:
    """A whole file in one piece, of SMALL_FILE compressed bytes or less."""
    return piece.file_offset == 0 and piece.end == piece.file_end and piece.end - piece.start <= SMALL_FILE


def _following(pieces: list[Piece], position: int) -> Iterator[Piece]:
    return (pieces[i] for i in range(position + 1, len(pieces)))


def _rest_of_file(pieces: list[Piece], position: int) -> Iterator[Piece]:
    """The pieces after the one at `position` that belong to the same file (they follow it in the blob)."""
    first = pieces[position]
    for piece in _following(pieces, position):
        if piece.name != first.name or piece.start >= first.file_end:
            return
        yield piece


def _after(pieces: list[Piece], position: int) -> Iterator[Piece]:
    """The pieces that follow the file of the piece at `position` in the blob."""
    end = pieces[position].file_end
    return (piece for piece in _following(pieces, position) if piece.start >= end)


def _siblings(small: list[Piece], miss: Piece) -> list[Piece]:
    """A directory's small files from the one after `miss` on in blob order, then those before it."""
    after = [piece for piece in small if piece.start > miss.start]
    return after + [piece for piece in small if piece.start < miss.start]
