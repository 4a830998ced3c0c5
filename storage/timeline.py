"""The timeline of one container start (`lazyctr run --timings`): its phases and what each cost.

Process-wide and off until `enable`d. A phase ends at its mark and runs from the mark before it;
marking is a clock read and a list append (no I/O), the table is built once at the end (`report`).
The registry client counts this process's HTTP requests and the body bytes it received
(`count_request`, `count_received`), and every mark notes the counts so far, so the requests and
bytes of a phase are those that were done in it (a request counts when it goes out, its bytes when
its response is let go). Another process (the lazyfs daemon) adds its own events and counters with
`other`: times are CLOCK_BOOTTIME, one clock for every process on the machine, which is also the one
/proc/self/stat's start time counts in, so the interpreter's start and imports make the first phase.
A source's counters are known only at its own events: what it did after its last one falls in the
last phase. Probes given to `at_end` run once at `settle`, when the command has ended but before
what they read goes away (a mount's statistics).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = "here"  # the source of this process's own marks


@dataclass(frozen=True)
class Event:
    name: str | None  # None: a sample of a source's counters, not a phase of its own
    at_ns: int  # CLOCK_BOOTTIME
    requests: int  # the source's HTTP requests so far
    received: int  # the source's bytes received so far
    source: str = HERE


@dataclass(frozen=True)
class Phase:
    name: str
    at_ms: float  # since the process started
    took_ms: float
    requests: int
    received: int


@dataclass
class _Timeline:
    enabled: bool = False
    requests: int = 0
    received: int = 0
    events: list[Event] = field(default_factory=list)
    probes: list[Callable[[], None]] = field(default_factory=list)


_timeline = _Timeline()


def enable() -> None:
    _timeline.enabled = True


def enabled() -> bool:
    return _timeline.enabled


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def count_request() -> None:
    _timeline.requests += 1


def count_received(size: int) -> None:
    _timeline.received += size


def mark(name: str) -> None:
    """The phase `name` of this process ends now."""
    if _timeline.enabled:
        _timeline.events.append(Event(name, now_ns(), _timeline.requests, _timeline.received))


def other(source: str, name: str | None, at_ns: int, requests: int, received: int) -> None:
    """An event of another process (`name`, or None for its counters alone) and its counters then."""
    if _timeline.enabled:
        _timeline.events.append(Event(name, at_ns, requests, received, source))


def at_end(probe: Callable[[], None]) -> None:
    """Call `probe` at `settle` (typically to add another process's events with `other`)."""
    if _timeline.enabled:
        _timeline.probes.append(probe)


def settle() -> None:
    probes, _timeline.probes = _timeline.probes, []
    for probe in probes:
        probe()


def process_start_ns() -> int:
    """When this process started, from /proc/self/stat (field 22: clock ticks since boot)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the command name, in (), may hold spaces
    return int(fields[19]) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def phases() -> list[Phase]:
    """The phases so far, in time order, starting with the process's own start."""
    start = Event("process start", process_start_ns(), 0, 0)
    events = sorted([start, *_timeline.events], key=lambda e: e.at_ns)
    named = [e for e in events if e.name is not None]
    out: list[Phase] = []
    before_ns, before = start.at_ns, (0, 0)
    for index, event in enumerate(named):
        last = index == len(named) - 1
        upto = _counts(events, math.inf if last else event.at_ns)
        assert event.name is not None
        out.append(
            Phase(
                event.name,
                (event.at_ns - start.at_ns) / 1e6,
                (event.at_ns - before_ns) / 1e6,
                upto[0] - before[0],
                upto[1] - before[1],
            )
        )
        before_ns, before = event.at_ns, upto
    return out


def _counts(events: list[Event], upto_ns: float) -> tuple[int, int]:
    """Requests and bytes of every source by `upto_ns`: each source's last counts at or before it."""
    latest: dict[str, Event] = {}
    for event in events:
        if event.at_ns <= upto_ns:
            latest[event.source] = event
    return sum(e.requests for e in latest.values()), sum(e.received for e in latest.values())


def report() -> str:
    """The phases as a table for people."""
    lines = [f"{'PHASE':<16}{'AT MS':>10}{'TOOK MS':>10}{'REQUESTS':>10}{'BYTES':>14}"]
    for p in phases():
        lines.append(f"{p.name:<16}{p.at_ms:>10.1f}{p.took_ms:>10.1f}{p.requests:>10}{p.received:>14,}")
    return "\n".join(lines)
