"""The fleet suite (`lazyctr bench fleet --nodes 32`): N nodes start the same image at the same moment.

The network (benchmarks/fleetnet.py) is a star of network namespaces carried by one switch process:
the registry (`lazyctr serve`) behind its shaped uplink, a pull-through proxy (`lazyctr serve --proxy
UPSTREAM`, when this checkout has it) behind a rack-local link, and N nodes, each behind a link shaped
like the hello suite's (per-node rate and RTT), each with its own lazyctr root (--root) and the same
image to start: benchmarks/fleetimage, the busybox base and 8 MB of data of which the probe reads one
megabyte. Its CMD is its readiness probe, as in the hello suite: ready = from the barrier to the exit
of `lazyctr run --rm`, after `lazyctr pull`, the probe having exited 0.

Per mode (lazy: `pull` then `run --driver lazy`; service: the same, each node with `lazyctr service`
resident; eager: `pull --eager` then `run --driver overlay`)
and per way (direct to the registry; through a fresh proxy, its cache cold), one node alone first (the
baseline of the same run), then all N released at once by a barrier, from cold roots and a dropped
page cache. Measured: each node's time to ready, the bytes the registry sent (its link's counter),
the bytes each node received, and memory: per node, a cgroup v1 memory group holding its CLI
processes and the lazyfs daemon they start (the container moves to a cgroup of its own), sampled
every 200 ms for the peak of their summed RSS; the peak of that sum over all nodes at one instant,
the most lazy mounts alive at once and the fall of the machine's MemAvailable; after a lazy scenario,
every node holds one running container (so all N lazy mounts live at once) for their RSS and PSS.
Per node also the CPU time of those processes (cpuacct), beside the registry's, the proxy's, the
switch's and the whole machine's: on a machine of two cores, N nodes' CPU time bounds their makespan.

Output in --out: results.json, report.md and PNG plots. Needs root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchError,
    base_tarball,
    compile_sources,
    drop_caches,
    lazyctr,
    markdown_row,
    save_figure,
    save_partial,
    shielded,
    stderr_tail,
    stop,
    unmount_under,
    unwind_on_sigterm,
    write_outputs,
)
from benchmarks.fleetnet import MAX_NODES, PREFIX, Star, address, star
from benchmarks.link import LinkError, LinkSpec, LinkSpecError, parse_link_spec
from lazyfs.host import mounts, process_alive
from lazyfs.service import ask_alive, socket_path
from runtime.state import containers_dir

IMAGE_DIR = Path(__file__).with_name("fleetimage")
IMAGE = "fleet/app:1"
MODES = ("lazy", "service", "eager")
LAZY_MODES = ("lazy", "service")
PORT = 5000
RUN_TIMEOUT = 600
SAMPLE_EVERY = 0.2
CGROUPS = Path("/sys/fs/cgroup")
NOT_AVAILABLE = "proxy: not available (this lazyctr's `serve` has no --proxy)"


@dataclass
class Config:
    nodes: int
    modes: list[str]
    proxy: bool
    link: LinkSpec  # each node's
    uplink: LinkSpec  # the registry's
    proxy_link: LinkSpec  # the proxy's, rack-local
    out: Path
    cache: Path


def make_config(
    nodes: int, modes: str, proxy: bool, link: str, uplink: str, proxy_link: str, out: Path, cache: Path
) -> Config:
    """Check every option before anything is made."""
    if not 1 <= nodes <= MAX_NODES:
        raise BenchError(f"--nodes must be between 1 and {MAX_NODES}")
    chosen: list[str] = []
    for mode in (part.strip() for part in modes.split(",")):
        if mode and mode not in MODES:
            raise BenchError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        if mode and mode not in chosen:
            chosen.append(mode)
    if not chosen:
        raise BenchError("no mode given")
    specs = []
    for option, text in (("--link", link), ("--uplink", uplink), ("--proxy-link", proxy_link)):
        try:
            specs.append(parse_link_spec(text))
        except LinkSpecError as e:
            raise BenchError(f"bad {option} {text!r}: {e}") from None
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a directory")
    return Config(nodes, chosen, proxy, specs[0], specs[1], specs[2], out, cache)


def proxy_available() -> bool:
    """Whether this checkout's `lazyctr serve` has the pull-through mode (`--proxy UPSTREAM`)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lazyctr.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return proc.returncode == 0 and "--proxy" in proc.stdout


# -- the image ----------------------------------------------------------------------------------


