"""`lazyctr bench vm`: the seed's comparison of containers with virtual machines, on this machine.

One image (a Debian minbase with busybox, fio and the agent of benchmarks/vmimage/, built by `lazyctr
build`; see benchmarks/vmguest.py) runs three ways, each running the same agent on the same files:
  - native: the image's extracted files, `chroot` (the baseline of every metric);
  - container: `lazyctr run --rm` of the image (overlay driver);
  - vm: QEMU (microvm machine, the Debian kernel, an initramfs loading virtio and ext4) whose root is
    the image's files made into an ext4 disk, read-only; q35 is timed beside microvm at startup.
Measured for each: time from start to the agent's first line (it reads back a marker written into the
image at build time); memory of 1..N idle guests (host PSS and RSS: QEMU's process; the container's
cgroup v1 memory usage plus its supervisor, the `lazyctr run` process; the native agent's processes);
fio (sequential and random read and write, O_DIRECT) in 1..N concurrent guests, each on its own file
system (the VM's own ext4 disk file, the container's overlay upper, a native directory), summed;
TCP RTT and throughput to a peer network namespace (tap for the VM, veth for the others); the time of
a fixed compute job (sha256 of zeros). Output: results.json, report.md with the seed's figures beside
ours, and PNG plots (with matplotlib). Needs root and qemu-system-x86.

Acceleration: KVM where /dev/kvm runs a stock kernel, else TCG (QEMU's emulator), said in the report.
A /dev/kvm served by kvm_pvm (nested "PVM" virtualisation, as on some cloud sandboxes) only boots
kernels built as PVM guests: the Debian kernel hangs there, so `auto` picks TCG on such a host.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import (
    SOURCE_ROOT,
    BenchError,
    base_tarball,
    lazyctr,
    rotating_rounds,
    unmount_under,
    unwind_on_sigterm,
)
from benchmarks.vmguest import (
    Guest,
    VmSetup,
    build_initramfs,
    find_kernel,
    make_disk,
    qemu_argv,
    tree_size_mb,
    write_context,
)
from runtime import syscalls as sc

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("native", "container", "vm")
STARTUP_KINDS = ("native", "container", "vm", "vm-q35")
FIO_WORKLOADS = ("read", "write", "randread", "randwrite")
PREFIX = "lzvm"  # every namespace, interface, temporary directory and container of the suite
IMAGE = "lzvm/guest:1"
PEER_IP = {"vm": "10.79.1.1", "container": "10.79.2.1", "native": "10.79.3.1"}
GUEST_IP = {"vm": "10.79.1.2", "container": "10.79.2.2", "native": "10.79.3.2"}
RTT_PINGS = 200
JOB_TIMEOUT = 900.0
SEED = {  # the seed study's figures (one container and one VM of the same set-up)
    "startup": "VMs 50-100x slower",
    "memory": "containers 11-60x smaller",
    "cpu": "2-22% lower in VMs",
    "disk": "lower in VMs, more so as guests grow (Filebench)",
    "rtt": "higher in VMs",
}
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


@dataclass
class Config:
    guests: list[int]
    runs: int
    out: Path
    cache: Path
    qemu: str
    accel: str  # auto, kvm or tcg
    cpu_mb: int
    fio_mb: int
    fio_seconds: int
    net_mb: int


def make_config(
    guests: str,
    runs: int,
    out: Path,
    cache: Path,
    qemu: str,
    accel: str,
    cpu_mb: int,
    fio_mb: int,
    fio_seconds: int,
    net_mb: int,
) -> Config:
    """Check every option before anything is made."""
    try:
        counts = sorted({int(part) for part in guests.split(",") if part.strip()})
    except ValueError:
        raise BenchError(f"--guests: expected numbers separated by commas, got {guests!r}") from None
    if not counts or counts[0] < 1 or counts[-1] > 64:
        raise BenchError(f"--guests: each count must be 1..64, got {guests!r}")
    for name, value in (("--runs", runs), ("--cpu-mb", cpu_mb), ("--fio-mb", fio_mb)):
        if value < 1:
            raise BenchError(f"{name} must be at least 1, got {value}")
    for name, value in (("--fio-seconds", fio_seconds), ("--net-mb", net_mb)):
        if value < 1:
            raise BenchError(f"{name} must be at least 1, got {value}")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} exists and is not a directory")
    if accel not in ("auto", "kvm", "tcg"):
        raise BenchError(f"--accel must be auto, kvm or tcg, got {accel!r}")
    return Config(counts, runs, out, cache, qemu, accel, cpu_mb, fio_mb, fio_seconds, net_mb)


def find_qemu(qemu: str) -> str:
    found = shutil.which(qemu)
    if found is None:
        raise BenchError(f"qemu not found: {qemu!r} (apt-get install qemu-system-x86, or set LAZYCTR_QEMU)")
    return found


def choose_accel(requested: str) -> tuple[str, str]:
    """(kvm or tcg, why) for `requested` (auto, kvm, tcg)."""
    if requested == "tcg":
        return "tcg", "TCG (QEMU's emulator), as asked"
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        usable = ""
    except OSError as e:
        usable = f"/dev/kvm cannot be opened ({e.strerror})"
    pvm_only = Path("/sys/module/kvm_pvm").is_dir() and not any(
        Path(f"/sys/module/{m}").is_dir() for m in ("kvm_intel", "kvm_amd")
    )
    if requested == "kvm":
        if usable:
            raise BenchError(f"no KVM here: {usable} (try --accel tcg)")
        return "kvm", "KVM, as asked" + (" (kvm_pvm: only PVM guest kernels boot)" if pvm_only else "")
    if usable:
        return "tcg", f"TCG: {usable}"
    if pvm_only:
        return "tcg", "TCG: /dev/kvm is kvm_pvm here, which boots only PVM guest kernels, not Debian's"
    return "kvm", "KVM"


# -- the machine: processes, memory, namespaces ---------------------------------------------------


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children(p)
    return tree


def pss_rss(pids: Sequence[int]) -> tuple[int, int]:
    """Summed PSS and RSS (bytes) of `pids`, from smaps_rollup."""
    pss = rss = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1]) * 1024
    return pss, rss


def memory_cgroup(pid: int) -> Path | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return MEMORY_CGROUPS / path.lstrip("/")
    return None


def guest_memory(kind: str, guest: Guest) -> dict[str, int]:
    """What one idle guest costs the host.

    vm: QEMU's process. container: the `lazyctr run` process (its supervisor) plus the container's
    memory cgroup usage (its processes' memory and the page cache charged to them). native: the agent.
    """
    tree = process_tree(guest.proc.pid)
    if kind != "container":
        pss, rss = pss_rss(tree)
        return {"pss": pss, "rss": rss}
    supervisor_pss, supervisor_rss = pss_rss([guest.proc.pid])
    inside = [p for p in tree if p != guest.proc.pid]
    own = [c for c in (memory_cgroup(p) for p in inside) if c is not None and c != MEMORY_CGROUPS]
    usage = int((own[0] / "memory.usage_in_bytes").read_text()) if own else 0
    inside_pss, inside_rss = pss_rss(inside)
    return {
        "pss": supervisor_pss + usage,
        "rss": supervisor_rss + usage,
        "supervisor_pss": supervisor_pss,
        "cgroup_usage": usage,
        "processes_pss": inside_pss,
        "processes_rss": inside_rss,
    }


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


@dataclass
class Network:
    """A peer namespace joined to each guest's network: a tap (VM), veths (container, native)."""

    tag: str

    @property
    def peer(self) -> str:
        return f"{PREFIX}-{self.tag}-peer"

    def namespace(self, kind: str) -> str:
        return self.peer if kind == "vm" else f"{PREFIX}-{self.tag}-{kind[:3]}"

    def tap(self) -> str:
        return f"{PREFIX}{self.tag}t0"

    def create(self) -> None:
        _ip("netns", "add", self.peer)
        _ip("-n", self.peer, "link", "set", "lo", "up")
        _ip("-n", self.peer, "tuntap", "add", "dev", self.tap(), "mode", "tap")
        _ip("-n", self.peer, "addr", "add", f"{PEER_IP['vm']}/24", "dev", self.tap())
        _ip("-n", self.peer, "link", "set", self.tap(), "up")
        for kind in ("container", "native"):
            ns, ours, theirs = (
                self.namespace(kind),
                f"{PREFIX}{self.tag}{kind[0]}0",
                f"{PREFIX}{self.tag}{kind[0]}1",
            )
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("link", "add", ours, "netns", self.peer, "type", "veth", "peer", "name", theirs, "netns", ns)
            _ip("-n", self.peer, "addr", "add", f"{PEER_IP[kind]}/24", "dev", ours)
            _ip("-n", self.peer, "link", "set", ours, "up")
            _ip("-n", ns, "addr", "add", f"{GUEST_IP[kind]}/24", "dev", theirs)
            _ip("-n", ns, "link", "set", theirs, "up")

    def remove(self) -> None:
        with contextlib.suppress(BenchError):
            _ip("-n", self.peer, "link", "del", self.tap())  # a persistent tap outlives nothing else
        for ns in (self.namespace("container"), self.namespace("native"), self.peer):
            with contextlib.suppress(BenchError):
                _ip("netns", "del", ns)

    def socket(self) -> socket.socket:
        """A TCP socket in the peer namespace (setns moves only the calling thread; the socket stays)."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def body() -> None:
            try:
                with open(f"/run/netns/{self.peer}", "rb") as ns:
                    sc.setns(ns.fileno(), sc.CLONE_NEWNET)
                made.append(socket.socket())
            except BaseException as e:
                failed.append(e)

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        if failed:
            raise BenchError(f"cannot open a socket in {self.peer}: {failed[0]}")
        return made[0]


def connect(network: Network, kind: str, port: int, deadline: float) -> socket.socket:
    """Connect from the peer to the guest's port, retrying while its server starts."""
    while True:
        sock = network.socket()
        sock.settimeout(30)
        try:
            sock.connect((GUEST_IP[kind], port))
            return sock
        except OSError as e:
            sock.close()
            if time.monotonic() > deadline:
                raise BenchError(f"{kind}: port {port} of {GUEST_IP[kind]} does not answer: {e}") from None
            time.sleep(0.1)


def measure_network(network: Network, kind: str, net_mb: int) -> dict[str, float]:
    """Median TCP RTT of 1-byte pings to the echo port; throughput of the guest sending net_mb MiB."""
    deadline = time.monotonic() + 60
    with connect(network, kind, 7, deadline) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for n in range(RTT_PINGS + 10):
            started = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise BenchError(f"{kind}: the echo server answered something else")
            if n >= 10:  # the first pings warm up ARP, caches and TCP
                rtts.append(time.perf_counter() - started)
    with connect(network, kind, 9, deadline) as sock:
        received = 0
        started = time.perf_counter()
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        elapsed = time.perf_counter() - started
    if received != net_mb << 20:
        raise BenchError(f"{kind}: received {received} bytes of {net_mb << 20}")
    return {"rtt_s": statistics.median(rtts), "throughput_bps": received * 8 / elapsed}


# -- the three ways of running the agent ----------------------------------------------------------


@dataclass
class Bench:
    config: Config
    work: Path
    store: Path
    tree: Path  # the image's files, extracted: native runs here (chroot)
    setup: VmSetup
    network: Network | None = None

    def guest(
        self,
        kind: str,
        index: int,
        args: Sequence[str],
        *,
        networked: bool = False,
        scratch: Path | None = None,
    ) -> Guest:
        name = f"{kind} {index}"
        if kind in ("vm", "vm-q35"):
            machine = "q35" if kind == "vm-q35" else "microvm"
            argv = qemu_argv(
                self.setup,
                machine,
                [*args, *([f"ip={GUEST_IP['vm']}/24"] if networked else [])],
                scratch=scratch,
                tap=self.network.tap() if networked and self.network else None,
            )
            if networked and self.network:
                argv = ["nsenter", f"--net=/run/netns/{self.network.peer}", *argv]
            return Guest(argv, name).start()
        if kind == "container":
            argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(self.store), "run", "--rm"]
            argv += ["--name", f"{PREFIX}-{os.getpid()}-{index}", "--driver", "overlay"]
            argv += ["--network", "host" if networked else "none", IMAGE, "/lzv/agent", *args]
        else:  # native: the same files, chroot'ed, with /proc and /dev as a runtime would give
            script = (
                'mount --make-rprivate / && mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev"'
                ' && shift && exec chroot "$@"'
            )
            argv = [
                "unshare",
                "-m",
                "sh",
                "-c",
                script,
                "-",
                str(self.tree),
                str(self.tree),
                "/lzv/agent",
                *args,
            ]
        if networked and self.network:
            argv = ["nsenter", f"--net=/run/netns/{self.network.namespace(kind)}", *argv]
        return Guest(argv, name, env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)}).start()


