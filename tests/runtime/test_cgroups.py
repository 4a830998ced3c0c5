"""Container cgroups on the machine's real hierarchies: limits land in the right files, processes are
tracked, limited, OOM-killed and killed, and remove() leaves nothing behind. The machine's own layout is
tested strictly; the other layout's file checks skip with the reason."""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from runtime import syscalls
from runtime.cgroups import (
    CGROUP_ROOT,
    PARENT,
    Cgroup,
    CgroupError,
    Limits,
    detect_layout,
    parse_cpus,
    parse_memory,
    v1_mount_points,
)

MiB = 1024 * 1024

Spawn = Callable[[Callable[[], int]], int]
MakeCgroup = Callable[..., Cgroup]


class Children:
    """Forked children that are killed and reaped at the end of the test, whatever happened."""

    def __init__(self) -> None:
        self.running: set[int] = set()

    def spawn(self, body: Callable[[], int]) -> int:
        """Fork; the child runs body() and exits with what it returns (99 when it raised)."""
        pid = os.fork()
        if pid == 0:
            status = 99
            try:
                status = body()
            except BaseException:
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(status)
        self.running.add(pid)
        return pid

    def wait(self, pid: int) -> int:
        """The raw wait status of `pid`."""
        _, status = os.waitpid(pid, 0)
        self.running.discard(pid)
        return status

    def cleanup(self) -> None:
        for pid in self.running:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self.running.clear()


class Gate:
    """A child waits at the gate until the parent opens it (or goes away)."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()

    def wait(self) -> int:
        """In the child: block until the gate opens; 0 makes it a handy child body's exit status."""
        os.close(self.write_end)
        os.read(self.read_end, 1)
        return 0

    def open(self) -> None:
        os.close(self.write_end)
        os.close(self.read_end)


def exited(status: int) -> int:
    assert os.WIFEXITED(status), f"expected an exit, got wait status {status:#x}"
    return os.WEXITSTATUS(status)


def killed_by(status: int) -> int:
    assert os.WIFSIGNALED(status), f"expected death by a signal, got wait status {status:#x}"
    return os.WTERMSIG(status)


def unique_name() -> str:
    return f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    yield kids
    kids.cleanup()


@pytest.fixture
def make_cgroup(children: Children) -> Iterator[MakeCgroup]:
    """Cgroup.create with a unique name; every cgroup made is removed at the end, even when the test
    failed (and before `children` reaps what remove() killed)."""
    made: list[Cgroup] = []

    def make(limits: Limits | None = None, root: Path = CGROUP_ROOT) -> Cgroup:
        cgroup = Cgroup.create(unique_name(), limits, root=root)
        made.append(cgroup)
        return cgroup

    yield make
    errors = []
    for cgroup in made:
        try:
            cgroup.remove()
        except (OSError, CgroupError) as e:
            errors.append(e)
    assert not errors, f"cleanup failed: {errors}"


def v2_root_with(*controllers: str) -> Path:
    """A cgroup2 hierarchy offering `controllers`: /sys/fs/cgroup on v2 machines, the hybrid layout's
    /sys/fs/cgroup/unified otherwise. Skips (never fails) where there is none: v1 is tested strictly."""
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if detect_layout(root) == "v2" and os.access(root / "cgroup.subtree_control", os.W_OK):
            missing = set(controllers) - set((root / "cgroup.controllers").read_text().split())
            if not missing:
                return root
            pytest.skip(f"the cgroup2 hierarchy {root} lacks the {', '.join(sorted(missing))} controller(s)")
    pytest.skip("no cgroup2 hierarchy on this machine")


def spawn_tree(children: Children, cgroup: Cgroup, sig: int) -> int:
    """A subreaper, outside `cgroup`, whose child joins `cgroup` and forks a grandchild; both wait.

    The subreaper reaps both and exits 0 when both died of `sig`. It exists because an orphan goes to
    PID 1, and some PID 1s reap late (this VM's takes up to seconds), which would leave zombies behind.
    Returns the subreaper's pid once both processes run in the cgroup."""
    ready_r, ready_w = os.pipe()

    def subreaper() -> int:
        os.close(ready_r)
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        if os.fork() == 0:
            try:
                cgroup.add(os.getpid())
                os.fork()  # the child and the grandchild both go on from here
                os.write(ready_w, b"r")
                signal.pause()
            finally:
                os._exit(0)
        os.close(ready_w)
        deaths = [os.waitpid(-1, 0)[1] for _ in range(2)]
        return 0 if all(os.WIFSIGNALED(d) and os.WTERMSIG(d) == sig for d in deaths) else 1

    pid = children.spawn(subreaper)
    os.close(ready_w)
    with os.fdopen(ready_r, "rb") as ready:
        assert ready.read(2) == b"rr", "the process tree did not start"
    return pid