def prepare_image(cache: Path) -> tuple[Path, dict[str, Any]]:
    """The publisher store holding the fleet's image (built once per context), and its sizes."""
    publisher = cache / "fleet-publisher"
    stamp = cache / "fleet-image.digest"
    digest = hashlib.sha256()
    for path in sorted(IMAGE_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    if not stamp.exists() or stamp.read_text() != digest.hexdigest():
        print("building the fleet's image...", flush=True)
        lazyctr(publisher, "import", str(base_tarball("busybox", publisher)), "busybox:base")
        lazyctr(publisher, "build", "--progress", "plain", "-t", IMAGE, str(IMAGE_DIR))
        stamp.write_text(digest.hexdigest())
    data = json.loads(lazyctr(publisher, "inspect", "--json", IMAGE))
    config = data.get("Config") or {}
    return publisher, {
        "ref": IMAGE,
        "size": int(data["Size"]),  # compressed layers: what an eager pull fetches
        "files_size": sum(int(layer.get("UncompressedFileSize") or 0) for layer in data["Layers"]),
        "layers": len(data["Layers"]),
        "probe": [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])],
    }


# -- registries -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serving(net: Star, name: str, storage: Path, log: Path, cpu: CpuGroup, *extra: str) -> Iterator[str]:
    """`lazyctr serve` in the namespace `name` on its address, its CPU time counted in `cpu`, until the
    block ends; yields host:port."""
    where = f"{address(name)}:{PORT}"
    argv = [sys.executable, "-m", "lazyctr.cli", "serve", "--storage", str(storage), "--addr", where, *extra]
    with open(log, "ab") as output:
        server = subprocess.Popen(
            cpu.prefix() + net.command(name, argv),
            stdout=output,
            stderr=output,
            cwd=Path(__file__).resolve().parents[1],
        )
    try:
        deadline = time.monotonic() + 30
        while not net.accepts(name, address(name), PORT):
            if time.monotonic() > deadline or server.poll() is not None:
                tail = stderr_tail(log.read_bytes()[-2000:]) if log.exists() else ""
                raise BenchError(f"`lazyctr serve` in {name} did not come up: {tail}")
            time.sleep(0.2)
        yield where
    finally:
        with shielded():
            stop(server)


# -- the nodes' processes: cgroups and memory ---------------------------------------------------


def remove_group(path: Path, patience: float = 5.0) -> None:
    """Remove a cgroup (v1) of ours; a process still in it (a daemon alive, a killed one still exiting)
    goes back to the root group of its hierarchy first."""
    deadline = time.monotonic() + patience
    while path.is_dir():
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                (path.parent / "cgroup.procs").write_text(pid)
        try:
            path.rmdir()
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)


