"""Container cgroups on cgroup v1 and v2 behind one small class.

This module owns: finding the cgroup layout (v2, or v1 controllers found in /proc/self/mountinfo),
creating `lazyctr/<name>` in every controller a container needs, writing its memory, CPU and
process-count limits, moving processes in, listing them, telling whether the OOM killer struck,
freezing and thawing them, signalling them, and removing the directories again; and parsing docker's
limit strings (`--memory 256m`, `--cpus 0.5`). It does not start processes: the caller adds them.

Memory and pids are used whenever the machine has them (accounting, OOM detection, a second view of
the processes); cpu only when a CPU limit is set.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lazyfs.host import mounts

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "lazyctr"
# The limits' controllers, then the accounting ones that `stats` and `pause` read and write: CPU time
# (cpuacct on v1; v2 counts it in every cgroup's cpu.stat), block I/O (blkio on v1, io on v2) and the
# v1 freezer (v2 freezes any cgroup through cgroup.freeze). A hierarchy that is not there is skipped.
CONTROLLERS = ("memory", "cpu", "pids", "cpuacct", "blkio", "io", "freezer")

# The CFS period docker uses; the kernel refuses quotas below 1ms.
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
# Docker's floor: below it a container cannot even start its shell.
MIN_MEMORY = 6 * 1024 * 1024

Layout = Literal["v1", "v2"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# go-units RAMInBytes, which docker uses for --memory: binary multipliers, "i" and "b" optional.
_MEMORY = re.compile(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", re.IGNORECASE)
_MULTIPLIERS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


class CgroupError(Exception):
    """A cgroup that cannot be created, limited or removed as asked."""


def parse_memory(text: str) -> int:
    """Bytes from a docker memory size: `256m` -> 268435456; units b, k, m, g, t, p (1024-based)."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid memory size {text!r}: expected a number with an optional unit b, k, m, g, t or p"
            " (e.g. 512k, 256m, 1.5g)"
        )
    number, unit = match.group(1), (match.group(2) or "").lower()
    return int(float(number) * _MULTIPLIERS[unit])


def parse_cpus(text: str) -> float:
    """A docker `--cpus` value: how many CPUs' worth of time, e.g. `0.5` or `2`."""
    try:
        cpus = float(text)
    except ValueError:
        raise ValueError(f"invalid CPU count {text!r}: expected a number such as 0.5 or 2") from None
    if not math.isfinite(cpus) or cpus <= 0:
        raise ValueError(f"invalid CPU count {text!r}: expected a positive number such as 0.5 or 2")
    return cpus


@dataclass(frozen=True)
class Limits:
    """What a container may use; None means no limit."""

    memory: int | None = None  # bytes, swap included: a container cannot escape its limit into swap
    cpus: float | None = None
    pids: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None and self.memory < MIN_MEMORY:
            raise ValueError(f"memory limit {self.memory} bytes is too small: the minimum is 6m")
        if self.cpus is not None:
            available = os.cpu_count() or 1
            if not (math.isfinite(self.cpus) and 0.01 <= self.cpus <= available):
                raise ValueError(
                    f"CPU limit {self.cpus} is out of range: from 0.01 to {available}.00,"
                    f" as there are only {available} CPUs available"
                )
        if self.pids is not None and self.pids < 1:
            raise ValueError(f"process limit {self.pids} is out of range: it must be at least 1")

    def controllers(self) -> set[str]:
        """The controllers these limits need."""
        needed = set()
        if self.memory is not None:
            needed.add("memory")
        if self.cpus is not None:
            needed.add("cpu")
        if self.pids is not None:
            needed.add("pids")
        return needed

    def cpu_quota_us(self) -> int | None:
        return None if self.cpus is None else max(MIN_CPU_QUOTA_US, round(self.cpus * CPU_PERIOD_US))


def detect_layout(root: Path = CGROUP_ROOT) -> Layout:
    """`v2` when `root` is a cgroup2 hierarchy (it has cgroup.controllers), else `v1`."""
    return "v2" if (root / "cgroup.controllers").exists() else "v1"


