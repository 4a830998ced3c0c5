"""A shaped network link between two network namespaces, for benchmarks that pull over a slow network.

`shaped_link("100mbit", "20ms", loss=0.0)` creates two network namespaces, a server side (10.77.0.1)
and a client side (10.77.0.2), joined by a link of that rate (each way) and that round-trip time
(each way carries half of it), losing that share of packets each way. The namespaces are always
deleted on exit, also after an exception or Ctrl-C. A spec string says the same: `100mbit/20ms`,
`1gbit/2ms`, `10mbit/50ms/1%` (rate/RTT[/loss]; rate `unlimited` for delay only).

Where the kernel has the `netem` qdisc the link is a veth pair with netem on both ends. Where it has
not (the benchmark machine loads no modules), each namespace gets a TUN device and the userspace
forwarder benchmarks/linkfwd.py, a separate process, carries the packets between them: delayed,
metered by a token bucket, with a drop-tail queue of about a bandwidth-delay product.
The forwarder's rate counts whole IP packets (a TUN device has no link-layer header; netem counts
Ethernet frames), so with the 1500-byte MTU TCP's payload tops out near 96.5% of the set rate. TCP's
congestion control is the host's (namespaces inherit it). `Link.popen`/`Link.run` start processes in
either namespace, `Link.socket` opens sockets there from this process. `Link.verify()` measures what
the link does (UDP echo RTT, a bulk TCP transfer from server to client) and prints set vs measured.

Usage: python -m benchmarks.link [SPEC] [--emulator auto|netem|tun] [--busy] [--size BYTES]. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO, TypeVar

from benchmarks.unwind import shielded
from lazyfs.host import process_alive
from runtime import syscalls as sc

Side = Literal["server", "client"]
Emulator = Literal["auto", "netem", "tun"]

NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "lzlink-"
IFNAME = "lzlink0"
SERVER_IP = "10.77.0.1"
CLIENT_IP = "10.77.0.2"
MTU = 1500
FORWARDER = Path(__file__).with_name("linkfwd.py")
SETUP_TIMEOUT = 30

T = TypeVar("T")


class LinkError(Exception):
    """The link cannot be set up or measured; the message says why."""


class LinkSpecError(LinkError, ValueError):
    """A link spec (`100mbit/20ms[/1%]`) or one of its parts is malformed."""


_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"


def parse_rate(text: str) -> int | None:
    """`100mbit` -> 100_000_000 bits per second (tc's units: powers of 10); `unlimited` -> None."""
    value = text.strip().lower()
    if value in ("unlimited", "none", "inf"):
        return None
    match = re.fullmatch(_NUMBER + r"\s*(bit|kbit|mbit|gbit)", value)
    if match is None:
        raise LinkSpecError(
            f"bad rate {text!r}: expected a number and bit, kbit, mbit or gbit (e.g. 100mbit)"
        )
    bits = float(match.group(1)) * _RATE_UNITS[match.group(2)]
    if bits < 8000:
        raise LinkSpecError(f"bad rate {text!r}: below 8kbit (one 1500-byte packet per 1.5 s)")
    return int(bits)


def parse_delay(text: str) -> float:
    """`20ms` -> 0.02 seconds; units us, ms, s."""
    match = re.fullmatch(_NUMBER + r"\s*(us|ms|s)", text.strip().lower())
    if match is None:
        raise LinkSpecError(f"bad delay {text!r}: expected a number and us, ms or s (e.g. 20ms)")
    seconds = float(match.group(1)) * _TIME_UNITS[match.group(2)]
    if seconds > 10:
        raise LinkSpecError(f"bad delay {text!r}: more than 10 s")
    return seconds


def parse_loss(text: str) -> float:
    """`1%` -> 0.01."""
    match = re.fullmatch(_NUMBER + r"\s*%", text.strip())
    if match is None:
        raise LinkSpecError(f"bad loss {text!r}: expected a percentage (e.g. 1%)")
    share = float(match.group(1)) / 100
    if share >= 1:
        raise LinkSpecError(f"bad loss {text!r}: must be below 100%")
    return share


def _format_rate(bits: int | None) -> str:
    if bits is None:
        return "unlimited"
    for unit in ("gbit", "mbit", "kbit"):
        scale = _RATE_UNITS[unit]
        if bits >= scale:
            return f"{bits / scale:g}{unit}"
    return f"{bits}bit"


@dataclass(frozen=True)
class LinkSpec:
    """What the link should do: rate in bits per second each way (None: unlimited), RTT, loss each way."""

    rate: int | None
    rtt: float
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.rate is not None and self.rate < 8000:
            raise LinkSpecError(f"bad rate {self.rate} bit/s: below 8kbit")
        if not 0 <= self.rtt <= 10:
            raise LinkSpecError(f"bad RTT {self.rtt} s: must be between 0 and 10 s")
        if not 0 <= self.loss < 1:
            raise LinkSpecError(f"bad loss {self.loss}: must be a share between 0 and 1 (below 1)")

    @property
    def one_way_delay(self) -> float:
        return self.rtt / 2

    @property
    def queue_bytes(self) -> int:
        """The drop-tail limit of each direction: a bandwidth-delay product, plus 32 packets of margin."""
        if self.rate is None:
            return 1 << 24
        return int(self.rate / 8 * self.rtt) + 32 * MTU

    @property
    def burst_bytes(self) -> int:
        """The token bucket: 2 ms at the rate, at least 4 packets, so a late wake-up costs no rate."""
        if self.rate is None:
            return 0
        return max(4 * MTU, int(self.rate / 8 * 0.002))

    def __str__(self) -> str:
        text = f"{_format_rate(self.rate)}/{self.rtt * 1000:g}ms"
        return text + (f"/{self.loss * 100:g}%" if self.loss else "")


def parse_link_spec(text: str) -> LinkSpec:
    """`100mbit/20ms` (rate/RTT), `10mbit/50ms/1%` (rate/RTT/loss each way)."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(part.strip() for part in parts):
        raise LinkSpecError(
            f"bad link spec {text!r}: expected RATE/RTT[/LOSS%], e.g. 100mbit/20ms or 10mbit/50ms/1%"
        )
    try:
        rate = parse_rate(parts[0])
        rtt = parse_delay(parts[1])
        loss = parse_loss(parts[2]) if len(parts) == 3 else 0.0
    except LinkSpecError as e:
        raise LinkSpecError(f"bad link spec {text!r}: {e}") from None
    return LinkSpec(rate, rtt, loss)


@dataclass(frozen=True)
class LinkFigures:
    """What verify() measured, next to what was set."""

    spec: LinkSpec
    emulator: str
    rtt_min: float
    rtt_median: float
    rate: float  # bits per second of TCP payload, server to client, after slow start
    transferred: int  # bytes
    forwarder: dict[str, Any] | None = None  # the userspace forwarder's counters after the measurement

    def report(self) -> str:
        lines = [f"link {self.spec} ({self.emulator})"]
        rtt_ratio = f" ({self.rtt_median / self.spec.rtt:.2f}x set)" if self.spec.rtt else ""
        lines.append(
            f"  RTT   set {self.spec.rtt * 1000:8.2f} ms  measured median {self.rtt_median * 1000:.2f} ms, "
            f"min {self.rtt_min * 1000:.2f} ms{rtt_ratio}"
        )
        rate_ratio = f" ({self.rate / self.spec.rate:.2f}x set)" if self.spec.rate else ""
        lines.append(
            f"  rate  set {_format_rate(self.spec.rate):>11}  measured {self.rate / 1e6:.1f} Mbit/s "
            f"TCP payload over {self.transferred / 1e6:.1f} MB{rate_ratio}"
        )
        if self.forwarder is not None:
            for key, name in (("a_to_b", "server->client"), ("b_to_a", "client->server")):
                counters = self.forwarder[key]
                lines.append(
                    f"  {name}: {counters['packets']} packets, {counters['dropped_queue']} dropped by the "
                    f"full queue (peak {counters['peak_queue_ms']} ms), {counters['dropped_loss']} lost"
                )
            lines.append(f"  forwarder CPU time {self.forwarder['cpu_seconds']:.2f} s")
        return "\n".join(lines)


def _ip(*args: str) -> None:
    try:
        proc = subprocess.run(["ip", *args], capture_output=True, timeout=SETUP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LinkError(f"ip {' '.join(args)}: {e}") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().replace("\n", " | ")
        raise LinkError(f"`ip {' '.join(args)}` failed: {message}")


def _run_quietly(argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(list(argv), capture_output=True, timeout=SETUP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LinkError(f"{argv[0]}: {e}") from None


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of links whose process died without cleaning up (SIGKILL); return their names."""
    removed: list[str] = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        match = re.fullmatch(re.escape(NAME_PREFIX) + r"(\d+)-[0-9a-f]+-(server|client)", entry.name)
        if match and not process_alive(int(match.group(1))):
            _run_quietly(["ip", "netns", "delete", entry.name])
            removed.append(entry.name)
    return removed


def netem_available() -> bool:
    """Whether the kernel has the netem qdisc: try it on the loopback of a throwaway namespace."""
    name = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-server"
    _ip("netns", "add", name)
    try:
        proc = _run_quietly(["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
        return proc.returncode == 0
    finally:
        with shielded():
            _run_quietly(["ip", "netns", "delete", name])


class Link:
    """Two network namespaces joined by a shaped link; start processes or open sockets on either side."""

    def __init__(self, spec: LinkSpec, emulator: str, server_ns: str, client_ns: str) -> None:
        self.spec = spec
        self.emulator = emulator
        self.server_ns = server_ns
        self.client_ns = client_ns
        self.server_ip = SERVER_IP
        self.client_ip = CLIENT_IP
        self.forwarder: subprocess.Popen[bytes] | None = None

    def namespace(self, side: Side) -> str:
        if side == "server":
            return self.server_ns
        if side == "client":
            return self.client_ns
        raise ValueError(f"side must be 'server' or 'client', not {side!r}")

    def ip(self, side: Side) -> str:
        self.namespace(side)  # checks the side
        return self.server_ip if side == "server" else self.client_ip

    def command(self, side: Side, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace of `side` (its own mount namespace sees that side's /sys)."""
        return ["ip", "netns", "exec", self.namespace(side), *argv]

    def popen(self, side: Side, argv: Sequence[str], **popen_kw: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.command(side, argv), **popen_kw)

    def run(self, side: Side, argv: Sequence[str], **run_kw: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.command(side, argv), **run_kw)

    def in_namespace(self, side: Side, function: Callable[[], T]) -> T:
        """Call `function` in a short-lived thread that joined the side's network namespace.

        setns(CLONE_NEWNET) moves only the calling thread, and a socket stays in the namespace it was
        created in, so the sockets made this way work from any thread of this process.
        """
        path = NETNS_DIR / self.namespace(side)
        result: list[T] = []
        failure: list[BaseException] = []

        def body() -> None:
            try:
                with open(path, "rb") as ns:
                    sc.setns(ns.fileno(), sc.CLONE_NEWNET)
                result.append(function())
            except BaseException as e:
                failure.append(e)

        thread = threading.Thread(target=body, name=f"netns-{side}")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return result[0]

    def socket(self, side: Side, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """An IPv4 socket of `kind` in the side's network namespace."""
        return self.in_namespace(side, lambda: socket.socket(socket.AF_INET, kind))

    def forwarder_stats(self) -> dict[str, Any] | None:
        """The userspace forwarder's counters (packets, drops, peak queue), or None with netem."""
        return None if self.forwarder is None else forwarder_stats(self.forwarder, "the link forwarder")

    def measure_rtt(self, count: int = 20, size: int = 64) -> list[float]:
        """Round trips of a UDP datagram from the client to an echo on the server side, in seconds."""
        server = self.socket("server", socket.SOCK_DGRAM)
        client = self.socket("client", socket.SOCK_DGRAM)
        with server, client:
            server.bind((self.server_ip, 0))
            port = server.getsockname()[1]
            server.settimeout(max(5.0, self.spec.rtt * 4))
            client.settimeout(1.0 + self.spec.rtt * 4)

            def echo() -> None:
                # Until "stop", or a silence of the timeout (the "stop" itself may be lost).
                with contextlib.suppress(OSError):
                    while True:
                        data, peer = server.recvfrom(65536)
                        if data == b"stop":
                            return
                        server.sendto(data, peer)

            thread = threading.Thread(target=echo, name="udp-echo", daemon=True)
            thread.start()
            rtts = []
            for _ in range(count):
                # Each its own payload: a late echo of a lost-looking ping must not pass for the next one.
                payload = os.urandom(size)
                start = time.perf_counter()
                client.sendto(payload, (self.server_ip, port))
                try:
                    while client.recv(65536) != payload:
                        pass
                except TimeoutError:
                    continue  # lost (the link may be lossy); not a round trip
                rtts.append(time.perf_counter() - start)
            with contextlib.suppress(OSError):
                client.sendto(b"stop", (self.server_ip, port))
            thread.join(timeout=self.spec.rtt * 4 + 1)
        if not rtts:
            raise LinkError(f"no UDP echo came back across the link in {count} tries")
        return rtts

    def measure_rate(self, size: int | None = None) -> tuple[float, int]:
        """Send `size` bytes over TCP from the server side to the client; return (bits/s, bytes).

        The rate is taken over the bytes after the first quarter, so TCP's slow start does not count.
        The default size is about 3 seconds at the set rate, between 4 and 256 MB.
        """
        if size is None:
            rate = self.spec.rate or 10**9
            size = min(max(4 << 20, int(rate / 8 * 3)), 256 << 20)
        listener = self.socket("server")
        client = self.socket("client")
        with listener, client:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.server_ip, 0))
            listener.listen(1)
            listener.settimeout(30)
            port = listener.getsockname()[1]
            sent: list[BaseException] = []

            def send() -> None:
                try:
                    conn, _ = listener.accept()
                    with conn:
                        block = memoryview(os.urandom(1 << 20))
                        left = size
                        while left > 0:
                            n = min(left, len(block))
                            conn.sendall(block[:n])
                            left -= n
                except OSError as e:
                    sent.append(e)

            thread = threading.Thread(target=send, name="tcp-send", daemon=True)
            thread.start()
            client.settimeout(60)
            client.connect((self.server_ip, port))
            buffer = bytearray(1 << 20)
            received = 0
            mark_at = size // 4
            mark_time, mark_bytes = 0.0, 0
            while True:
                n = client.recv_into(buffer)
                if n == 0:
                    break
                received += n
                if not mark_time and received >= mark_at:
                    mark_time, mark_bytes = time.perf_counter(), received
            end = time.perf_counter()
            thread.join(timeout=30)
        if sent:
            raise LinkError(f"bulk transfer across the link failed: {sent[0]}")
        if received != size:
            raise LinkError(f"bulk transfer across the link ended after {received} of {size} bytes")
        return (received - mark_bytes) * 8 / max(end - mark_time, 1e-9), received

    def verify(
        self, rtt_count: int = 20, size: int | None = None, *, out: TextIO | None = sys.stdout
    ) -> LinkFigures:
        """Measure the link: UDP echo RTT (median, min) and a bulk TCP transfer from server to client.

        The figures, set against measured, are printed to `out` unless it is None.
        """
        rtts = self.measure_rtt(rtt_count)
        rate, transferred = self.measure_rate(size)
        figures = LinkFigures(
            self.spec,
            self.emulator,
            min(rtts),
            statistics.median(rtts),
            rate,
            transferred,
            self.forwarder_stats(),
        )
        if out is not None:
            print(figures.report(), file=out, flush=True)
        return figures


def _set_up_netem(spec: LinkSpec, server_ns: str, client_ns: str) -> bool:
    """A veth pair with netem on both ends; False when the kernel has no netem (nothing is left behind)."""
    _ip("link", "add", IFNAME, "netns", server_ns, "type", "veth", "peer", "name", IFNAME, "netns", client_ns)
    # netem meters and delays whole skbs: without this, one GSO skb of 64 KiB would pass as one packet.
    for ns in (server_ns, client_ns):
        _run_quietly(["ip", "-n", ns, "link", "set", "dev", IFNAME, "gso_max_segs", "1"])
    # netem's limit counts packets, those being delayed included: the queue plus a one-way flight.
    rate_bytes = (spec.rate or 10**10) / 8
    limit = (spec.queue_bytes + int(rate_bytes * spec.one_way_delay)) // MTU + 64
    netem = ["netem", "delay", f"{spec.one_way_delay * 1e6:.0f}us", "limit", str(limit)]
    if spec.rate is not None:
        netem += ["rate", f"{spec.rate}bit"]
    if spec.loss:
        netem += ["loss", f"{spec.loss * 100:g}%"]
    for ns in (server_ns, client_ns):
        proc = _run_quietly(["tc", "-n", ns, "qdisc", "add", "dev", IFNAME, "root", *netem])
        if proc.returncode != 0:
            _run_quietly(["ip", "-n", server_ns, "link", "delete", IFNAME])
            message = proc.stderr.decode(errors="replace").strip()
            if "unknown" in message.lower():
                return False
            raise LinkError(f"tc qdisc add ... netem failed: {message}")
    return True


def _start_forwarder(spec: LinkSpec, server_ns: str, client_ns: str) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        str(FORWARDER),
        "--ns-a",
        str(NETNS_DIR / server_ns),
        "--ns-b",
        str(NETNS_DIR / client_ns),
        "--ifname",
        IFNAME,
        "--rate",
        str((spec.rate or 0) / 8),
        "--delay",
        repr(spec.one_way_delay),
        "--loss",
        repr(spec.loss),
        "--queue",
        str(spec.queue_bytes),
        "--burst",
        str(spec.burst_bytes),
    ]
    return start_forwarder(argv, "the link forwarder")


def start_forwarder(
    argv: Sequence[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a forwarder process (linkfwd.py, or the fleet's switch) and wait for its "ready" line.

    LinkError naming `what`, with the last line of its stderr, when it does not start."""
    forwarder = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Its own session: a Ctrl-C at the terminal reaches the benchmark, which then ends the
        # forwarder in order, after the processes that use the link.
        start_new_session=True,
    )
    assert forwarder.stdout is not None
    line = forwarder.stdout.readline()
    if line != b"ready\n":
        forwarder.kill()
        _, err = forwarder.communicate(timeout=SETUP_TIMEOUT)
        tail = err.decode(errors="replace").strip().splitlines()
        raise LinkError(f"{what} did not start: {tail[-1] if tail else '(no output)'}")
    return forwarder


def forwarder_stats(forwarder: subprocess.Popen[bytes], what: str) -> dict[str, Any]:
    """A forwarder's counters: the JSON line it answers "stats" with (linkfwd.Control); LinkError naming
    `what` once it has exited."""
    assert forwarder.stdin is not None and forwarder.stdout is not None
    try:
        forwarder.stdin.write(b"stats\n")
        forwarder.stdin.flush()
        line = forwarder.stdout.readline()
    except OSError:
        line = b""
    if not line:
        raise LinkError(f"{what} has exited ({forwarder.poll()})")
    stats: dict[str, Any] = json.loads(line)
    return stats


def stop_forwarder(forwarder: subprocess.Popen[bytes]) -> None:
    """End a forwarder started by start_forwarder and close its pipes."""
    # End of file on its stdin is its signal to stop; kill only if it does not.
    with contextlib.suppress(OSError):
        if forwarder.stdin is not None:
            forwarder.stdin.close()
    try:
        forwarder.wait(timeout=5)
    except subprocess.TimeoutExpired:
        forwarder.kill()
        forwarder.wait()
    for pipe in (forwarder.stdout, forwarder.stderr):
        if pipe is not None:
            pipe.close()


def _address(ns: str, local: str, peer: str) -> None:
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "addr", "add", local, "peer", f"{peer}/32", "dev", IFNAME)
    _ip("-n", ns, "link", "set", IFNAME, "mtu", str(MTU), "up")


@contextlib.contextmanager
def shaped_link(
    rate: str | None = "100mbit",
    delay: str = "20ms",
    loss: float = 0.0,
    *,
    emulator: Emulator = "auto",
) -> Iterator[Link]:
    """Two network namespaces joined by a link of `rate` each way and round-trip time `delay`.

    `loss` is the share (0..1) of packets lost in each direction. `emulator` "auto" uses netem
    where the kernel has it and the userspace forwarder otherwise; "netem" or "tun" insist.
    """
    spec = LinkSpec(None if rate is None else parse_rate(rate), parse_delay(delay), loss)
    with shaped_link_of(spec, emulator=emulator) as link:
        yield link


@contextlib.contextmanager
def shaped_link_of(spec: LinkSpec, *, emulator: Emulator = "auto") -> Iterator[Link]:
    """shaped_link() for a LinkSpec (from parse_link_spec)."""
    if os.geteuid() != 0:
        raise LinkError("a shaped link needs root (network namespaces)")
    if emulator not in ("auto", "netem", "tun"):
        raise LinkError(f"emulator must be auto, netem or tun, not {emulator!r}")
    remove_stale_namespaces()
    token = f"{NAME_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    server_ns, client_ns = f"{token}-server", f"{token}-client"
    created: list[str] = []
    forwarder: subprocess.Popen[bytes] | None = None
    try:
        for ns in (server_ns, client_ns):
            _ip("netns", "add", ns)
            created.append(ns)
        used = ""
        if emulator != "tun" and _set_up_netem(spec, server_ns, client_ns):
            used = "netem"
        elif emulator == "netem":
            raise LinkError("the kernel has no netem qdisc (tc: unknown qdisc kind)")
        else:
            forwarder = _start_forwarder(spec, server_ns, client_ns)
            used = "userspace forwarder"
        _address(server_ns, SERVER_IP, CLIENT_IP)
        _address(client_ns, CLIENT_IP, SERVER_IP)
        link = Link(spec, used, server_ns, client_ns)
        link.forwarder = forwarder
        yield link
    finally:
        with shielded():
            if forwarder is not None:
                stop_forwarder(forwarder)
            for ns in reversed(created):
                _run_quietly(["ip", "netns", "delete", ns])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "spec", nargs="?", default="100mbit/20ms", help="RATE/RTT[/LOSS%%] (default 100mbit/20ms)"
    )
    parser.add_argument("--emulator", choices=["auto", "netem", "tun"], default="auto")
    parser.add_argument("--busy", action="store_true", help="keep a core busy meanwhile (another process)")
    parser.add_argument("--size", type=int, default=None, help="bytes of the bulk TCP transfer")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    busy: subprocess.Popen[bytes] | None = None
    try:
        spec = parse_link_spec(args.spec)
        if args.busy:
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        with shaped_link_of(spec, emulator=args.emulator) as link:
            link.verify(size=args.size)
    except LinkError as e:
        print(f"benchmarks.link: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("benchmarks.link: interrupted", file=sys.stderr)
        return 130
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
