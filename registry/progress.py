"""Progress of the blobs a push or pull transfers: the events, and two ways to show them.

`push_image` and `pull_image` call a `TransferProgress`: `start` when a blob's transfer begins,
`advance` with the bytes moved so far, `done` with how it ended ("pushed", "exists", "mounted",
"pulled"). `PlainProgress` writes one line per finished blob (outcome, digest, size, time), for
logs and pipes. `TerminalProgress` draws a bar per blob (bytes, rate, ETA), redrawn in place at
most every `REDRAW` seconds, and prints each finished one as its plain line above the bars.

Every event comes from the event loop's thread; a lock still guards the rows so that a renderer
can be fed from anywhere.
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import TextIO

from storage.digest import Digest

REDRAW = 0.1  # seconds between two redraws of the bars
BAR = 24  # characters of the bar itself


def human_size(size: float) -> str:
    """SI units, as docker and podman print them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)}B" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1000
    raise AssertionError("unreachable")


def human_time(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


@dataclass
class Transfer:
    digest: Digest
    size: int
    started: float = field(default_factory=time.monotonic)
    moved: int = 0
    outcome: str | None = None
    ended: float | None = None

    def line(self) -> str:
        """How a finished transfer is reported: `pushed sha256:... 2.1MB 0.3s`."""
        elapsed = (self.ended or time.monotonic()) - self.started
        return f"{self.outcome} {self.digest} {human_size(self.size)} {human_time(elapsed)}"


class TransferProgress:
    """The events; this base class records them and shows nothing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transfers: dict[Digest, Transfer] = {}

    def start(self, digest: Digest, size: int) -> None:
        with self.lock:
            self.transfers[digest] = Transfer(digest, size)
            self._changed(final=False)

    def advance(self, digest: Digest, moved: int) -> None:
        """`moved` bytes of the blob are through (a retry may start again from 0)."""
        with self.lock:
            transfer = self.transfers.get(digest)
            if transfer is not None:
                transfer.moved = moved
                self._changed(final=False)

    def done(self, digest: Digest, outcome: str) -> None:
        with self.lock:
            transfer = self.transfers.get(digest)
            if transfer is None:  # done without a start: nothing had to move
                transfer = self.transfers[digest] = Transfer(digest, 0)
            transfer.outcome = outcome
            transfer.ended = time.monotonic()
            transfer.moved = transfer.size
            self._finished(transfer)

    def close(self) -> None:
        """The transfer is over (or failed): leave the output tidy."""

    def _changed(self, final: bool) -> None:
        pass

    def _finished(self, transfer: Transfer) -> None:
        pass


class PlainProgress(TransferProgress):
    """One line per finished blob."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out

    def _finished(self, transfer: Transfer) -> None:
        self.out.write(transfer.line() + "\n")
        self.out.flush()


class TerminalProgress(TransferProgress):
    """A bar per blob being moved, redrawn in place; each finished one is printed above them for good."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self.out = out
        self.drawn = 0  # bar lines of the last drawing, to move back up over
        self.last_draw = 0.0

    def _changed(self, final: bool) -> None:
        now = time.monotonic()
        if final or now - self.last_draw >= REDRAW:
            self.last_draw = now
            self._draw(now, None)

    def _finished(self, transfer: Transfer) -> None:
        self._draw(time.monotonic(), transfer)

    def close(self) -> None:
        with self.lock:
            self._draw(time.monotonic(), None)

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.out.fileno()).columns
        except (OSError, ValueError, io.UnsupportedOperation):
            columns = 0
        return max(40, (columns or shutil.get_terminal_size((80, 24)).columns) - 1)

    def _draw(self, now: float, finished: Transfer | None) -> None:
        width = self._width()
        # Bars are cut to the width (a wrapped line would throw the count of lines to go up over);
        # a finished line goes above them whole and is never drawn again.
        rows = [self._row(t, now)[:width] for t in self.transfers.values() if t.outcome is None]
        text = f"\x1b[{self.drawn}F" if self.drawn else ""
        if finished is not None:
            text += f"\x1b[2K{finished.line()}\n"
        text += "".join(f"\x1b[2K{row}\n" for row in rows)
        left_over = self.drawn - len(rows) - (finished is not None)
        if left_over > 0:  # fewer lines than last time: blank the rest, and come back up
            text += "\x1b[2K\n" * left_over + f"\x1b[{left_over}F"
        self.out.write(text)
        self.out.flush()
        self.drawn = len(rows)

    @staticmethod
    def _row(transfer: Transfer, now: float) -> str:
        elapsed = max(now - transfer.started, 1e-6)
        rate = transfer.moved / elapsed
        fraction = transfer.moved / transfer.size if transfer.size else 0.0
        filled = int(BAR * min(fraction, 1.0))
        bar = "=" * filled + (">" if filled < BAR else "") + " " * (BAR - filled - 1)
        left = transfer.size - transfer.moved
        eta = human_time(left / rate) if rate > 0 and transfer.moved else "--"
        short = transfer.digest.hex[:12]
        return (
            f"{short} [{bar}] {human_size(transfer.moved)}/{human_size(transfer.size)} "
            f"{human_size(rate)}/s ETA {eta}"
        )