def memory_hog() -> int:
    """Touch 256 MiB, one page at a time; returns 0 only if that survived."""
    hog = bytearray(256 * MiB)
    for offset in range(0, len(hog), 4096):
        hog[offset] = 1
    return 0


# --- parsing and validation: no privileges needed ---


def test_parse_memory_follows_dockers_rules() -> None:
    assert parse_memory("256m") == 268435456
    assert parse_memory("256M") == parse_memory("256mb") == parse_memory("256MiB") == 256 * MiB
    assert parse_memory("1g") == 1 << 30
    assert parse_memory("1.5G") == 3 << 29
    assert parse_memory("512k") == parse_memory("512 KB") == 512 * 1024
    assert parse_memory("100") == parse_memory("100b") == 100
    assert parse_memory("2t") == 2 << 40


@pytest.mark.parametrize("text", ["12qq", "", "m", "-1m", "1.2.3m", "1e6", "12 qq", "0x10"])
def test_parse_memory_rejects_nonsense_with_a_clear_message(text: str) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"invalid memory size {text!r}: expected a number with an optional unit")
    ):
        parse_memory(text)


def test_parse_cpus() -> None:
    assert parse_cpus("0.5") == 0.5
    assert parse_cpus("2") == 2.0
    for text in ("half", "", "0", "-1", "nan", "inf"):
        with pytest.raises(ValueError, match=f"invalid CPU count {text!r}"):
            parse_cpus(text)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="too small: the minimum is 6m"):
        Limits(memory=4 * MiB)
    with pytest.raises(ValueError, match=r"from 0\.01 to"):
        Limits(cpus=0.001)
    with pytest.raises(ValueError, match="CPUs available"):
        Limits(cpus=(os.cpu_count() or 1) + 1)
    with pytest.raises(ValueError, match="at least 1"):
        Limits(pids=0)
    assert Limits(cpus=0.5).cpu_quota_us() == 50_000
    assert Limits(memory=6 * MiB, cpus=1, pids=1).controllers() == {"memory", "cpu", "pids"}


def test_detect_layout(tmp_path: Path) -> None:
    assert detect_layout(tmp_path) == "v1"
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    assert detect_layout(tmp_path) == "v2"


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 200])
def test_names_cannot_escape_the_parent(name: str) -> None:
    with pytest.raises(ValueError, match="invalid cgroup name"):
        Cgroup.create(name, Limits())


