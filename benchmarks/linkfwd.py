"""The userspace link emulator's forwarder: one TUN device in each of two network namespaces, and a loop
that carries every packet from one to the other after the link's delay, at the link's rate, with its loss.

It exists because the kernel of the benchmark machine has no `netem` qdisc (benchmarks/link.py uses
netem where there is one). It runs as its own process, started by benchmarks/link.py, so that the
measured program's GIL never holds a packet back. It is a script (run by path, importing only the
standard library and runtime/syscalls.py), not a module of the benchmarks package, so it needs no cwd.

The model of each direction is a router's output port: a packet waits in a drop-tail queue, is sent
at the link's rate (a token bucket whose burst is `--burst` bytes, so a forwarder scheduled late can
catch up on the time it lost without exceeding the rate over any longer stretch), then travels for
the one-way delay. Since the delay is the same for every packet, due times within a direction only
grow, so each direction is a FIFO deque and not a heap. The loop is single-threaded: epoll over the
two TUN fds, a timerfd armed (with nanosecond resolution; epoll's own timeout has only milliseconds)
for the earliest due packet, and stdin: "stats" asks for a JSON line of counters on stdout, and end of
file (the parent closed it, or died) ends the forwarder, so it never outlives the benchmark.

Usage: linkfwd.py --ns-a /run/netns/A --ns-b /run/netns/B --ifname NAME [--rate BYTES_PER_S]
[--delay SECONDS_ONE_WAY] [--loss FRACTION] [--queue BYTES] [--burst BYTES]. Prints "ready" once both
devices exist; the parent sets their addresses and MTU with `ip`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import random
import select
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime import syscalls as sc

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1
# Packets read from one fd per wake-up at most, so that a flood in one direction cannot starve the other.
READ_BATCH = 64
PACKET_MAX = 65536


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_timerfd_create = _libc.timerfd_create
_timerfd_create.restype = ctypes.c_int
_timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_timerfd_settime = _libc.timerfd_settime
_timerfd_settime.restype = ctypes.c_int
_timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]


class Timer:
    """A timerfd on CLOCK_MONOTONIC (the clock of time.monotonic), armed at absolute times."""

    def __init__(self) -> None:
        fd = _timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)}: timerfd_create")
        self.fd = fd
        self.armed_for = 0.0
        self._spec = _Itimerspec()
        self._ref = ctypes.byref(self._spec)

    def arm(self, when: float) -> None:
        """Fire at monotonic time `when` (seconds); 0 disarms."""
        if when == self.armed_for:
            return
        seconds = int(when)
        self._spec.it_value.tv_sec = seconds
        # A zero it_value disarms: an instant in the past still has to fire, so it gets 1 ns.
        self._spec.it_value.tv_nsec = max(int((when - seconds) * 1e9), 0 if when == 0 else 1)
        if _timerfd_settime(self.fd, TFD_TIMER_ABSTIME, self._ref, None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{os.strerror(err)}: timerfd_settime")
        self.armed_for = when

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)
        self.armed_for = 0.0


@dataclass
class Bucket:
    """One direction of one link before its delay: a drop-tail queue of `queue` bytes in front of a
    token bucket of `burst` bytes at `rate` bytes per second (a router's output port). Also the
    fleet's switch's (benchmarks/fleetfwd.py) model of each direction of each of its links."""

    rate: float  # bytes per second; 0: unlimited
    queue: int
    burst: int
    free_at: float = 0.0  # when the link finishes sending what it was given so far
    peak_backlog: float = 0.0
    dropped: int = 0

    def __post_init__(self) -> None:
        self.seconds_per_byte = 1.0 / self.rate if self.rate > 0 else 0.0
        # The queue and the burst measured in seconds of sending, so that the per-packet check is a compare.
        self.queue_time = self.queue * self.seconds_per_byte
        self.burst_time = self.burst * self.seconds_per_byte

    def send(self, size: int, at: float) -> float:
        """When a packet of `size` bytes that arrives at `at` has left; -1.0 when the full queue drops it."""
        if not self.seconds_per_byte:
            return at
        free_at = max(self.free_at, at - self.burst_time)  # idle time saves at most a burst
        backlog = free_at - at
        if backlog > self.queue_time:
            self.dropped += 1
            return -1.0
        self.peak_backlog = max(self.peak_backlog, backlog)
        self.free_at = free_at + size * self.seconds_per_byte
        return max(self.free_at, at)


class Control:
    """A forwarder's stdin: each "stats" line is answered with a JSON line of `report()` (plus the
    forwarder's CPU seconds) on stdout; end of file (the parent closed it, or died) ends the forwarder."""

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.fd = sys.stdin.fileno()
        os.set_blocking(self.fd, False)
        self._report = report
        self._pending = b""

    def serve(self) -> bool:
        """Answer the commands that have arrived; False once stdin has ended."""
        data = os.read(self.fd, 4096)
        if not data:
            return False
        self._pending += data
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            if line.strip() == b"stats":
                report = {**self._report(), "cpu_seconds": round(time.process_time(), 3)}
                sys.stdout.write(json.dumps(report) + "\n")
                sys.stdout.flush()
        return True


class Direction:
    """One way across the link: its loss, its queue and token bucket, the packets in flight, the counters."""

    def __init__(self, out_fd: int, rate: float, delay: float, loss: float, queue: int, burst: int) -> None:
        self.out_fd = out_fd
        self.delay = delay
        self.loss = loss
        self.bucket = Bucket(rate, queue, burst)
        self.in_flight: deque[tuple[float, bytes]] = deque()
        self.packets = 0
        self.bytes = 0
        self.dropped_loss = 0
        self.write_errors = 0

    def accept(self, packet: bytes, now: float) -> None:
        if self.loss and random.random() < self.loss:
            self.dropped_loss += 1
            return
        left = self.bucket.send(len(packet), now)
        if left >= 0:
            self.in_flight.append((left + self.delay, packet))

    def release(self, now: float) -> float:
        """Write every packet due by `now`; return the due time of the next one (0 when none waits)."""
        in_flight = self.in_flight
        out_fd = self.out_fd
        while in_flight:
            due, packet = in_flight[0]
            if due > now:
                return due
            in_flight.popleft()
            try:
                os.write(out_fd, packet)
            except BlockingIOError:
                # The receiving stack is overwhelmed: a real link would lose the packet there too.
                self.write_errors += 1
                continue
            except OSError:
                # EIO while the other side's device is down (or EINVAL on a bad packet): lost, as on a wire.
                self.write_errors += 1
                continue
            self.packets += 1
            self.bytes += len(packet)
        return 0.0

    def stats(self) -> dict[str, int | float]:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "dropped_loss": self.dropped_loss,
            "dropped_queue": self.bucket.dropped + self.write_errors,
            "peak_queue_ms": round(self.bucket.peak_backlog * 1000, 3),
        }