def parse_fio(lines: Sequence[str]) -> dict[str, float]:
    """Bandwidth (bytes/s) per workload from the agent's `fio WORKLOAD TERSE-LINE` lines."""
    found: dict[str, float] = {}
    for line in lines:
        parts = line.split(" ", 2)
        if parts[0] != "fio" or len(parts) < 3:
            continue
        fields = parts[2].split(";")
        if len(fields) < 48:
            raise BenchError(f"fio {parts[1]} failed: {parts[2][:200]}")
        kib = float(fields[47] if "write" in parts[1] else fields[6])  # terse v3: read bw 7th, write 48th
        found[parts[1]] = kib * 1024
    if set(found) != set(FIO_WORKLOADS):
        raise BenchError(f"fio reported {sorted(found)} of {list(FIO_WORKLOADS)}")
    return found


def parse_cpu(lines: Sequence[str]) -> float:
    for line in lines:
        if line.startswith("cpu "):
            _, start, end, _sum = line.split()
            return float(end) - float(start)
    raise BenchError(f"the compute job printed no result: {lines}")


# -- the suite ------------------------------------------------------------------------------------


def prepare(config: Config, work: Path, qemu: str, accel: str) -> tuple[Bench, dict[str, Any]]:
    """Build the image, extract its files, make the VM's root disk and initramfs."""
    kernel = find_kernel()
    store = work / "store"
    started = time.monotonic()
    base = base_tarball("debian", config.cache / "vm-publisher")
    lazyctr(store, "import", str(base), "debian:minbase")
    marker = write_context(work / "context")
    lazyctr(store, "build", "--progress", "plain", "-t", IMAGE, str(work / "context"))
    build_s = time.monotonic() - started
    mounted, tree = work / "mnt", work / "tree"
    mounted.mkdir()
    lazyctr(store, "mount", IMAGE, str(mounted))
    try:
        subprocess.run(["cp", "-a", f"{mounted}/.", str(tree)], check=True, capture_output=True)
    finally:
        lazyctr(store, "umount", str(mounted))
    size_mb = tree_size_mb(tree)
    root_disk = make_disk(tree, work / "root.ext4", size_mb * 5 // 4 + 64)
    initramfs = build_initramfs(kernel, work / "initramfs.gz")
    info = {
        "marker": marker,
        "image_files_mb": size_mb,
        "kernel": kernel.version,
        "build_s": build_s,
        "root_disk_mb": root_disk.stat().st_size >> 20,
    }
    bench = Bench(config, work, store, tree, VmSetup(qemu, accel, kernel, initramfs, root_disk))
    # The overlay driver extracts the image's layers on its first run, as the VM's disk was made above:
    # neither is part of a start.
    with guests_running([partial(bench.guest, "container", 0, ["ready"])]) as (guest,):
        guest.wait(JOB_TIMEOUT)
    return bench, info


@contextlib.contextmanager
def guests_running(starts: Sequence[Callable[[], Guest]]) -> Iterator[list[Guest]]:
    """Start every guest; each is stopped on the way out, whatever happens."""
    started: list[Guest] = []
    try:
        for start in starts:
            started.append(start())
        yield started
    finally:
        for guest in started:
            guest.stop()


def measure_startup(bench: Bench, results: dict[str, Any], marker: str) -> None:
    for n, kind in rotating_rounds(STARTUP_KINDS, bench.config.runs, lambda _k: True):
        with guests_running([partial(bench.guest, kind, 0, ["ready"])]) as (guest,):
            ready = guest.wait_ready()
            guest.wait(JOB_TIMEOUT)
        if guest.marker != marker:
            raise BenchError(f"{kind} read the marker {guest.marker!r}, not the image's {marker!r}")
        results["startup"].append({"kind": kind, "run": n, "ready_s": ready, "marker": guest.marker})
        print(f"startup {kind:10} run {n}: {ready:.3f} s", flush=True)


def measure_cpu(bench: Bench, results: dict[str, Any]) -> None:
    for n, kind in rotating_rounds(KINDS, bench.config.runs, lambda _k: True):
        job = ["cpu", str(bench.config.cpu_mb)]
        with guests_running([partial(bench.guest, kind, 0, job)]) as (guest,):
            seconds = parse_cpu(guest.wait(JOB_TIMEOUT))
        rate = (bench.config.cpu_mb << 20) / seconds if seconds > 0 else None
        results["cpu"].append({"kind": kind, "run": n, "seconds": seconds, "bytes_per_s": rate})
        print(f"cpu     {kind:10} run {n}: {seconds:.2f} s", flush=True)


def measure_net(bench: Bench, results: dict[str, Any]) -> None:
    network = Network(str(os.getpid() % 100000))
    bench.network = network
    try:
        network.create()
        for n, kind in rotating_rounds(KINDS, bench.config.runs, lambda _k: True):
            args = ["serve", str(bench.config.net_mb)]
            with guests_running([partial(bench.guest, kind, 0, args, networked=True)]) as (guest,):
                guest.wait_ready()
                figures = measure_network(network, kind, bench.config.net_mb)
            results["network"].append({"kind": kind, "run": n, **figures})
            print(
                f"network {kind:10} run {n}: rtt {figures['rtt_s'] * 1e6:.0f} us,"
                f" {figures['throughput_bps'] / 1e6:.0f} Mbit/s",
                flush=True,
            )
    finally:
        bench.network = None
        network.remove()


def measure_memory(bench: Bench, results: dict[str, Any], count: int) -> None:
    for kind in KINDS:
        starts = [partial(bench.guest, kind, i, ["serve", "1"]) for i in range(count)]
        with guests_running(starts) as guests:
            for guest in guests:
                guest.wait_ready()
            time.sleep(1.0)  # the last one's start-up work settles
            each = [guest_memory(kind, guest) for guest in guests]
        total = {key: sum(e.get(key, 0) for e in each) for key in each[0]}
        results["memory"].append({"kind": kind, "guests": count, **total})
        print(f"memory  {kind:10} x{count:<3}: pss {total['pss'] / 2**20:.1f} MiB", flush=True)


def measure_disk(bench: Bench, results: dict[str, Any], count: int, scratch: list[Path]) -> None:
    config = bench.config
    for kind in KINDS:
        starts = []
        for i in range(count):
            where = "/lzv/scratch" if kind != "native" else f"/lzv/scratch/n{i}"
            if kind == "native":
                (bench.tree / "lzv" / "scratch" / f"n{i}").mkdir(exist_ok=True)
            args = ["fio", where, str(config.fio_mb), str(config.fio_seconds)]
            disk = scratch[i] if kind == "vm" else None
            starts.append(partial(bench.guest, kind, i, args, scratch=disk))
        with guests_running(starts) as guests:
            each = [parse_fio(guest.wait(JOB_TIMEOUT)) for guest in guests]
        total = {w: sum(e[w] for e in each) for w in FIO_WORKLOADS}
        results["disk"].append({"kind": kind, "guests": count, **total})
        line = ", ".join(f"{w} {total[w] / 2**20:.0f}" for w in FIO_WORKLOADS)
        print(f"disk    {kind:10} x{count:<3}: {line} MiB/s", flush=True)


def run_suite(config: Config) -> Path:
    """Run every measurement; write results.json, report.md and plots to config.out."""
    qemu = find_qemu(config.qemu)
    accel, why = choose_accel(config.accel)
    if os.geteuid() != 0:
        raise BenchError("the vm suite needs root (namespaces, cgroups, tap devices)")
    unwind_on_sigterm()
    config.out.mkdir(parents=True, exist_ok=True)
    config.cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "config": {**asdict(config), "out": str(config.out), "cache": str(config.cache)},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "accel": accel,
        "accel_reason": why,
        "qemu": subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        "startup": [],
        "cpu": [],
        "network": [],
        "memory": [],
        "disk": [],
    }
    print(f"acceleration: {why}", flush=True)
    work = Path(os.environ.get("TMPDIR", "/var/tmp")) / f"{PREFIX}-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        bench, results["image"] = prepare(config, work, qemu, accel)
        measure_startup(bench, results, results["image"]["marker"])
        measure_cpu(bench, results)
        measure_net(bench, results)
        scratch = [
            make_disk(None, work / f"scratch-{i}.ext4", config.fio_mb * 2 + 64)
            for i in range(max(config.guests))
        ]
        for count in config.guests:
            measure_memory(bench, results, count)
            measure_disk(bench, results, count, scratch)
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return write_outputs(results, config.out)


