"""Build progress as BuildKit prints it: one numbered vertex per step, its output, and how it ended.

The plain printer writes what `docker buildx build --progress=plain` writes:

    #3 [build 2/4] RUN make
    #3 0.214 cc -o app app.c
    #3 DONE 1.3s

    #4 [build 3/4] COPY . /src
    #4 CACHED

The terminal view shows the same steps, but only the last few output lines of the running step,
redrawn in place, and folds each finished step into one line. Both are thread-safe: the output of a
RUN arrives from a reader thread while the build waits for the container.
"""

from __future__ import annotations

import threading
import time
from typing import TextIO

TAIL_LINES = 6  # output lines the terminal view keeps visible under a running step


class PlainProgress:
    """BuildKit's plain printer."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.counter = 0
        self.started: dict[int, float] = {}
        self.names: dict[int, str] = {}

    def start(self, name: str) -> int:
        """A new step; returns its number for the other calls."""
        with self.lock:
            self.counter += 1
            number = self.counter
            self.started[number] = time.monotonic()
            self.names[number] = name
            self._started(number, name)
            return number

    def output(self, number: int, line: str) -> None:
        """One line the step printed (without its newline)."""
        with self.lock:
            elapsed = time.monotonic() - self.started.get(number, time.monotonic())
            self._output(number, line, elapsed)

    def cached(self, number: int) -> None:
        with self.lock:
            self._ended(number, f"#{number} CACHED")

    def done(self, number: int) -> None:
        with self.lock:
            elapsed = time.monotonic() - self.started.get(number, time.monotonic())
            self._ended(number, f"#{number} DONE {elapsed:.1f}s")

    def error(self, number: int, message: str) -> None:
        with self.lock:
            self._ended(number, f"#{number} ERROR: {message}")

    def note(self, line: str) -> None:
        """A line that belongs to no step (what was built, the tags)."""
        with self.lock:
            self._write(f"{line}\n")

    # -- how each printer shows it ---------------------------------------------------------------

    def _started(self, number: int, name: str) -> None:
        self._write(f"#{number} {name}\n")

    def _output(self, number: int, line: str, elapsed: float) -> None:
        self._write(f"#{number} {elapsed:.3f} {line}\n")

    def _ended(self, number: int, line: str) -> None:
        self._write(f"{line}\n\n")

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class TerminalProgress(PlainProgress):
    """The live view: the running step with the tail of its output, redrawn in place."""

    def __init__(self, out: TextIO) -> None:
        super().__init__(out)
        self.tail: list[str] = []
        self.drawn = 0  # lines of the live area currently on screen
        self.last_draw = 0.0
        self.running: int | None = None  # the step whose live area is on screen
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.ticker.start()

    def _tick(self) -> None:
        """Redraw the running step now and then, so its clock moves while it prints nothing."""
        while True:
            time.sleep(0.25)
            with self.lock:
                if self.running is not None and time.monotonic() - self.last_draw >= 0.2:
                    self._clear()
                    self._draw(self.running)

    def _started(self, number: int, name: str) -> None:
        self._clear()
        self.tail = []
        self.running = number
        self._draw(number)

    def _output(self, number: int, line: str, elapsed: float) -> None:
        self.tail = [*self.tail, line.replace("\r", "")][-TAIL_LINES:]
        now = time.monotonic()
        if now - self.last_draw >= 0.05:  # a chatty step must not spend its time redrawing
            self._clear()
            self._draw(number)

    def _ended(self, number: int, line: str) -> None:
        self._clear()
        self.running = None
        elapsed = time.monotonic() - self.started.get(number, time.monotonic())
        status = line.split(" ", 1)[1]
        shown = f" {status}" if not status.startswith("DONE") else f" {elapsed:.1f}s"
        summary = f"\x1b[34m=> {self.names.get(number, '')}{shown}\x1b[0m"
        if status.startswith("ERROR"):
            summary = "\n".join([f"\x1b[31m=> ERROR {self.names.get(number, '')}\x1b[0m", *self.tail, line])
        self.tail = []
        self._write(f"{summary}\n")

    def _draw(self, number: int) -> None:
        elapsed = time.monotonic() - self.started.get(number, time.monotonic())
        lines = [f"=> {self.names.get(number, '')} {elapsed:.1f}s", *(f"   {t[:200]}" for t in self.tail)]
        self._write("".join(f"{line}\n" for line in lines))
        self.drawn = len(lines)
        self.last_draw = time.monotonic()

    def _clear(self) -> None:
        if self.drawn:
            self._write(f"\x1b[{self.drawn}A\x1b[J")
            self.drawn = 0


Progress = PlainProgress