def end_members(path: Path, patience: float = 5.0) -> None:
    """SIGKILL every process in the cgroup `path`, and wait (a while) until they are gone."""
    deadline = time.monotonic() + patience
    while True:
        try:
            pids = [int(pid) for pid in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def remove_stale_groups() -> None:
    """Remove the cgroups of fleet runs whose process died without cleaning up (SIGKILL)."""
    for kind in ("memory", "cpuacct"):
        hierarchy = CGROUPS / kind
        for path in hierarchy.glob(f"{PREFIX}*") if hierarchy.is_dir() else []:
            pid = path.name.removeprefix(PREFIX).split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                remove_group(path, patience=0)


JOIN = 'for g in "$@"; do [ "$g" = -- ] && break; echo $$ > "$g/cgroup.procs"; shift; done; shift; exec "$@"'


def joining(*groups: Path) -> list[str]:
    """An argv prefix that puts the command (and what it starts) into the cgroups `groups`."""
    return ["sh", "-c", JOIN, "sh", *map(str, groups), "--"]


class CpuGroup:
    """A cpuacct cgroup (v1) for a server: the CPU time its processes used, in seconds."""

    def __init__(self, name: str) -> None:
        self.path = CGROUPS / "cpuacct" / name
        self.path.mkdir()

    def prefix(self) -> list[str]:
        return joining(self.path)

    def seconds(self) -> float:
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def __enter__(self) -> CpuGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        remove_group(self.path)


def machine_busy() -> float:
    """CPU seconds this machine's CPUs have spent on anything but idling and waiting for I/O, so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class NodeGroups:
    """A memory and a cpuacct cgroup (v1) per node of one scenario, and a sampler of their RSS.

    Every 200 ms: per node, the summed VmRSS of its processes (its peak is the node's figure); their
    sum over all nodes (its peak: what N nodes hold at once); the lazy (FUSE) mounts below `work`;
    the machine's MemAvailable (its lowest point).
    """

    def __init__(self, tag: str, nodes: Sequence[str], work: Path) -> None:
        self.nodes = list(nodes)
        self.work = str(work)
        self.groups: dict[str, dict[str, Path]] = {}
        for node in self.nodes:
            paths = {kind: CGROUPS / kind / f"{tag}-{node}" for kind in ("memory", "cpuacct")}
            for path in paths.values():
                path.mkdir()
            self.groups[node] = paths
        self.rss_peak = dict.fromkeys(self.nodes, 0)
        self.total_peak = 0
        self.mounts_peak = 0
        self.available_before = _mem_available()
        self.available_low = self.available_before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="fleet-memory", daemon=True)
        self._thread.start()

    def prefix(self, node: str) -> list[str]:
        """An argv prefix that puts the command (and what it starts) into the node's groups."""
        return joining(self.groups[node]["memory"], self.groups[node]["cpuacct"])

    def cpu_ns(self, node: str) -> int | None:
        """The CPU time the node's processes have used so far (since `reset_cpu`)."""
        try:
            return int((self.groups[node]["cpuacct"] / "cpuacct.usage").read_text())
        except (OSError, ValueError):
            return None

    def reset_cpu(self) -> None:
        """Count the nodes' CPU time from now on."""
        for paths in self.groups.values():
            (paths["cpuacct"] / "cpuacct.usage").write_text("0\n")

    def memory_now(self, node: str) -> tuple[int, int]:
        """The summed RSS and PSS (a shared page divided among its users) of the node's processes."""
        rss = pss = 0
        for pid in self._pids(node):
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        return rss, pss

    def _pids(self, node: str) -> list[int]:
        try:
            return [int(p) for p in (self.groups[node]["memory"] / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            total = 0
            for node in self.nodes:
                rss = 0
                for pid in self._pids(node):
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                            if line.startswith("VmRSS:"):
                                rss += int(line.split()[1]) * 1024
                self.rss_peak[node] = max(self.rss_peak[node], rss)
                total += rss
            self.total_peak = max(self.total_peak, total)
            lazy = [m for m in mounts() if m.fstype.startswith("fuse") and m.point.startswith(self.work)]
            self.mounts_peak = max(self.mounts_peak, len(lazy))
            self.available_low = min(self.available_low, _mem_available())

    def close(self) -> dict[str, dict[str, int]]:
        """Per node: rss_peak and cgroup_peak (memory.max_usage_in_bytes); the groups go, and
        every process still in them: nothing of a node outlives its scenario (a lazyfs daemon or a
        detached supervisor of an interrupted start would, in sessions of their own)."""
        self._stop.set()
        self._thread.join()
        for node in self.nodes:
            end_members(self.groups[node]["memory"])
        figures: dict[str, dict[str, int]] = {}
        for node, paths in self.groups.items():
            figures[node] = {"rss_peak": self.rss_peak[node]}
            with contextlib.suppress(OSError, ValueError):
                peak = (paths["memory"] / "memory.max_usage_in_bytes").read_text()
                figures[node]["cgroup_peak"] = int(peak)
            for path in paths.values():
                remove_group(path)
        return figures


def _mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


# -- one scenario: N nodes at a barrier -------------------------------------------------------------


class Commands:
    """The commands the nodes' threads run, each in a session of its own, so that an interrupted
    scenario (Ctrl-C, SIGTERM) can end them all before its namespaces and mounts go."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()
        self.stopped = False

    def run(self, argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
        with self.lock:
            if self.stopped:
                raise RuntimeError("interrupted")
            proc = subprocess.Popen(
                list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, start_new_session=True
            )
            self.live.add(proc)
        try:
            out, err = proc.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            with self.lock:
                self.live.discard(proc)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            live = list(self.live)
        for proc in live:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)


def on_every_node(nodes: Sequence[str], life: Callable[[str], None], commands: Commands) -> None:
    """`life(node)` for every node at once, each in a thread of its own; returns when all have ended.
    Interrupted, it ends their `commands` first."""
    threads = [threading.Thread(target=life, args=(node,), name=f"fleet-{node}") for node in nodes]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:
        commands.stop()
        for thread in threads:
            thread.join()
        raise


def start_nodes(
    net: Star, nodes: Sequence[str], where: str, mode: str, work: Path, tag: str, servers: dict[str, CpuGroup]
) -> dict[str, Any]:
    """Every node pulls and runs `where`/IMAGE from a cold root, all released at once; their figures.

    Lazily, then every node also holds its mount (`hold_lazy_mounts`) for the memory of N at once.
    """
    ref = f"{where}/{IMAGE}"
    lazy = mode in LAZY_MODES
    pull = ["pull", "--insecure", *([] if lazy else ["--eager"]), ref]
    # No bridge: the fleet times images, not bridges and NAT (as benchmarks.common.lazyctr).
    run = ["run", "--rm", "--network", "none", "--driver", "lazy" if lazy else "overlay", ref]
    for node in nodes:
        (work / node).mkdir(parents=True)
    groups = NodeGroups(tag, nodes, work)
    services = resident_services(net, nodes, work, groups) if mode == "service" else contextlib.nullcontext()
    samples: dict[str, dict[str, Any]] = {node: {"node": node} for node in nodes}
    released: list[float] = []
    barrier = threading.Barrier(len(nodes), action=lambda: released.append(time.monotonic()))
    commands = Commands()

    def node_life(node: str) -> None:
        sample = samples[node]
        barrier.wait()
        started = released[0]
        done: dict[str, float] = {}
        try:
            for step, args in (("pull", pull), ("run", run)):
                proc = commands.run(
                    groups.prefix(node) + net.command(node, node_cli(work, node) + args), work
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"lazyctr {step} exited {proc.returncode}: {stderr_tail(proc.stderr)}")
                done[step] = time.monotonic() - started
            sample.update(ok=True, pull_s=done["pull"], run_s=done["run"] - done["pull"], ready_s=done["run"])
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as e:
            sample.update(ok=False, error=str(e).strip()[:300] or repr(e))

    try:
        with services:  # up and loaded before the baselines: a node's engine is resident
            drop_caches()
            before = net.counters()
            switch_before = net.stats()["cpu_seconds"]
            servers_before = {name: group.seconds() for name, group in servers.items()}
            busy_before = machine_busy()
            on_every_node(nodes, node_life, commands)
            wall = time.monotonic() - released[0]
            busy = machine_busy() - busy_before
            servers_cpu = {name: group.seconds() - servers_before[name] for name, group in servers.items()}
            after = net.counters()
            switch_cpu = net.stats()["cpu_seconds"] - switch_before
            cpu_at_ready = {node: groups.cpu_ns(node) for node in nodes}  # not the held mounts' starts
            held = hold_lazy_mounts(net, nodes, ref, work, groups, samples) if lazy else {}
    finally:
        with shielded():
            memory = groups.close()
    for node in nodes:
        samples[node]["received"] = after[node]["received_bytes"] - before[node]["received_bytes"]
        samples[node]["sent"] = after[node]["sent_bytes"] - before[node]["sent_bytes"]
        samples[node].update(memory[node])
        if cpu_at_ready[node] is not None:
            samples[node]["cpu_ns"] = cpu_at_ready[node]
    delta = {
        name: {key: after[name][key] - before[name][key] for key in after[name] if not key.startswith("peak")}
        for name in after
    }
    return {
        "nodes": [samples[node] for node in nodes],
        "registry_egress": delta["reg"]["sent_bytes"],
        "registry_ingress": delta["reg"]["received_bytes"],
        "proxy_egress": delta["proxy"]["sent_bytes"],
        "proxy_ingress": delta["proxy"]["received_bytes"],
        "dropped": sum(d["dropped_up"] + d["dropped_down"] for d in delta.values()),
        "switch_packets": sum(d["sent_packets"] for d in delta.values()),
        "switch_cpu_s": switch_cpu,
        "registry_cpu_s": servers_cpu.get("reg"),
        "proxy_cpu_s": servers_cpu.get("proxy"),
        "machine_busy_s": busy,
        "wall_s": wall,
        "rss_total_peak": groups.total_peak,
        "mounts_peak": groups.mounts_peak,
        "mem_available_drop": groups.available_before - groups.available_low,
        **held,
    }


@contextlib.contextmanager
def resident_services(net: Star, nodes: Sequence[str], work: Path, groups: NodeGroups) -> Iterator[None]:
    """`lazyctr service` resident on every node (in its namespace and groups), as a node's engine is
    before a rollout: up and loaded before the barrier (the CPU that took is not counted), stopped
    after. Its memory is the node's: it stays in the peaks."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for node in nodes:
            argv = groups.prefix(node) + net.command(node, [*node_cli(work, node), "service"])
            processes.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work)
            )
        deadline = time.monotonic() + 60
        for node, process in zip(nodes, processes, strict=True):
            while not ask_alive(socket_path(work / node / "root")):
                if process.poll() is not None or time.monotonic() > deadline:
                    ended = process.poll() is not None and process.stderr is not None
                    why = stderr_tail(process.stderr.read()) if ended and process.stderr else "timed out"
                    raise RuntimeError(f"the service of {node} did not come up: {why}")
                time.sleep(0.05)
        groups.reset_cpu()
        yield
    finally:
        with shielded():
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def node_cli(work: Path, node: str) -> list[str]:
    """The lazyctr CLI on the node's own root."""
    return [sys.executable, "-m", "lazyctr.cli", "--root", str(work / node / "root")]


def hold_lazy_mounts(
    net: Star,
    nodes: Sequence[str],
    ref: str,
    work: Path,
    groups: NodeGroups,
    samples: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Every node starts a container of the image that keeps running (`run -d`, lazily: its mount lives
    as long as the container); with all of them up, the memory of N lazy mounts and their supervisors
    is measured, then the containers are removed. The timed starts above end with their containers,
    so their mounts overlap only partly in time."""
    started: dict[str, str] = {}
    hold = ["run", "-d", "--rm", "--network", "none", "--driver", "lazy", ref, "sleep", str(RUN_TIMEOUT)]

    commands = Commands()

    def start(node: str) -> None:
        argv = groups.prefix(node) + net.command(node, node_cli(work, node) + hold)
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired, OSError):
            proc = commands.run(argv, work)
            if proc.returncode == 0 and proc.stdout.strip():
                started[node] = proc.stdout.decode().strip().splitlines()[-1]

    def remove(node: str) -> None:
        # Every container of the node's root: an interrupted `run -d` may have made one it never named.
        where = containers_dir(work / node / "root")
        ids = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
        if ids:
            argv = net.command(node, [*node_cli(work, node), "rm", "--force", *ids])
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                subprocess.run(argv, capture_output=True, timeout=RUN_TIMEOUT, cwd=work)

    try:
        on_every_node(nodes, start, commands)
        held = [m for m in mounts() if m.fstype.startswith("fuse") and m.point.startswith(str(work))]
        rss_total = pss_total = 0
        for node in nodes:
            rss, pss = groups.memory_now(node)
            samples[node].update(held_rss=rss, held_pss=pss)
            rss_total, pss_total = rss_total + rss, pss_total + pss
        available_drop = groups.available_before - _mem_available()
    finally:
        with shielded():
            on_every_node(nodes, remove, Commands())
    return {
        "held_containers": len(started),
        "held_mounts": len(held),
        "held_rss_total": rss_total,
        "held_pss_total": pss_total,
        "held_mem_available_drop": available_drop,
    }


def summarize(scenario: dict[str, Any]) -> dict[str, Any]:
    """p50, p99 and max of the nodes' time to ready; medians and maxima of their bytes, RSS and CPU."""
    ok = [n for n in scenario.get("nodes", []) if n.get("ok")]
    ready = sorted(n["ready_s"] for n in ok)
    figures: dict[str, Any] = {"ready_nodes": len(ok)}
    if ready:
        figures.update(
            ready_p50=statistics.median(ready),
            ready_p99=percentile(ready, 99),
            ready_max=ready[-1],
            ready_min=ready[0],
        )
    for key in ("received", "rss_peak", "cgroup_peak", "cpu_ns"):
        values = [n[key] for n in scenario.get("nodes", []) if n.get(key) is not None]
        if values:
            figures[f"{key}_median"] = statistics.median(values)
            figures[f"{key}_max"] = max(values)
            figures[f"{key}_sum"] = sum(values)
    return figures


def percentile(ordered: Sequence[float], p: float) -> float:
    """The p-th percentile of sorted values, interpolated between the closest ranks (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# -- the suite --------------------------------------------------------------------------------------


def run_suite(config: Config) -> Path:
    """Run every scenario; write results.json, report.md and the plots into config.out."""
    if os.geteuid() != 0:
        raise BenchError("the fleet suite needs root (namespaces, mounts, cgroups, drop_caches)")
    unwind_on_sigterm()
    compile_sources()
    config.cache.mkdir(parents=True, exist_ok=True)
    remove_stale_groups()
    try:
        publisher, image = prepare_image(config.cache)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"the fleet's image cannot be built: {stderr_tail(str(e), 1)}") from None
    has_proxy = config.proxy and proxy_available()
    results: dict[str, Any] = {
        "version": 1,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "nodes": config.nodes,
            "modes": config.modes,
            "proxy": config.proxy,
            "link": str(config.link),
            "uplink": str(config.uplink),
            "proxy_link": str(config.proxy_link),
        },
        "machine": {"cpus": os.cpu_count(), "mem_available": _mem_available()},
        "image": image,
        "scenarios": [],
    }
    if config.proxy and not has_proxy:
        results["proxy"] = NOT_AVAILABLE
        print(NOT_AVAILABLE, flush=True)
    names = [f"n{k}" for k in range(config.nodes)]
    links = {"reg": config.uplink, "proxy": config.proxy_link, **dict.fromkeys(names, config.link)}
    work = Path(tempfile.mkdtemp(prefix=f"{PREFIX}work-", dir=config.cache))
    log = config.cache / "fleet-registry.log"
    try:
        with contextlib.ExitStack() as stack:
            net = stack.enter_context(star(links))
            reg_cpu = stack.enter_context(CpuGroup(f"{net.token}-reg"))
            registry = stack.enter_context(serving(net, "reg", work / "registry", log, reg_cpu))
            lazyctr(publisher, "push", "--insecure", "--progress", "plain", IMAGE, f"{registry}/{IMAGE}",
                    netns=net.namespace("reg"))  # fmt: skip
            ways = ["direct", *(["proxy"] if config.proxy else [])]
            for mode in config.modes:
                for way in ways:
                    for count in sorted({1, config.nodes}):
                        scenario: dict[str, Any] = {"mode": mode, "way": way, "count": count}
                        results["scenarios"].append(scenario)
                        if way == "proxy" and not has_proxy:
                            scenario["skipped"] = NOT_AVAILABLE
                            continue
                        print(f"{mode} {way}, {count} node(s)...", flush=True)
                        place = work / f"{mode}-{way}-{count}"
                        tag = f"{net.token}-{len(results['scenarios'])}"
                        scenario.update(run_scenario(net, registry, reg_cpu, scenario, place, tag, log))
                        print(_line(scenario), flush=True)
                        save_partial(results, config.out)
    except LinkError as e:
        raise BenchError(str(e)) from None
    except (RuntimeError, subprocess.TimeoutExpired) as e:  # the push: a registry that does not work
        raise BenchError(f"the fleet's registry cannot be set up: {stderr_tail(str(e), 1)}") from None
    finally:
        with shielded():
            unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["targets"] = targets(results)
    return write_outputs(results, config.out, render_report, draw_plots)


def run_scenario(
    net: Star, registry: str, reg_cpu: CpuGroup, scenario: dict[str, Any], place: Path, tag: str, log: Path
) -> dict[str, Any]:
    """The figures of one scenario (mode, way, count of nodes); through a fresh proxy for way "proxy"."""
    servers = {"reg": reg_cpu}
    nodes = [f"n{k}" for k in range(scenario["count"])]
    try:
        with contextlib.ExitStack() as stack:
            where = registry
            if scenario["way"] == "proxy":
                servers["proxy"] = stack.enter_context(CpuGroup(f"{tag}-proxy"))
                proxy_args = ("--proxy", f"http://{registry}")
                where = stack.enter_context(
                    serving(net, "proxy", place / "proxy", log, servers["proxy"], *proxy_args)
                )
            figures = start_nodes(net, nodes, where, scenario["mode"], place, tag, servers)
    finally:
        with shielded():
            unmount_under(place)
            shutil.rmtree(place, ignore_errors=True)
    return {**figures, **summarize(figures)}


def _line(s: dict[str, Any]) -> str:
    head = f"  {s['mode']:5} {s['way']:6} x{s['count']:<4}"
    if not s.get("ready_nodes"):
        return f"{head} no node became ready: {next((n.get('error') for n in s['nodes']), '')}"
    return (
        f"{head} ready p50 {s['ready_p50']:6.2f} s  p99 {s['ready_p99']:6.2f} s  max {s['ready_max']:6.2f} s"
        f"  ({s['ready_nodes']}/{s['count']})  registry sent {s['registry_egress'] / 1e6:7.1f} MB"
        f"  RSS/node {s.get('rss_peak_median', 0) / 1e6:5.0f} MB"
    )


def find(results: dict[str, Any], mode: str, way: str, count: int) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = [
        s
        for s in results["scenarios"]
        if (s["mode"], s["way"], s["count"]) == (mode, way, count) and "skipped" not in s
    ]
    return found[0] if found else None


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures: the fleet's registry egress against one lazy node's bytes, and its p99 time
    to ready against one node's; and the bound the machine's CPUs put on the makespan."""
    n = results["config"]["nodes"]
    cpus = results["machine"]["cpus"] or 1
    one = find(results, "lazy", "direct", 1)
    found: dict[str, Any] = {}
    if one is not None:
        found["one_lazy_node_bytes"] = one["registry_egress"]
    for mode in MODES:
        single = find(results, mode, "direct", 1)
        for way in ("direct", "proxy"):
            fleet = find(results, mode, way, n)
            if fleet is None:
                continue
            key = f"{mode}_{way}"
            if one is not None and one["registry_egress"]:
                found[f"{key}_egress_x_one_lazy"] = fleet["registry_egress"] / one["registry_egress"]
            if single is not None and single.get("ready_p50") and fleet.get("ready_p99") is not None:
                found[f"{key}_p99_x_single"] = fleet["ready_p99"] / single["ready_p50"]
            if fleet.get("cpu_ns_sum") is not None:
                found[f"{key}_cpu_bound_s"] = fleet["cpu_ns_sum"] / 1e9 / cpus
    return found


# -- outputs ---------------------------------------------------------------------------------------


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:.1f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_report(results: dict[str, Any], plots: Sequence[str] = ()) -> str:
    c, image, n = results["config"], results["image"], results["config"]["nodes"]
    lines = [f"# Fleet: {n} nodes start the same image at once", ""]
    lines.append(
        f"Nodes' links {c['link']} each, the registry's uplink {c['uplink']}, the proxy's link "
        f"{c['proxy_link']} (a star carried by one switch process; a node's RTT to the registry is its "
        f"link's plus the uplink's). Image {image['ref']}: {_mb(image['size'])} MB compressed, "
        f"{_mb(image['files_size'])} MB of files, {image['layers']} layer(s); "
        f"probe `{' '.join(image['probe'])}`. "
        f"Machine: {results['machine']['cpus']} CPUs. Started {results.get('started', '?')}."
    )
    lines.append(
        "ready = from the barrier that releases every node to the exit of `lazyctr run --rm` (after "
        "`lazyctr pull`), the probe having exited 0. lazy: `pull`, `run --driver lazy`; service: the "
        "same with `lazyctr service` resident on each node (up before the barrier; its start's CPU is "
        "not counted, its memory is); eager: `pull --eager`, `run --driver overlay`. Registry MB: "
        "bytes the registry sent into its link "
        "(IP packets: headers and retransmissions count)."
    )
    if results.get("proxy"):
        lines += ["", f"**{results['proxy']}**: the proxy rows are skipped."]
    lines += ["", "## Time to ready and bytes", ""]
    head = ["mode", "way", "nodes", "ready", "p50 s", "p99 s", "max s", "registry MB", "proxy->nodes MB"]
    head += ["node MB (median)", "RSS/node MB (median, max)", "RSS all nodes MB", "lazy mounts at once"]
    head += ["MemAvailable drop MB", "CPU s/node", "switch CPU s"]
    lines += [markdown_row(head), markdown_row(["---"] * len(head))]
    for s in results["scenarios"]:
        cells = [s["mode"], s["way"], str(s["count"])]
        if "skipped" in s:
            lines.append(markdown_row(cells + [s["skipped"]] + [""] * (len(head) - 4)))
            continue
        cells += [f"{s.get('ready_nodes', 0)}/{s['count']}"]
        cells += [_s(s.get(k)) for k in ("ready_p50", "ready_p99", "ready_max")]
        cells += [_mb(s["registry_egress"]), _mb(s["proxy_egress"]) if s["way"] == "proxy" else "-"]
        cells += [_mb(s.get("received_median"))]
        cells += [f"{_mb(s.get('rss_peak_median'))}, {_mb(s.get('rss_peak_max'))}", _mb(s["rss_total_peak"])]
        cells += [str(s["mounts_peak"]) if s["mode"] in LAZY_MODES else "-", _mb(s["mem_available_drop"])]
        cpu = s.get("cpu_ns_median")
        cells += [_s(cpu / 1e9 if cpu is not None else None), _s(s["switch_cpu_s"])]
        lines.append(markdown_row(cells))

    held = [s for s in results["scenarios"] if "held_mounts" in s]
    if held:
        lines += ["", "## Lazy mounts held at once", ""]
        lines.append(
            "After the timed start, every node of a lazy scenario starts one more container of the image "
            "that keeps running (`run -d`), so that all its lazy mounts live at the same time; then, "
            "summed over the nodes' processes (each node's lazyfs daemon and the supervisor of its "
            "container): RSS, PSS (shared pages divided among their users) and the fall of MemAvailable "
            "since before the scenario."
        )
        head = ["way", "nodes", "containers", "lazy mounts", "RSS MB", "PSS MB", "PSS/node MB"]
        head += ["MemAvailable drop MB", "per node MB"]
        lines += ["", markdown_row(head), markdown_row(["---"] * len(head))]
        for s in held:
            count = max(s["held_containers"], 1)
            cells = [s["way"], str(s["count"]), str(s["held_containers"]), str(s["held_mounts"])]
            cells += [_mb(s["held_rss_total"]), _mb(s["held_pss_total"]), _mb(s["held_pss_total"] / count)]
            cells += [_mb(s["held_mem_available_drop"]), _mb(s["held_mem_available_drop"] / count)]
            lines.append(markdown_row(cells))

    lines += ["", "## Where the CPU went", ""]
    lines.append(
        "From the barrier to the last node ready: the machine's busy CPU time (all its processes, other "
        "users' too), the nodes' (their cgroups), the registry's, the proxy's and the switch's; "
        "rest = busy minus those (this benchmark's own threads, the kernel's softirqs, other users)."
    )
    head = ["mode", "way", "nodes", "wall s", "CPUs x wall s", "busy s", "nodes s", "registry s"]
    head += ["proxy s", "switch s", "rest s"]
    lines += ["", markdown_row(head), markdown_row(["---"] * len(head))]
    cpus = results["machine"]["cpus"] or 1
    for s in results["scenarios"]:
        if "wall_s" not in s:
            continue
        nodes_s = (s.get("cpu_ns_sum") or 0) / 1e9
        ours = nodes_s + (s.get("registry_cpu_s") or 0) + (s.get("proxy_cpu_s") or 0) + s["switch_cpu_s"]
        cells = [s["mode"], s["way"], str(s["count"]), _s(s["wall_s"]), _s(cpus * s["wall_s"])]
        cells += [_s(s["machine_busy_s"]), _s(nodes_s), _s(s.get("registry_cpu_s")), _s(s.get("proxy_cpu_s"))]
        cells += [_s(s["switch_cpu_s"]), _s(s["machine_busy_s"] - ours)]
        lines.append(markdown_row(cells))

    t = results.get("targets") or {}
    lines += ["", "## The issue's figures", ""]
    one = t.get("one_lazy_node_bytes")
    lines.append(f"- One lazy node alone made the registry send {_mb(one)} MB.")
    for way in ("direct", "proxy"):
        if f"lazy_{way}_egress_x_one_lazy" in t:
            lines.append(
                f"- {n} lazy nodes, {way}: registry egress {_x(t[f'lazy_{way}_egress_x_one_lazy'])} one lazy "
                f"node's" + (" (target <= 1.2x)" if way == "proxy" else f" (without a cache: about {n}x)")
            )
    for mode in MODES:
        for way in ("direct", "proxy"):
            if f"{mode}_{way}_p99_x_single" in t:
                lines.append(
                    f"- {mode}, {way}: p99 time to ready of {n} nodes {_x(t[f'{mode}_{way}_p99_x_single'])} "
                    f"one {mode} node's alone (target <= 2x); the nodes' CPU time over the machine's "
                    f"{results['machine']['cpus']} CPUs alone takes "
                    f"{_s(t.get(f'{mode}_{way}_cpu_bound_s'))} s"
                )
    lines += [
        "",
        "Memory: RSS/node is the peak of the summed VmRSS of one node's lazyctr processes (the CLI, the "
        "`run` that supervises the container, the lazyfs daemon it starts), sampled every 200 ms from the "
        "barrier to the end of the scenario (lazily: the held mounts too); RSS "
        "all nodes is the peak of that sum over every node at one instant (shared pages counted once per "
        "process); MemAvailable drop is the machine's view of the same moment.",
    ]
    failures = [(s, node) for s in results["scenarios"] for node in s.get("nodes", []) if not node.get("ok")]
    if failures:
        lines += ["", "## Failures", ""]
        for s, node in failures[:50]:
            lines.append(f"- {s['mode']} {s['way']} x{s['count']} {node['node']}: {node.get('error')}")
    lines += ["", "## Every node of the largest scenarios", ""]
    head = ["mode", "way", "node", "pull s", "run s", "ready s", "received MB", "RSS MB", "CPU s"]
    lines += [markdown_row(head), markdown_row(["---"] * len(head))]
    for s in results["scenarios"]:
        if s["count"] != n or "skipped" in s:
            continue
        for node in s["nodes"]:
            cpu = node.get("cpu_ns")
            cells = [s["mode"], s["way"], node["node"], _s(node.get("pull_s")), _s(node.get("run_s"))]
            cells += [_s(node.get("ready_s")), _mb(node.get("received")), _mb(node.get("rss_peak"))]
            cells += [_s(cpu / 1e9 if cpu is not None else None)]
            lines.append(markdown_row(cells))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def draw_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """CDF of the nodes' time to ready, registry egress per scenario, RSS per node."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    n = results["config"]["nodes"]
    fleets = [s for s in results["scenarios"] if s["count"] == n and "skipped" not in s]
    paths = []

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in fleets:
        times = sorted(node["ready_s"] for node in s["nodes"] if node.get("ok"))
        if times:
            label = f"{s['mode']} {s['way']}"
            (line,) = ax.step(times, [(k + 1) / n for k in range(len(times))], where="post", label=label)
            single = find(results, s["mode"], s["way"], 1)
            if single is not None and single.get("ready_p50") is not None:
                ax.axvline(single["ready_p50"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set(
        xlabel="time to ready from the barrier (s)",
        ylabel=f"fraction of the {n} nodes",
        title="Nodes ready (dotted: one node alone)",
    )
    ax.legend(fontsize="small")
    paths.append(save_figure(fig, out / "ready_cdf.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    measured = [s for s in results["scenarios"] if "skipped" not in s]
    labels = [f"{s['mode']}\n{s['way']}\nx{s['count']}" for s in measured]
    ax.bar(range(len(measured)), [s["registry_egress"] / 1e6 for s in measured])
    ax.set_xticks(range(len(measured)), labels, fontsize="small")
    one = (results.get("targets") or {}).get("one_lazy_node_bytes")
    if one:
        ax.axhline(1.2 * one / 1e6, color="k", linestyle="--", linewidth=0.8, label="1.2x one lazy node")
        ax.legend(fontsize="small")
    ax.set_yscale("log")
    ax.set(ylabel="bytes the registry sent (MB, log scale)", title="Registry egress per scenario")
    paths.append(save_figure(fig, out / "registry_egress.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in fleets:
        rss = sorted(node.get("rss_peak", 0) / 1e6 for node in s["nodes"])
        ax.plot(range(1, len(rss) + 1), rss, marker=".", label=f"{s['mode']} {s['way']}")
    ax.set(xlabel="node (sorted)", ylabel="peak RSS of its processes (MB)", title="Memory per node")
    ax.legend(fontsize="small")
    paths.append(save_figure(fig, out / "node_memory.png"))
    return paths