# -- outputs --------------------------------------------------------------------------------------


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per kind (and per guest count), and the VM-to-container ratios of the seed's table."""

    def per_kind(section: str, key: str, kinds: Sequence[str] = KINDS) -> dict[str, float | None]:
        return {k: _median([s[key] for s in results[section] if s["kind"] == k]) for k in kinds}

    counts = sorted({s["guests"] for s in results["memory"]})

    def by_count(section: str, key: str) -> dict[str, dict[int, float]]:
        return {
            k: {s["guests"]: s[key] for s in results[section] if s["kind"] == k and key in s} for k in KINDS
        }

    memory = by_count("memory", "pss")
    disk = {w: by_count("disk", w) for w in FIO_WORKLOADS}
    return {
        "startup_s": per_kind("startup", "ready_s", STARTUP_KINDS),
        "cpu_s": per_kind("cpu", "seconds"),
        "rtt_s": per_kind("network", "rtt_s"),
        "throughput_bps": per_kind("network", "throughput_bps"),
        "memory_pss": memory,
        "memory_rss": by_count("memory", "rss"),
        "container_cgroup": by_count("memory", "cgroup_usage")["container"],
        "container_supervisor": by_count("memory", "supervisor_pss")["container"],
        "disk_bps": disk,
        "counts": counts,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def seed_table(table: dict[str, Any]) -> list[str]:
    """The seed's five metrics, its figures beside ours (VM against container, at the largest count)."""
    start = table["startup_s"]
    top = table["counts"][-1] if table["counts"] else None
    mem = table["memory_pss"]
    vm_mem = mem["vm"].get(top) if top else None
    ct_mem = mem["container"].get(top) if top else None
    ct_cgroup = table["container_cgroup"].get(top) if top else None
    cpu = table["cpu_s"]
    cpu_lower = None if not cpu["vm"] or not cpu["container"] else (1 - cpu["container"] / cpu["vm"]) * 100
    disk = table["disk_bps"]

    def disk_ratio(workload: str) -> str:
        one, many = (disk[workload][k] for k in ("vm", "container")), None
        vm, ct = one
        low = _ratio(vm.get(table["counts"][0]), ct.get(table["counts"][0])) if table["counts"] else None
        many = _ratio(vm.get(top), ct.get(top)) if top else None
        return f"{workload} {_fmt(low)}x" + (
            f" (x{top}: {_fmt(many)}x)" if top and top != table["counts"][0] else ""
        )

    return [
        _row(
            ["metric", "seed (VM vs container)", "ours: VM / container", "container / native", "VM / native"]
        ),
        _row(["---"] * 5),
        _row(
            [
                "startup (time to the agent's first line)",
                SEED["startup"],
                f"{_fmt(_ratio(start['vm'], start['container']), 1)}x slower",
                f"{_fmt(_ratio(start['container'], start['native']), 1)}x",
                f"{_fmt(_ratio(start['vm'], start['native']), 1)}x",
            ]
        ),
        _row(
            [
                f"memory, {top} idle guest(s), host PSS",
                SEED["memory"],
                f"containers {_fmt(_ratio(vm_mem, ct_mem), 1)}x smaller (cgroup alone:"
                f" {_fmt(_ratio(vm_mem, ct_cgroup), 1)}x)",
                f"{_fmt(_ratio(ct_mem, mem['native'].get(top)), 1)}x",
                f"{_fmt(_ratio(vm_mem, mem['native'].get(top)), 1)}x",
            ]
        ),
        _row(
            [
                "CPU (sha256 of zeros, time)",
                SEED["cpu"],
                f"{_fmt(cpu_lower, 1)}% lower in the VM",
                f"{_fmt(_ratio(cpu['native'], cpu['container']), 3)} of native",
                f"{_fmt(_ratio(cpu['native'], cpu['vm']), 3)} of native",
            ]
        ),
        _row(
            [
                "disk I/O (fio, O_DIRECT, throughput)",
                SEED["disk"],
                ", ".join(disk_ratio(w) for w in FIO_WORKLOADS),
                ", ".join(
                    f"{w} {_fmt(_ratio(disk[w]['container'].get(top), disk[w]['native'].get(top)))}x"
                    for w in FIO_WORKLOADS
                ),
                ", ".join(
                    f"{w} {_fmt(_ratio(disk[w]['vm'].get(top), disk[w]['native'].get(top)))}x"
                    for w in FIO_WORKLOADS
                ),
            ]
        ),
        _row(
            [
                "network RTT (TCP, 1 byte) / throughput",
                SEED["rtt"],
                f"RTT {_fmt(_ratio(table['rtt_s']['vm'], table['rtt_s']['container']), 1)}x, throughput"
                f" {_fmt(_ratio(table['throughput_bps']['vm'], table['throughput_bps']['container']))}x",
                f"RTT {_fmt(_ratio(table['rtt_s']['container'], table['rtt_s']['native']), 1)}x",
                f"RTT {_fmt(_ratio(table['rtt_s']['vm'], table['rtt_s']['native']), 1)}x",
            ]
        ),
    ]


def render_report(results: dict[str, Any], plots: Sequence[str] = ()) -> str:
    table = summary(results)
    config = results["config"]
    image = results.get("image", {})
    lines = [
        "# Containers against virtual machines (`lazyctr bench vm`)",
        "",
        f"Run {results['started']} to {results.get('finished', '?')}; {results['qemu']};"
        f" acceleration: {results['accel_reason']}. Kernel {image.get('kernel', '?')}; the image's files:"
        f" {image.get('image_files_mb', '?')} MiB (Debian minbase, busybox, fio); VM: 1 vCPU, 256 MiB,"
        f" microvm unless said. Runs: {config['runs']}; guests: {', '.join(map(str, config['guests']))}.",
        "",
        "## The seed's five metrics",
        "",
        *seed_table(table),
        "",
    ]
    if results["accel"] == "tcg":
        lines += [
            "The VM ran under TCG, QEMU's emulator, not KVM: its startup, CPU and I/O figures are an"
            " emulated machine's and far slower than a KVM guest's; its memory is QEMU's plus TCG's"
            " translation cache.",
            "",
        ]
    startup = table["startup_s"]
    lines += [
        "## Startup (median, s)",
        "",
        _row(["native", "container", "vm (microvm)", "vm (q35)", "microvm / q35"]),
        _row(["---"] * 5),
        _row(
            [
                *(_fmt(startup[k], 3) for k in STARTUP_KINDS),
                _fmt(_ratio(startup["vm"], startup["vm-q35"])),
            ]
        ),
        "",
        "## Memory (host PSS of all guests, MiB; container: cgroup usage + its `lazyctr run` supervisor)",
        "",
        _row(["guests", "native", "container", "(cgroup)", "(supervisor)", "vm", "vm / container"]),
        _row(["---"] * 7),
    ]
    mem = table["memory_pss"]
    for count in table["counts"]:
        lines.append(
            _row(
                [
                    str(count),
                    *(
                        _fmt((v or 0) / 2**20, 1)
                        for v in (
                            mem["native"].get(count),
                            mem["container"].get(count),
                            table["container_cgroup"].get(count),
                            table["container_supervisor"].get(count),
                            mem["vm"].get(count),
                        )
                    ),
                    _fmt(_ratio(mem["vm"].get(count), mem["container"].get(count)), 1),
                ]
            )
        )
    lines += ["", "## Disk I/O (fio, summed over the guests, MiB/s)", ""]
    lines.append(_row(["guests", "workload", "native", "container", "vm", "vm / container"]))
    lines.append(_row(["---"] * 6))
    for count in table["counts"]:
        for w in FIO_WORKLOADS:
            values = [table["disk_bps"][w][k].get(count) for k in KINDS]
            lines.append(
                _row(
                    [
                        str(count),
                        w,
                        *(_fmt((v or 0) / 2**20, 1) for v in values),
                        _fmt(_ratio(values[2], values[1])),
                    ]
                )
            )
    lines += [
        "",
        "## Network to a peer namespace (median) and CPU (median)",
        "",
        _row(["", "native", "container", "vm"]),
        _row(["---"] * 4),
        _row(["TCP RTT (us)", *(_fmt((table["rtt_s"][k] or 0) * 1e6, 0) for k in KINDS)]),
        _row(["throughput (Mbit/s)", *(_fmt((table["throughput_bps"][k] or 0) / 1e6, 0) for k in KINDS)]),
        _row([f"sha256 of {config['cpu_mb']} MiB (s)", *(_fmt(table["cpu_s"][k], 2) for k in KINDS)]),
        "",
        "Native: the image's files under chroot. Network: veth (native, container) or tap (VM) to a peer"
        " namespace; the VM's tap is served by QEMU's userspace virtio-net (no vhost). Disk: each guest"
        " writes its own file system (VM: an ext4 disk file, cache=none; container: its overlay upper;"
        " native: a directory), all on the host's file system; guests start fio as they come up, so their"
        " runs overlap but are not aligned.",
    ]
    if plots:
        lines += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots)]
    return "\n".join(lines) + "\n"


