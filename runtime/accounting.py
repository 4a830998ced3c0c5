"""What a container uses, as `docker stats` shows it: CPU time, memory use and limit, block and network
I/O and process count, read from its cgroup (v1 or v2) and from its PID 1's network namespace.

This module owns reading those counters into a `Usage` and the CPU share between two readings; it
neither prints nor samples on a clock (the caller does both).
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from runtime.cgroups import Cgroup

# The limit cgroup v1 reports for "no limit": PAGE_COUNTER_MAX pages, rounded down to a page.
V1_UNLIMITED = 0x7FFFFFFFFFFFF000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """One reading of a container's counters (bytes and nanoseconds; counters only grow)."""

    cpu_ns: int  # CPU time its processes used, all CPUs together
    memory: int  # bytes in use, without the inactive file cache (what docker shows since 19.03)
    memory_limit: int  # its limit, or the host's memory without one
    block_read: int
    block_write: int
    net_rx: int  # bytes received on its interfaces (loopback aside)
    net_tx: int
    pids: int


def read_usage(cgroup: Cgroup, pid: int) -> Usage:
    """The counters of the container whose cgroup is `cgroup` and whose PID 1 is `pid` (host PID)."""
    cpu, memory, limit, reads, writes, pids = (v2_usage if cgroup.layout == "v2" else v1_usage)(cgroup)
    rx, tx = network_io(pid)
    return Usage(cpu, memory, min(limit, host_memory()), reads, writes, rx, tx, pids)


def v1_usage(cgroup: Cgroup) -> tuple[int, int, int, int, int, int]:
    """(CPU ns, memory, memory limit, block read, block write, PIDs) from the v1 hierarchies."""
    found = cgroup.controllers
    cpu = _read_int(found["cpuacct"] / "cpuacct.usage") if "cpuacct" in found else 0
    memory, limit = 0, V1_UNLIMITED
    if "memory" in found:
        stat = keyed(found["memory"] / "memory.stat")
        memory = _read_int(found["memory"] / "memory.usage_in_bytes") - stat.get("total_inactive_file", 0)
        limit = _read_int(found["memory"] / "memory.limit_in_bytes")
    reads = writes = 0
    service_bytes = found["blkio"] / "blkio.throttle.io_service_bytes_recursive" if "blkio" in found else None
    if service_bytes is not None and service_bytes.exists():  # older kernels lack the file: no block I/O
        reads, writes = v1_block_io(service_bytes.read_text())
    pids = _read_int(found["pids"] / "pids.current") if "pids" in found else 0
    return cpu, max(memory, 0), limit, reads, writes, pids


def v2_usage(cgroup: Cgroup) -> tuple[int, int, int, int, int, int]:
    """The same from the cgroup's one v2 directory; cpu.stat is there whatever controllers it has."""
    path = cgroup.paths[0]
    cpu = keyed(path / "cpu.stat").get("usage_usec", 0) * 1000
    memory, limit = 0, V1_UNLIMITED
    if (path / "memory.current").exists():
        inactive = keyed(path / "memory.stat").get("inactive_file", 0)
        memory = _read_int(path / "memory.current") - inactive
        text = (path / "memory.max").read_text().strip()
        limit = V1_UNLIMITED if text == "max" else int(text)
    reads = writes = 0
    if (path / "io.stat").exists():
        reads, writes = v2_block_io((path / "io.stat").read_text())
    pids = _read_int(path / "pids.current") if (path / "pids.current").exists() else 0
    return cpu, max(memory, 0), limit, reads, writes, pids


def v1_block_io(text: str) -> tuple[int, int]:
    """Bytes read and written from blkio's `MAJ:MIN Read|Write|... N` lines, all devices together."""
    totals = {"Read": 0, "Write": 0}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] in totals:
            totals[fields[1]] += int(fields[2])
    return totals["Read"], totals["Write"]


def v2_block_io(text: str) -> tuple[int, int]:
    """Bytes read and written from io.stat's `MAJ:MIN rbytes=N wbytes=N ...` lines."""
    reads = writes = 0
    for line in text.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                reads += int(value)
            elif key == "wbytes":
                writes += int(value)
    return reads, writes


def network_io(pid: int) -> tuple[int, int]:
    """Bytes received and sent on the interfaces of `pid`'s network namespace, loopback aside, as docker
    counts a container's networks; (0, 0) for a container on the host's network (it has none of its own)."""
    proc = Path(f"/proc/{pid}")
    with suppress(FileNotFoundError, ProcessLookupError):
        if os.stat(proc / "ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            return 0, 0
        return interface_bytes((proc / "net/dev").read_text())
    return 0, 0


def interface_bytes(text: str) -> tuple[int, int]:
    """Received and sent bytes of /proc/net/dev, summed over its interfaces but `lo`."""
    rx = tx = 0
    for line in text.splitlines()[2:]:  # two lines of headers
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() != "lo" and len(fields) >= 9:
            rx, tx = rx + int(fields[0]), tx + int(fields[8])
    return rx, tx


def system_cpu_ns() -> int:
    """CPU time the whole machine has spent, all CPUs together (the first line of /proc/stat), which
    docker divides a container's CPU time by."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(value) for value in fields[:8]) * 1_000_000_000 // CLOCK_TICKS


def cpu_percent(before: Usage, after: Usage, system_before: int, system_after: int) -> float:
    """The container's CPU use between two readings, where 100% is one CPU (docker's formula)."""
    system = system_after - system_before
    used = after.cpu_ns - before.cpu_ns
    if system <= 0 or used <= 0:
        return 0.0
    return used / system * (os.cpu_count() or 1) * 100.0


def host_memory() -> int:
    """The machine's memory in bytes (MemTotal)."""
    return keyed(Path("/proc/meminfo"), suffix=" kB").get("MemTotal:", 0) * 1024


def keyed(path: Path, suffix: str = "") -> dict[str, int]:
    """A flat `key value` file (memory.stat, cpu.stat, meminfo) as a dict; unreadable values are left out."""
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with suppress(ValueError):
            values[key] = int(value.strip().removesuffix(suffix))
    return values


def _read_int(path: Path) -> int:
    return int(path.read_text())
