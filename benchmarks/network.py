"""The network benchmark: round-trip latency and throughput between containers on the bridge and through
a published port, against host-to-host (two plain network namespaces on a veth) on the same machine.

Everything runs in network namespaces of its own (`lzn-bench-*`), so the host's network is untouched:
a namespace stands for the host (lazyctr runs there, the default bridge and its NAT rules live there),
two containers sleep on its default bridge, one publishing a port; the baseline is two more
namespaces joined by a veth. The tools are the same on every path: a small Python TCP server and
client (this module, `python -m benchmarks.network serve|measure`), each started with `nsenter --net`
in the namespace of an end, the containers' own namespaces included. Latency is a one-byte ping-pong
on one connection (TCP_NODELAY); throughput is one connection sending 64 KiB writes for a while.

    sudo lazyctr bench network
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import SOURCE_ROOT, BenchError, lazyctr, run_quietly, stop, workspace
from runtime.network.attachments import NETNS_FILE

PORT = 5000
PUBLISHED = 18080
SUBNET = "10.89.150.0/24"  # the default bridge's, in the benchmark's own "host" namespace
GATEWAY = "10.89.150.1"
VETH_A, VETH_B = "10.89.151.1", "10.89.151.2"  # the baseline's two namespaces
CHUNK = 64 * 1024


@dataclass
class Figures:
    path: str
    rtt_median_us: float
    rtt_p99_us: float
    throughput_gbit: float


# -- the tools: a server and a client, each run in the namespace of one end ------------------------


def serve(port: int) -> None:
    """Answer connections one at a time: `E` echoes bytes back, `S` swallows them and says how many."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen()
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = conn.recv(1)
            if mode == b"E":
                while data := conn.recv(CHUNK):
                    conn.sendall(data)
            elif mode == b"S":
                total = 0
                while data := conn.recv(4 * CHUNK):
                    total += len(data)
                conn.sendall(struct.pack("<Q", total))


def measure(host: str, port: int, pings: int, seconds: float) -> dict[str, float]:
    """Ping-pong `pings` times, then send for `seconds`; the RTTs (µs) and the throughput (Gbit/s)."""
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(b"E")
        rtts: list[float] = []
        for i in range(pings + 100):
            sent = time.perf_counter_ns()
            conn.sendall(b"x")
            conn.recv(1)
            if i >= 100:  # the first hundred warm the path up
                rtts.append((time.perf_counter_ns() - sent) / 1000)
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(b"S")
        block = b"\0" * CHUNK
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            conn.sendall(block)
        conn.shutdown(socket.SHUT_WR)
        (total,) = struct.unpack("<Q", conn.recv(8))
        elapsed = time.perf_counter() - start
    rtts.sort()
    return {
        "rtt_median_us": statistics.median(rtts),
        "rtt_p99_us": rtts[int(len(rtts) * 0.99)],
        "throughput_gbit": total * 8 / elapsed / 1e9,
    }


# -- the set-up: namespaces, containers, and the tools started in them -----------------------------


def _module(netns: str, *args: str) -> list[str]:
    return ["nsenter", f"--net={netns}", sys.executable, "-m", "benchmarks.network", *args]