def write_outputs(results: dict[str, Any], out: Path) -> Path:
    _write(out / "results.json", json.dumps(results, indent=2) + "\n")
    try:
        plots = [p.name for p in draw_plots(results, out)]
    except ImportError:
        plots = []
        print("no plots: matplotlib is not installed (pip install 'lazyctr[bench]')", flush=True)
    report = out / "report.md"
    _write(report, render_report(results, plots))
    return report


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def draw_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Startup per kind; memory and disk throughput as guests grow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary(results)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    startup = table["startup_s"]
    ax.bar(list(STARTUP_KINDS), [startup[k] or 0 for k in STARTUP_KINDS], color=["C2", "C0", "C1", "C3"])
    ax.set_yscale("log")
    ax.set(ylabel="start to the agent's first line (s, median, log)", title="Startup")
    paths.append(_save(fig, out / "startup.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in KINDS:
        counts = sorted(table["memory_pss"][k])
        ax.plot(counts, [table["memory_pss"][k][c] / 2**20 for c in counts], marker="o", label=k)
    ax.set(xlabel="idle guests", ylabel="host PSS (MiB, all guests)", title="Memory as guests grow")
    ax.set_yscale("log")
    ax.legend()
    paths.append(_save(fig, out / "memory.png"))

    fig, axes = plt.subplots(1, len(FIO_WORKLOADS), figsize=(13, 3.6))
    for ax, w in zip(axes, FIO_WORKLOADS, strict=True):
        for k in KINDS:
            counts = sorted(table["disk_bps"][w][k])
            ax.plot(counts, [table["disk_bps"][w][k][c] / 2**20 for c in counts], marker="o", label=k)
        ax.set(xlabel="guests", title=w)
    axes[0].set_ylabel("fio throughput, summed (MiB/s)")
    axes[-1].legend()
    paths.append(_save(fig, out / "disk.png"))
    return paths


def _save(fig: Figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