def open_tun(netns: str, name: str) -> int:
    """Create the TUN device `name` (no packet-information header) inside the network namespace `netns`."""
    with open(netns, "rb") as ns:
        sc.setns(ns.fileno(), sc.CLONE_NEWNET)
    # /proc/sys/net belongs to the namespace of whoever opens it: no IPv6 on the link, so no
    # router solicitations or DAD packets mixed into what is measured.
    for path in ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "/proc/sys/net/ipv6/conf/all/disable_ipv6"):
        try:
            with open(path, "w") as f:
                f.write("1")
        except OSError:
            pass
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def forward(fd_a: int, fd_b: int, a_to_b: Direction, b_to_a: Direction) -> None:
    timer = Timer()
    control = Control(lambda: {"a_to_b": a_to_b.stats(), "b_to_a": b_to_a.stats()})
    epoll = select.epoll()
    for fd in (fd_a, fd_b, timer.fd, control.fd):
        epoll.register(fd, select.EPOLLIN)
    sources = {fd_a: a_to_b, fd_b: b_to_a}
    read = os.read
    monotonic = time.monotonic
    while True:
        events = epoll.poll()
        now = monotonic()
        for fd, _mask in events:
            direction = sources.get(fd)
            if direction is not None:
                for _ in range(READ_BATCH):
                    try:
                        packet = read(fd, PACKET_MAX)
                    except BlockingIOError:
                        break
                    direction.accept(packet, now)
            elif fd == timer.fd:
                timer.clear()
            elif not control.serve():
                return
        now = monotonic()
        next_a = a_to_b.release(now)
        next_b = b_to_a.release(now)
        next_due = min(next_a, next_b) if next_a and next_b else next_a or next_b
        if next_due:
            timer.arm(next_due)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns-a", required=True, help="path of namespace A (e.g. /run/netns/NAME)")
    parser.add_argument("--ns-b", required=True, help="path of namespace B")
    parser.add_argument("--ifname", required=True, help="name of the TUN device in both namespaces")
    parser.add_argument("--rate", type=float, default=0.0, help="bytes per second each way; 0: unlimited")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay in seconds")
    parser.add_argument("--loss", type=float, default=0.0, help="share of packets lost each way, 0..1")
    parser.add_argument("--queue", type=int, default=1 << 20, help="drop-tail queue limit in bytes")
    parser.add_argument("--burst", type=int, default=16384, help="token bucket size in bytes")
    args = parser.parse_args()
    with open("/proc/self/ns/net", "rb") as home:
        fd_a = open_tun(args.ns_a, args.ifname)
        fd_b = open_tun(args.ns_b, args.ifname)
        sc.setns(home.fileno(), sc.CLONE_NEWNET)
    a_to_b = Direction(fd_b, args.rate, args.delay, args.loss, args.queue, args.burst)
    b_to_a = Direction(fd_a, args.rate, args.delay, args.loss, args.queue, args.burst)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        forward(fd_a, fd_b, a_to_b, b_to_a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