@contextmanager
def server_in(netns: str) -> Iterator[None]:
    proc = subprocess.Popen(
        _module(netns, "serve", str(PORT)), stdout=subprocess.PIPE, cwd=SOURCE_ROOT, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise BenchError(f"the benchmark server in {netns} did not start")
        yield
    finally:
        stop(proc)


def client_in(netns: str, path: str, host: str, port: int, pings: int, seconds: float) -> Figures:
    argv = _module(netns, "measure", host, str(port), str(pings), str(seconds))
    out = subprocess.run(argv, capture_output=True, text=True, cwd=SOURCE_ROOT, check=True).stdout
    return Figures(path, **json.loads(out))


@contextmanager
def namespaces(*names: str) -> Iterator[None]:
    try:
        for name in names:
            run_quietly(["ip", "netns", "add", name])
            run_quietly(["ip", "-n", name, "link", "set", "lo", "up"])
        yield
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def run_suite(pings: int, seconds: float, rounds: int, out: Path | None) -> list[Figures]:
    """Measure every path `rounds` times, in turns (so that the machine's load falls on all alike);
    report each path's medians."""
    if os.geteuid() != 0:
        raise BenchError("the network benchmark needs root (network namespaces, bridges, NAT)")
    from builder.rootfs import busybox_tarball

    tag = f"lzn-bench-{os.urandom(2).hex()}"
    host, side_a, side_b = tag, f"{tag}-a", f"{tag}-b"
    with workspace("lzn-bench-network-") as base, namespaces(host, side_a, side_b):
        # The baseline: two namespaces on a veth, nothing else.
        veth = ["ip", "link", "add", "lzn-bva", "netns", side_a, "type", "veth"]
        run_quietly([*veth, "peer", "name", "lzn-bvb", "netns", side_b])
        for side, name, address in ((side_a, "lzn-bva", VETH_A), (side_b, "lzn-bvb", VETH_B)):
            run_quietly(["ip", "-n", side, "addr", "add", f"{address}/24", "dev", name])
            run_quietly(["ip", "-n", side, "link", "set", name, "up"])
        # Two containers on the default bridge of the "host" namespace, the server's port published.
        root = base / "root"
        busybox_tarball(base / "busybox.tar")
        os.environ["LAZYCTR_BRIDGE_SUBNET"] = SUBNET
        lazyctr(root, "import", str(base / "busybox.tar"), "busybox")
        ids = {}
        try:
            for name, extra in (("server", ["-p", f"{PUBLISHED}:{PORT}"]), ("client", [])):
                argv = ["run", "-d", "--network", "bridge", "--name", f"lzn-bench-{name}", *extra, "busybox"]
                ids[name] = lazyctr(root, *argv, "sleep", "3600", netns=host).strip()
            netns = {name: str(root / "containers" / cid / NETNS_FILE) for name, cid in ids.items()}
            server = json.loads((root / "containers" / ids["server"] / "network.json").read_text())["address"]
            paths = [
                ("host-to-host (veth)", f"/run/netns/{side_a}", VETH_B, PORT),
                ("container-to-container (bridge)", netns["client"], server, PORT),
                ("host to published port (DNAT)", f"/run/netns/{host}", GATEWAY, PUBLISHED),
            ]
            samples: dict[str, list[Figures]] = {path: [] for path, *_ in paths}
            with server_in(f"/run/netns/{side_b}"), server_in(netns["server"]):
                for _ in range(rounds):
                    for path, client, address, port in paths:
                        samples[path].append(client_in(client, path, address, port, pings, seconds))
        finally:
            for cid in ids.values():
                with suppress(RuntimeError):
                    lazyctr(root, "rm", "-f", cid, netns=host)
    results = [
        Figures(
            path,
            statistics.median(f.rtt_median_us for f in runs),
            statistics.median(f.rtt_p99_us for f in runs),
            statistics.median(f.throughput_gbit for f in runs),
        )
        for path, runs in samples.items()
    ]
    report(results, out)
    return results


def report(results: list[Figures], out: Path | None) -> None:
    baseline = results[0]
    print(f"{'PATH':<34}{'RTT MEDIAN':>12}{'RTT P99':>10}{'x BASE':>8}{'GBIT/S':>9}{'x BASE':>8}")
    for r in results:
        print(
            f"{r.path:<34}{r.rtt_median_us:>10.1f}us{r.rtt_p99_us:>8.1f}us"
            f"{r.rtt_median_us / baseline.rtt_median_us:>8.2f}{r.throughput_gbit:>9.2f}"
            f"{r.throughput_gbit / baseline.throughput_gbit:>8.2f}"
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps([r.__dict__ for r in results], indent=2))


def main() -> None:
    role, *args = sys.argv[1:]
    if role == "serve":
        serve(int(args[0]))
    elif role == "measure":
        print(json.dumps(measure(args[0], int(args[1]), int(args[2]), float(args[3]))))


if __name__ == "__main__":
    main()
