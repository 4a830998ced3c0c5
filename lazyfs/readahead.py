"""Read-ahead along layer blobs: which pieces to fetch before anyone asks for them.

For readers that go through a layer in order, as the kernel does for a disk: a miss where the
previous fetch of the layer ended doubles the window of following pieces fetched with it, and a
reader past the middle of a window gets the next one asked for before it runs out; past STREAM_AT
the rest comes in one streaming GET. Any other miss closes the window. Inside a file the window
stops at the file's end; it crosses into the next files only once a reader has opened
FILES_IN_ORDER files each where the last ended (a whole-tree copy, a scan), not because one file
follows another (a program and its config file). "Where the last ended" means that every file in
between is fetched already (read before, or fetched with an earlier miss): a copy goes through
every file, while a starting program that opens a few files of a directory in blob order skips
unfetched ones. With a miss within SEQUENTIAL_SLACK of the last counting, and three such in a row,
ruby's start (rubygems' files, opened in blob order) drew 1.7-2.4 MB of read-ahead it never read;
it still opens three files in a row with the files between fetched as guesses, hence eight.
Startup reads, which jump around, get none.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from storage.digest import Digest
from storage.pieces import Piece

READ_AHEAD = 1 << 20  # on a miss, also fetch this much more of the same file
MAX_WINDOW = 32 << 20  # read-ahead along a layer grows up to this
STREAM_AT = 8 << 20  # a window this large: the reader goes through it all; stream the rest in one GET
SEQUENTIAL_SLACK = 256 << 10  # a miss this close to where the last fetch ended counts as sequential
NO_LIMIT = 1 << 62
FILES_IN_ORDER = 8  # files opened in a row, each where the last ended: a copy, not a start


@dataclass
class Stream:
    """Read-ahead along one layer: the blob range last asked for, its window, where a reader must
    get to for the next window to be asked for (0: not streaming), where to stop (the end of the
    file being streamed, or NO_LIMIT), and how many files in a row were opened where the last ended."""

    low: int = -1
    high: int = -NO_LIMIT
    window: int = 0
    trigger: int = 0
    limit: int = NO_LIMIT
    files: int = 0


def blob_order(pieces: Sequence[Piece]) -> dict[int, list[Piece]]:
    """Pieces by layer, each layer's in the order of its blob."""
    by_layer: dict[int, list[Piece]] = {}
    for piece in sorted(pieces, key=lambda p: (p.layer, p.start)):
        by_layer.setdefault(piece.layer, []).append(piece)
    return by_layer


def _comes_next(
    pieces: list[Piece], starts: list[int], high: int, miss: Piece, fetched: Callable[[Digest], bool]
) -> bool:
    """Whether `miss` opens the file that a reader going through the layer comes to after `high`
    (where its last fetch ended): not before it, not far past it, every piece in between fetched."""
    if not 0 <= miss.start - high <= MAX_WINDOW:
        return False
    between = pieces[bisect.bisect_left(starts, high) : bisect.bisect_left(starts, miss.start)]
    return all(fetched(piece.digest) for piece in between)


class ReadAhead:
    def __init__(self) -> None:
        self._layout: dict[int, tuple[list[Piece], list[int]]] = {}
        self._streams: dict[int, Stream] = {}
        self._lock = threading.Lock()

    def know_layout(self, layers: dict[int, list[Piece]]) -> None:
        """Every piece of the image by layer, in blob order (`blob_order`): what read-ahead goes along."""
        self._layout = {layer: (ps, [p.start for p in ps]) for layer, ps in layers.items()}

    def on_miss(self, miss: Piece, last: Piece, fetched: Callable[[Digest], bool]) -> list[Piece]:
        """The pieces to fetch along with a miss (`last`: the last piece asked for with it;
        `fetched`: whether a piece is in the cache already)."""
        layout = self._layout.get(miss.layer)
        if layout is None:
            return []
        pieces, starts = layout
        with self._lock:
            stream = self._streams.get(miss.layer) or Stream()
            if stream.low <= miss.start < stream.high:
                return []  # inside what the last read-ahead asked for: it is on its way
            if miss.file_offset:  # reading on inside a file
                # A little skipping (pages the reader does not need) still counts.
                adjacent = stream.high - SEQUENTIAL_SLACK <= miss.start <= stream.high + SEQUENTIAL_SLACK
                sequential = adjacent or stream.high <= miss.start <= stream.high + stream.window
                limit = miss.file_end
            else:  # opening a file
                crossing = stream.limit == NO_LIMIT and stream.window > 0
                in_order = _comes_next(pieces, starts, stream.high, miss, fetched)
                stream.files = stream.files + 1 if in_order else 0
                sequential = stream.files >= FILES_IN_ORDER or (
                    crossing and stream.high <= miss.start <= stream.high + stream.window
                )
                limit = NO_LIMIT
            window = min(max(stream.window * 2, READ_AHEAD), MAX_WINDOW) if sequential else 0
            first = bisect.bisect_right(starts, last.start)
            stop = bisect.bisect_left(starts, min(last.end + window, limit), first)
            high = max(last.end, pieces[stop - 1].end if stop > first else 0)
            trigger = (miss.start + high) // 2 if window else 0
            self._streams[miss.layer] = Stream(miss.start, high, window, trigger, limit, stream.files)
        return pieces[first:stop]

    def on_read(self, hit: Piece) -> tuple[list[Piece], bool] | None:
        """A reader streaming through a read-ahead window has passed its middle: the next window
        (twice as large) to ask for before it gets there, so the link never idles between
        windows, and whether to stream it (past STREAM_AT: the rest of the file or layer)."""
        layout = self._layout.get(hit.layer)
        if layout is None:
            return None
        with self._lock:
            stream = self._streams.get(hit.layer)
            if stream is None or not stream.trigger or not stream.trigger <= hit.start < stream.high:
                return None
            pieces, starts = layout
            first = bisect.bisect_left(starts, stream.high)
            window = min(stream.window * 2, MAX_WINDOW)
            streaming = window >= STREAM_AT  # the rest, to the end of the file or the layer
            end = stream.limit if streaming else min(stream.high + window, stream.limit)
            stop = bisect.bisect_left(starts, end, first)
            if stop <= first:  # the end of the file or the layer: nothing more to ask for
                stream.trigger = 0
                return None
            high = max(stream.high, pieces[stop - 1].end)
            trigger = 0 if streaming else (stream.high + high) // 2
            self._streams[hit.layer] = Stream(stream.high, high, window, trigger, stream.limit, stream.files)
        return pieces[first:stop], streaming
