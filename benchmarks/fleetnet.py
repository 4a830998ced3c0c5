"""The fleet benchmark's network: a star of network namespaces (the registry, a proxy, N nodes), each
behind a shaped link of its own, all carried by one switch process (benchmarks/fleetfwd.py).

`star({"reg": spec, "proxy": spec, "n0": spec, ...})` makes one namespace per name, called
`lzf-<pid>-<token>-<name>`, with the TUN device `lzf0` holding its address in 10.78.0.0/16 (every
other address of the star is reached through it), and yields a Star that runs commands there and
reads the switch's byte counters. Namespaces and the switch are always removed on exit, also after
an exception or Ctrl-C; namespaces left by a process killed with SIGKILL are removed by the next
star (`remove_stale_namespaces`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.link import (
    MTU,
    NETNS_DIR,
    LinkError,
    LinkSpec,
    forwarder_stats,
    start_forwarder,
    stop_forwarder,
)
from benchmarks.unwind import shielded
from lazyfs.host import process_alive
from runtime import syscalls as sc

PREFIX = "lzf-"
IFNAME = "lzf0"
SOURCE_ROOT = Path(__file__).resolve().parent.parent
SETUP_TIMEOUT = 60
MAX_NODES = 1000  # addresses 10.78.1.1 .. 10.78.4.250


def address(name: str) -> str:
    """The registry is 10.78.0.1, the proxy 10.78.0.2, node k 10.78.(1 + k // 250).(1 + k % 250)."""
    if name == "reg":
        return "10.78.0.1"
    if name == "proxy":
        return "10.78.0.2"
    match = re.fullmatch(r"n(\d+)", name)
    if match is None or int(match.group(1)) >= MAX_NODES:
        raise ValueError(f"no address for {name!r}")
    k = int(match.group(1))
    return f"10.78.{1 + k // 250}.{1 + k % 250}"


def _run(argv: Sequence[str], stdin: bytes | None = None) -> None:
    try:
        proc = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=SETUP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LinkError(f"{argv[0]}: {e}") from None
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip().replace("\n", " | ")
        raise LinkError(f"`{' '.join(argv[:4])} ...` failed: {message}")


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces of stars whose process died without cleaning up; return their names."""
    removed: list[str] = []
    if NETNS_DIR.is_dir():
        for entry in NETNS_DIR.iterdir():
            match = re.fullmatch(re.escape(PREFIX) + r"(\d+)-[0-9a-f]+-\w+", entry.name)
            if match and not process_alive(int(match.group(1))):
                subprocess.run(["ip", "netns", "delete", entry.name], capture_output=True)
                removed.append(entry.name)
    return removed


class Star:
    """The namespaces of a running star: commands in them, and the switch's counters."""

    def __init__(self, token: str, names: Sequence[str], switch: subprocess.Popen[bytes]) -> None:
        self.token = token
        self.names = list(names)
        self.switch = switch

    def namespace(self, name: str) -> str:
        return f"{self.token}-{name}"

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """`argv` in the network namespace of `name` (mounts stay those of the host)."""
        return ["nsenter", f"--net={NETNS_DIR / self.namespace(name)}", *argv]

    def accepts(self, name: str, host: str, port: int) -> bool:
        """Whether a TCP connection from the namespace of `name` to host:port succeeds (from a short-lived
        thread that joined it: setns moves only the calling thread)."""
        accepted: list[bool] = []

        def attempt() -> None:
            try:
                with open(NETNS_DIR / self.namespace(name), "rb") as ns:
                    sc.setns(ns.fileno(), sc.CLONE_NEWNET)
                with socket.create_connection((host, port), timeout=2):
                    accepted.append(True)
            except OSError:
                pass

        thread = threading.Thread(target=attempt, name=f"connect-{name}")
        thread.start()
        thread.join()
        return bool(accepted)

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per name: the switch's counters of its link (sent/received bytes and packets, drops)."""
        stats = self.stats()
        return dict(zip(self.names, stats["ports"], strict=True))

    def stats(self) -> dict[str, Any]:
        return forwarder_stats(self.switch, "the fleet's switch")


@contextlib.contextmanager
def star(links: Mapping[str, LinkSpec]) -> Iterator[Star]:
    """One namespace per name in `links`, each behind its link to the others (see the module doc)."""
    if os.geteuid() != 0:
        raise LinkError("the fleet's network needs root (network namespaces)")
    remove_stale_namespaces()
    token = f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    names = list(links)
    created: list[str] = []
    switch: subprocess.Popen[bytes] | None = None
    try:
        for name in names:
            address(name)  # refuses a name without one before anything is made
            _run(["ip", "netns", "add", f"{token}-{name}"])
            created.append(f"{token}-{name}")
        ports = [
            {
                "ns": str(NETNS_DIR / f"{token}-{name}"),
                "ip": address(name),
                "rate": (spec.rate or 0) / 8,
                "delay": spec.one_way_delay,
                "queue": spec.queue_bytes,
                "burst": spec.burst_bytes,
            }
            for name, spec in links.items()
        ]
        switch = start_forwarder(
            [sys.executable, "-m", "benchmarks.fleetfwd", "--ifname", IFNAME, "--ports", json.dumps(ports)],
            "the fleet's switch",
            cwd=SOURCE_ROOT,
            env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)},
        )
        for name in names:  # one `ip` per namespace: three per namespace would take seconds
            batch = f"link set lo up\naddr add {address(name)}/16 dev {IFNAME}\n"
            batch += f"link set {IFNAME} mtu {MTU} up\n"
            _run(["ip", "-n", f"{token}-{name}", "-batch", "-"], stdin=batch.encode())
        yield Star(token, names, switch)
    finally:
        with shielded():
            if switch is not None:
                stop_forwarder(switch)
            for ns in reversed(created):
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