def v1_mount_points(
    root: Path = CGROUP_ROOT, mountinfo: Path = Path("/proc/self/mountinfo")
) -> dict[str, Path]:
    """Where each cgroup v1 controller is mounted; a hierarchy mounted under `root` wins over others.

    Read from mountinfo, not guessed from `root/<controller>`, because distributions differ: Debian
    with systemd co-mounts `cpu,cpuacct` (with `cpu` a symlink), other systems mount them apart."""
    found: dict[str, Path] = {}
    for mount in mounts(mountinfo):
        if mount.fstype != "cgroup":
            continue
        mount_point = Path(mount.point)
        for controller in mount.options.split(","):
            current = found.get(controller)
            if controller in CONTROLLERS and (
                current is None or (mount_point.is_relative_to(root) and not current.is_relative_to(root))
            ):
                found[controller] = mount_point
    return found


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid cgroup name {name!r}: use letters, digits, '_', '.' and '-',"
            " starting with a letter or digit"
        )


def _write(path: Path, value: str) -> None:
    # One write(2) per value: the kernel parses each write to a control file on its own.
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise OSError(e.errno, f"{e.strerror} (writing {value!r})", str(path)) from None


def _read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file such as memory.events or memory.oom_control: `key value` per line."""
    values = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with suppress(ValueError):
            values[key] = int(value)
    return values


def _make_leaf(parent: Path, name: str, created: list[Path], prepare: Callable[[Path], None]) -> Path:
    """mkdir parent/name, making the shared parent first; `prepare` readies the parent for children."""
    leaf = parent / name
    for attempt in range(5):
        time.sleep(0.001 * attempt)
        try:
            parent.mkdir(exist_ok=True)
            prepare(parent)
            leaf.mkdir()
        except FileExistsError:
            raise CgroupError(
                f"cgroup {leaf} already exists: a container named {name!r} runs, or a crashed one left it"
            ) from None
        except OSError as e:
            # Another container's remove() took the shared parent away while it was empty: gone
            # (ENOENT), or still being torn down (ENODEV).
            if e.errno in (errno.ENOENT, errno.ENODEV):
                continue
            raise
        created.append(leaf)
        return leaf
    raise CgroupError(f"cannot create cgroup {leaf}: {parent} keeps disappearing")


class Cgroup:
    """The cgroup of one container: `lazyctr/<name>` in each hierarchy it uses."""

    def __init__(self, name: str, layout: Layout, paths: list[Path], controllers: dict[str, Path]) -> None:
        self.name = name
        self.layout = layout
        self.paths = paths  # the container's directories: one on v2, one per hierarchy on v1
        self.controllers = controllers  # controller -> the directory holding its files

    def __repr__(self) -> str:
        return f"Cgroup({self.name!r}, {self.layout}, {[str(p) for p in self.paths]})"

    @classmethod
    def create(cls, name: str, limits: Limits | None = None, *, root: Path = CGROUP_ROOT) -> Cgroup:
        """Create the container's cgroup and write its limits; on failure nothing is left behind."""
        _check_name(name)
        limits = limits or Limits()
        layout = detect_layout(root)
        created: list[Path] = []  # the leaves made so far, for the cleanup after a failure
        try:
            if layout == "v2":
                cgroup = cls._create_v2(name, limits, root, created)
            else:
                cgroup = cls._create_v1(name, limits, root, created)
            cgroup._write_limits(limits)
        except BaseException:
            with suppress(OSError):
                _remove_directories(created, deadline=time.monotonic())
            raise
        return cgroup

    @classmethod
    def _create_v1(cls, name: str, limits: Limits, root: Path, created: list[Path]) -> Cgroup:
        mounts = v1_mount_points(root)
        missing = limits.controllers() - mounts.keys()
        if missing:
            raise CgroupError(
                f"the cgroup v1 controller(s) {', '.join(sorted(missing))} are not mounted,"
                " and the container's limits need them"
            )
        wanted = [c for c in CONTROLLERS if c in mounts and (c in limits.controllers() or c != "cpu")]
        if not wanted:
            raise CgroupError(f"no cgroup v1 memory or pids hierarchy is mounted (looked under {root})")
        controllers: dict[str, Path] = {}
        by_mount: dict[Path, Path] = {}
        for controller in wanted:
            mount = mounts[controller]
            if mount not in by_mount:  # co-mounted controllers share one directory
                by_mount[mount] = _make_leaf(mount / PARENT, name, created, lambda parent: None)
            controllers[controller] = by_mount[mount]
        return cls(name, "v1", list(by_mount.values()), controllers)

    @classmethod
    def _create_v2(cls, name: str, limits: Limits, root: Path, created: list[Path]) -> Cgroup:
        available = set((root / "cgroup.controllers").read_text().split())
        missing = limits.controllers() - available
        if missing:
            raise CgroupError(
                f"the cgroup v2 controller(s) {', '.join(sorted(missing))} are not available in"
                f" {root / 'cgroup.controllers'}, and the container's limits need them"
            )
        wanted = [c for c in CONTROLLERS if c in available and (c in limits.controllers() or c != "cpu")]

        def enable(directory: Path) -> None:
            # A controller reaches a cgroup only when every ancestor lists it in cgroup.subtree_control.
            subtree_control = directory / "cgroup.subtree_control"
            enabled = set(subtree_control.read_text().split())
            for controller in wanted:
                if controller in enabled:
                    continue
                try:
                    _write(subtree_control, f"+{controller}")
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    raise CgroupError(
                        f"cannot enable the {controller} controller in {subtree_control}: {directory} holds"
                        " processes itself, and cgroup v2 gives controllers only to cgroups without them"
                        " (inside a container, run lazyctr from a child cgroup)"
                    ) from e

        enable(root)
        leaf = _make_leaf(root / PARENT, name, created, enable)
        return cls(name, "v2", [leaf], dict.fromkeys(wanted, leaf))

    @classmethod
    def open(cls, name: str, *, root: Path = CGROUP_ROOT) -> Cgroup:
        """The cgroup an earlier create() made, e.g. in another process."""
        _check_name(name)
        layout = detect_layout(root)
        if layout == "v2":
            leaf = root / PARENT / name
            if not leaf.is_dir():
                raise CgroupError(f"no cgroup {leaf}")
            enabled = set((leaf / "cgroup.controllers").read_text().split())
            controllers = {c: leaf for c in CONTROLLERS if c in enabled}
            return cls(name, layout, [leaf], controllers)
        controllers = {}
        paths: list[Path] = []
        mounts = v1_mount_points(root)
        for controller in (c for c in CONTROLLERS if c in mounts):
            leaf = mounts[controller] / PARENT / name
            if leaf.is_dir():
                controllers[controller] = leaf
                if leaf not in paths:
                    paths.append(leaf)
        if not paths:
            raise CgroupError(f"no cgroup {PARENT}/{name} in any cgroup v1 hierarchy")
        return cls(name, layout, paths, controllers)

    def _write_limits(self, limits: Limits) -> None:
        quota = limits.cpu_quota_us()
        if self.layout == "v2":
            if limits.memory is not None:
                memory = self.controllers["memory"]
                _write(memory / "memory.max", str(limits.memory))
                if (memory / "memory.swap.max").exists():
                    _write(memory / "memory.swap.max", "0")
            if quota is not None:
                _write(self.controllers["cpu"] / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            if limits.pids is not None:
                _write(self.controllers["pids"] / "pids.max", str(limits.pids))
            return
        if limits.memory is not None:
            memory = self.controllers["memory"]
            _write(memory / "memory.limit_in_bytes", str(limits.memory))
            # memory+swap >= memory is enforced by the kernel, so this one comes second.
            if (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", str(limits.memory))
        if quota is not None:
            cpu = self.controllers["cpu"]
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(quota))
        if limits.pids is not None:
            _write(self.controllers["pids"] / "pids.max", str(limits.pids))

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the container's cgroup in every hierarchy."""
        for path in self.paths:
            _write(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """The processes in the cgroup, sorted; empty once it is removed."""
        found: set[int] = set()
        for path in self.paths:
            with suppress(FileNotFoundError):
                found.update(int(line) for line in (path / "cgroup.procs").read_text().split())
        return sorted(found)

    def oom_killed(self) -> bool:
        """Whether the OOM killer has killed a process of this cgroup. Ask before remove()."""
        memory = self.controllers.get("memory")
        if memory is None:
            return False
        if self.layout == "v2":
            return _read_keyed(memory / "memory.events").get("oom_kill", 0) > 0
        control = _read_keyed(memory / "memory.oom_control")
        if "oom_kill" in control:  # Linux >= 4.13
            return control["oom_kill"] > 0
        # Older kernels only count hits of the limit; the caller pairs this with a SIGKILLed process.
        return int((memory / "memory.failcnt").read_text()) > 0

    def freeze(self, timeout: float = 10.0) -> None:
        """Stop every process of the cgroup (`pause`); returns once the kernel says all are frozen."""
        self._set_frozen(True, timeout)

    def thaw(self, timeout: float = 10.0) -> None:
        """Let the processes of a frozen cgroup run again (`unpause`)."""
        self._set_frozen(False, timeout)

    def frozen(self) -> bool:
        """Whether the cgroup is frozen (or freezing); False where it cannot be frozen at all."""
        try:
            if self.layout == "v2":
                return (self.paths[0] / "cgroup.freeze").read_text().strip() == "1"
            freezer = self.controllers.get("freezer")
            return freezer is not None and (freezer / "freezer.state").read_text().strip() != "THAWED"
        except FileNotFoundError:
            return False

    def _set_frozen(self, frozen: bool, timeout: float) -> None:
        if self.layout == "v2":
            control, value = self.paths[0] / "cgroup.freeze", "1" if frozen else "0"
            events = self.paths[0] / "cgroup.events"

            def settled() -> bool:
                return _read_keyed(events).get("frozen") == int(frozen)
        else:
            freezer = self.controllers.get("freezer")
            if freezer is None:
                raise CgroupError("the cgroup v1 freezer hierarchy is not mounted: cannot pause or unpause")
            control, value = freezer / "freezer.state", "FROZEN" if frozen else "THAWED"

            def settled() -> bool:
                return control.read_text().strip() == value  # FREEZING until every task stopped

        if not control.exists():
            raise CgroupError(f"cannot {'freeze' if frozen else 'thaw'} cgroup {self.name!r}: no {control}")
        _write(control, value)
        deadline = time.monotonic() + timeout
        while not settled():
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"cgroup {self.name!r} did not {'freeze' if frozen else 'thaw'} in {timeout:g}s"
                )
            time.sleep(0.002)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to every process in the cgroup, including ones forked while this runs."""
        kill_file = self.paths[0] / "cgroup.kill"
        if self.layout == "v2" and sig == signal.SIGKILL and kill_file.exists():  # Linux >= 5.14
            with suppress(FileNotFoundError):
                _write(kill_file, "1")
            return
        signalled: set[int] = set()
        while fresh := set(self.pids()) - signalled:
            for pid in fresh:
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            signalled |= fresh

    def remove(self, timeout: float = 10.0) -> None:
        """Kill what is left, wait until the cgroup is empty and rmdir its directories.

        Idempotent. The shared `lazyctr` parent goes too once no container uses it, whoever made it:
        only "the last one out" can remove it without racing, and create() retries if it vanishes."""
        deadline = time.monotonic() + timeout
        if self.frozen():  # a frozen process dies of SIGKILL only once thawed (v1)
            self.thaw(timeout)
        while remaining := self.pids():
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"cannot remove cgroup {self.name!r}: processes {remaining} still run after SIGKILL"
                    f" for {timeout:g}s"
                )
            self.kill_all(signal.SIGKILL)
            time.sleep(0.005)
        _remove_directories(self.paths, deadline=deadline)


def _remove_directories(leaves: list[Path], *, deadline: float) -> None:
    for leaf in leaves:
        _rmdir(leaf, shared=False, deadline=deadline)
    for parent in dict.fromkeys(leaf.parent for leaf in leaves):
        _rmdir(parent, shared=True, deadline=deadline)


def _rmdir(path: Path, *, shared: bool, deadline: float) -> None:
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if shared and e.errno in (errno.ENOTEMPTY, errno.EBUSY, errno.EEXIST):
                return  # another container still uses it
            # A killed process leaves its cgroup a moment after cgroup.procs stops listing it.
            if e.errno == errno.EBUSY and time.monotonic() < deadline:
                time.sleep(0.005)
                continue
            raise OSError(e.errno, f"{e.strerror} (removing cgroup {path.name})", str(path)) from None