def test_limits_needing_a_missing_v2_controller_fail_before_any_mkdir(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("pids\n")
    with pytest.raises(CgroupError, match=r"controller\(s\) memory are not available"):
        Cgroup.create("c1", Limits(memory=32 * MiB), root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cgroup.controllers"]


def test_v1_mount_points_come_from_mountinfo(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "32 25 0:28 / /elsewhere/pids rw - cgroup cgroup rw,pids\n"
        "33 25 0:28 / /sys/fs/cgroup/pids rw shared:9 - cgroup cgroup rw,pids\n"
        "34 25 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    assert v1_mount_points(Path("/sys/fs/cgroup"), mountinfo) == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct"),
        "memory": Path("/sys/fs/cgroup/memory"),
        "pids": Path("/sys/fs/cgroup/pids"),
    }


# --- real cgroups, in the machine's own layout ---


@pytest.mark.privileged
def test_v1_limits_land_in_the_right_files(make_cgroup: MakeCgroup) -> None:
    if detect_layout() != "v1":
        pytest.skip(f"{CGROUP_ROOT} is cgroup v2 on this machine")
    cgroup = make_cgroup(Limits(memory=32 * MiB, cpus=0.5, pids=5))
    mounts = v1_mount_points()
    for controller in ("memory", "cpu", "pids"):
        assert cgroup.controllers[controller] == mounts[controller] / PARENT / cgroup.name
        assert cgroup.controllers[controller].is_dir()
    memory, cpu, pids = (cgroup.controllers[c] for c in ("memory", "cpu", "pids"))
    assert (memory / "memory.limit_in_bytes").read_text() == f"{32 * MiB}\n"
    if (memory / "memory.memsw.limit_in_bytes").exists():
        assert (memory / "memory.memsw.limit_in_bytes").read_text() == f"{32 * MiB}\n"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000\n"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "50000\n"
    assert (pids / "pids.max").read_text() == "5\n"
    assert cgroup.oom_killed() is False


@pytest.mark.privileged
def test_v2_limits_land_in_the_right_files(make_cgroup: MakeCgroup) -> None:
    root = v2_root_with("memory", "cpu", "pids")
    cgroup = make_cgroup(Limits(memory=32 * MiB, cpus=0.5, pids=5), root=root)
    (path,) = cgroup.paths
    assert path == root / PARENT / cgroup.name
    assert set(cgroup.controllers) == {"memory", "cpu", "pids"}
    assert {"memory", "cpu", "pids"} <= set((path / "cgroup.controllers").read_text().split())
    assert (path / "memory.max").read_text() == f"{32 * MiB}\n"
    if (path / "memory.swap.max").exists():
        assert (path / "memory.swap.max").read_text() == "0\n"
    assert (path / "cpu.max").read_text() == "50000 100000\n"
    assert (path / "pids.max").read_text() == "5\n"
    assert cgroup.oom_killed() is False


@pytest.mark.privileged
def test_cpu_is_joined_only_for_a_cpu_limit(make_cgroup: MakeCgroup) -> None:
    cgroup = make_cgroup(Limits(memory=32 * MiB))
    assert {"memory", "pids"} <= set(cgroup.controllers) and "cpu" not in cgroup.controllers
    mounts = v1_mount_points()
    if cgroup.layout == "v1" and mounts["cpu"] != mounts.get("cpuacct"):  # co-mounted: cpuacct's is cpu's
        assert not (mounts["cpu"] / PARENT / cgroup.name).exists()


@pytest.mark.privileged
def test_a_forked_child_added_appears_in_pids(make_cgroup: MakeCgroup, children: Children) -> None:
    cgroup = make_cgroup(Limits(memory=64 * MiB, pids=10))
    assert cgroup.pids() == []
    gate = Gate()

    def child() -> int:
        return gate.wait() + 7

    pid = children.spawn(child)
    cgroup.add(pid)
    assert cgroup.pids() == [pid]
    membership = Path(f"/proc/{pid}/cgroup").read_text()
    assert membership.count(f"/{PARENT}/{cgroup.name}\n") == len(cgroup.paths)
    gate.open()
    assert exited(children.wait(pid)) == 7
    assert cgroup.pids() == []


@pytest.mark.privileged
def test_a_child_past_its_memory_limit_is_oom_killed(make_cgroup: MakeCgroup, children: Children) -> None:
    cgroup = make_cgroup(Limits(memory=32 * MiB))
    assert cgroup.oom_killed() is False

    def child() -> int:
        cgroup.add(os.getpid())
        return memory_hog()

    pid = children.spawn(child)
    assert killed_by(children.wait(pid)) == signal.SIGKILL
    assert cgroup.oom_killed() is True


@pytest.mark.privileged
def test_a_pids_limit_makes_fork_fail_with_eagain(make_cgroup: MakeCgroup, children: Children) -> None:
    cgroup = make_cgroup(Limits(pids=5))

    def child() -> int:
        cgroup.add(os.getpid())
        release_r, release_w = os.pipe()
        forked: list[int] = []
        try:
            while len(forked) < 20:
                grandchild = os.fork()
                if grandchild == 0:
                    try:
                        os.close(release_w)
                        os.read(release_r, 1)
                    finally:
                        os._exit(0)
                forked.append(grandchild)
        except BlockingIOError as e:
            if e.errno != errno.EAGAIN:
                return 98
        finally:
            os.close(release_w)
            for grandchild in forked:
                os.waitpid(grandchild, 0)
        return len(forked)  # this child plus its grandchildren make the 5 allowed

    assert exited(children.wait(children.spawn(child))) == 4


@pytest.mark.privileged
def test_kill_all_reaches_grandchildren(make_cgroup: MakeCgroup, children: Children) -> None:
    cgroup = make_cgroup(Limits(pids=10))
    subreaper = spawn_tree(children, cgroup, signal.SIGTERM)
    assert len(cgroup.pids()) == 2
    cgroup.kill_all(signal.SIGTERM)
    assert exited(children.wait(subreaper)) == 0, "the tree did not die of SIGTERM"
    assert cgroup.pids() == []


@pytest.mark.privileged
def test_remove_kills_what_is_left_and_leaves_no_directory(
    make_cgroup: MakeCgroup, children: Children
) -> None:
    parents = {path.parent for path in make_cgroup(Limits(memory=32 * MiB, cpus=0.5, pids=5)).paths}
    cgroup = make_cgroup(Limits(memory=32 * MiB, cpus=0.5, pids=5))
    gate = Gate()
    pid = children.spawn(gate.wait)
    cgroup.add(pid)
    cgroup.remove()
    assert killed_by(children.wait(pid)) == signal.SIGKILL
    for path in cgroup.paths:
        assert not path.exists()
    # The shared parent stays while another container (the first cgroup) still uses it.
    assert all(parent.is_dir() for parent in parents)
    assert cgroup.pids() == []
    cgroup.remove()  # idempotent
    gate.open()


@pytest.mark.privileged
def test_the_last_remove_takes_the_shared_parent_too(make_cgroup: MakeCgroup) -> None:
    first = make_cgroup(Limits(memory=32 * MiB, pids=5))
    second = make_cgroup(Limits(memory=32 * MiB, pids=5))
    parents = {path.parent for path in first.paths}
    first.remove()
    assert all(parent.is_dir() for parent in parents)
    second.remove()

    def gone_or_in_use(parent: Path) -> bool:
        with suppress(FileNotFoundError):
            return any(entry.is_dir() for entry in parent.iterdir())
        return True

    # Gone, unless a concurrent test run's container uses it; that one may be between its mkdirs.
    deadline = time.monotonic() + 2
    while not all(gone_or_in_use(parent) for parent in parents) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(gone_or_in_use(parent) for parent in parents)


@pytest.mark.privileged
def test_open_finds_a_cgroup_made_earlier(make_cgroup: MakeCgroup, children: Children) -> None:
    made = make_cgroup(Limits(memory=32 * MiB, pids=5))
    opened = Cgroup.open(made.name)
    assert (opened.layout, opened.paths, opened.controllers) == (made.layout, made.paths, made.controllers)
    gate = Gate()
    pid = children.spawn(gate.wait)
    made.add(pid)
    assert opened.pids() == [pid]
    opened.remove()
    assert killed_by(children.wait(pid)) == signal.SIGKILL
    assert not any(path.exists() for path in made.paths)
    gate.open()
    with pytest.raises(CgroupError, match="no cgroup"):
        Cgroup.open(made.name)


@pytest.mark.privileged
def test_a_name_in_use_is_refused_and_left_alone(make_cgroup: MakeCgroup) -> None:
    first = make_cgroup(Limits(pids=5))
    with pytest.raises(CgroupError, match="already exists"):
        Cgroup.create(first.name, Limits(pids=5))
    assert all(path.is_dir() for path in first.paths)


@pytest.mark.privileged
def test_a_limit_the_kernel_refuses_leaves_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique_name()
    # Bypass Limits' own validation to make the kernel itself say no (a quota below 1ms).
    limits = Limits(cpus=0.5)
    monkeypatch.setattr(Limits, "cpu_quota_us", lambda self: 10)
    try:
        with pytest.raises(OSError) as refused:
            Cgroup.create(name, limits)
    finally:
        with suppress(CgroupError):
            Cgroup.open(name).remove()  # only if create() unexpectedly succeeded or left something
    assert refused.value.errno == errno.EINVAL
    assert "writing '10'" in str(refused.value)
    if detect_layout() == "v1":
        leftovers = [mount / PARENT / name for mount in v1_mount_points().values()]
    else:
        leftovers = [CGROUP_ROOT / PARENT / name]
    assert not any(path.exists() for path in leftovers)


# --- cgroup2 without controllers: the hybrid layout's /sys/fs/cgroup/unified, or a v2 root ---


@pytest.mark.privileged
def test_v2_tracks_and_kills_a_process_tree(make_cgroup: MakeCgroup, children: Children) -> None:
    root = v2_root_with()
    cgroup = make_cgroup(Limits(), root=root)
    (path,) = cgroup.paths
    assert path == root / PARENT / cgroup.name
    subreaper = spawn_tree(children, cgroup, signal.SIGKILL)
    assert len(cgroup.pids()) == 2
    assert subreaper not in cgroup.pids()
    assert cgroup.oom_killed() is False
    cgroup.kill_all()  # cgroup.kill where the kernel has it (Linux >= 5.14)
    assert exited(children.wait(subreaper)) == 0, "the tree did not die of SIGKILL"
    assert cgroup.pids() == []
    cgroup.remove()
    assert not path.exists()
