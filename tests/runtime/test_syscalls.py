"""The ctypes system calls do what the kernel documents; every call that changes a namespace, the mounts
or the capabilities runs in a forked child, so the test process itself is never altered."""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from lazyfs import host
from runtime import syscalls
from runtime.syscalls import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWUTS,
    DOCKER_DEFAULT_CAPABILITIES,
    MNT_DETACH,
    MS_PRIVATE,
    MS_REC,
    capability_mask,
    capability_number,
)

Pause = Callable[[], None]


def in_child(body: Callable[[Pause], None], while_paused: Callable[[int], None] | None = None) -> None:
    """Run `body` in a forked child and fail with the child's traceback if it raised.

    `body` gets a `pause()`: calling it runs `while_paused(child_pid)` in the parent, then lets the child
    go on, so the parent can look at the child's state from outside."""
    report_r, report_w = os.pipe()
    paused_r, paused_w = os.pipe()
    resume_r, resume_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            for fd in (report_r, paused_r, resume_w):
                os.close(fd)

            def pause() -> None:
                os.write(paused_w, b"p")
                os.read(resume_r, 1)

            body(pause)
            status = 0
        except BaseException:
            os.write(report_w, traceback.format_exc().encode())
        finally:
            os._exit(status)
    for fd in (report_w, paused_w, resume_r):
        os.close(fd)
    try:
        if os.read(paused_r, 1) and while_paused is not None:
            while_paused(pid)
    finally:
        os.close(resume_w)  # the child goes on (or ends) even when the parent's checks failed
        with os.fdopen(report_r, "rb") as report:
            child_error = report.read().decode(errors="replace")
        os.close(paused_r)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child failed:\n{child_error}"


def mount_points(pid: int | str = "self") -> list[str]:
    return host.mount_points(Path(f"/proc/{pid}/mountinfo"))


def status_field(name: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name} in /proc/self/status")


def private_mount_namespace() -> None:
    """A mount namespace whose mounts never propagate back to the parent's."""
    syscalls.unshare(CLONE_NEWNS)
    syscalls.mount(None, "/", None, MS_REC | MS_PRIVATE)


def test_capability_table() -> None:
    assert len(syscalls.CAPABILITY_NAMES) == 41
    assert syscalls.CAPABILITIES["CAP_CHOWN"] == 0
    assert syscalls.CAPABILITIES["CAP_SYS_ADMIN"] == 21
    assert syscalls.CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert capability_number("net_raw") == capability_number("CAP_NET_RAW") == 13
    assert syscalls.capability_name(27) == "CAP_MKNOD"
    with pytest.raises(ValueError, match="unknown capability 'CAP_FLY'"):
        capability_number("CAP_FLY")
    # The bounding set `docker run` shows in /proc/self/status.
    assert capability_mask(DOCKER_DEFAULT_CAPABILITIES) == 0xA80425FB


@pytest.mark.privileged
def test_unshare_uts_changes_only_the_childs_hostname() -> None:
    before = socket.gethostname()

    def child(pause: Pause) -> None:
        syscalls.unshare(CLONE_NEWUTS)
        socket.sethostname("lazyctr-uts-test")
        assert socket.gethostname() == "lazyctr-uts-test"
        pause()

    def parent(pid: int) -> None:
        assert socket.gethostname() == before
        assert os.readlink(f"/proc/{pid}/ns/uts") != os.readlink("/proc/self/ns/uts")

    in_child(child, parent)
    assert socket.gethostname() == before


@pytest.mark.privileged
def test_setns_returns_to_the_original_namespace() -> None:
    def child(pause: Pause) -> None:
        original = socket.gethostname()
        fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
        syscalls.unshare(CLONE_NEWUTS)
        socket.sethostname("lazyctr-setns-test")
        with pytest.raises(OSError) as wrong_kind:
            syscalls.setns(fd, CLONE_NEWNET)
        assert wrong_kind.value.errno == errno.EINVAL
        syscalls.setns(fd, CLONE_NEWUTS)
        assert socket.gethostname() == original

    in_child(child)


@pytest.mark.privileged
def test_a_mount_in_a_private_namespace_is_invisible_to_the_parent(tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()

    def child(pause: Pause) -> None:
        private_mount_namespace()
        syscalls.mount("tmpfs", target, "tmpfs", 0, "size=1m")
        (target / "only-in-child").write_text("x")
        assert str(target) in mount_points()
        pause()

    def parent(pid: int) -> None:
        assert str(target) in mount_points(pid)
        assert str(target) not in mount_points()
        assert not os.path.ismount(target)
        assert list(target.iterdir()) == []

    in_child(child, parent)
    assert str(target) not in mount_points()


@pytest.mark.privileged
def test_umount2_unmounts_and_detaches_a_busy_mount(tmp_path: Path) -> None:
    target = tmp_path / "mnt"
    target.mkdir()

    def child(pause: Pause) -> None:
        private_mount_namespace()
        syscalls.mount("tmpfs", target, "tmpfs", 0, "size=1m")
        assert os.path.ismount(target)
        syscalls.umount2(target)
        assert not os.path.ismount(target)

        syscalls.mount("tmpfs", target, "tmpfs", 0, "size=1m")
        (target / "held").write_text("still readable")
        with open(target / "held") as held:
            with pytest.raises(OSError) as busy:
                syscalls.umount2(target)
            assert busy.value.errno == errno.EBUSY
            syscalls.umount2(target, MNT_DETACH)
            assert not os.path.ismount(target)
            assert held.read() == "still readable"

    in_child(child)


@pytest.mark.privileged
def test_pivot_root_into_a_tiny_tree(tmp_path: Path) -> None:
    new_root = tmp_path / "root"
    new_root.mkdir()

    def child(pause: Pause) -> None:
        private_mount_namespace()
        syscalls.mount("tmpfs", new_root, "tmpfs", 0, "size=1m,mode=755")
        (new_root / "etc").mkdir()
        (new_root / "etc" / "hostname").write_text("tiny\n")
        (new_root / ".old").mkdir()
        syscalls.pivot_root(new_root, new_root / ".old")
        os.chdir("/")
        syscalls.umount2("/.old", MNT_DETACH)
        os.rmdir("/.old")
        assert os.listdir("/") == ["etc"]
        with open("/etc/hostname") as f:
            assert f.read() == "tiny\n"
        assert not os.path.exists(new_root)

    in_child(child)
    assert list(new_root.iterdir()) == []


@pytest.mark.privileged
def test_no_new_privs() -> None:
    def child(pause: Pause) -> None:
        syscalls.set_no_new_privs()
        assert status_field("NoNewPrivs") == "1"
        assert syscalls.prctl(syscalls.PR_GET_NO_NEW_PRIVS) == 1

    in_child(child)


@pytest.mark.privileged
def test_prctl_pdeathsig_round_trip() -> None:
    def child(pause: Pause) -> None:
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGTERM)
        value = ctypes.c_int(-1)
        syscalls.prctl(syscalls.PR_GET_PDEATHSIG, ctypes.addressof(value))
        assert value.value == signal.SIGTERM

    in_child(child)


@pytest.mark.privileged
def test_the_bounding_set_keeps_exactly_dockers_defaults() -> None:
    def child(pause: Pause) -> None:
        syscalls.drop_bounding_capabilities(DOCKER_DEFAULT_CAPABILITIES)
        assert status_field("CapBnd") == "00000000a80425fb"
        assert syscalls.bounding_capabilities() == DOCKER_DEFAULT_CAPABILITIES
        # The bounding set limits what execve can grant; the current sets are untouched.
        assert syscalls.CAPABILITIES["CAP_SYS_ADMIN"] in syscalls.get_capabilities().effective

    in_child(child)


@pytest.mark.privileged
def test_capset_capget_round_trip() -> None:
    chown, kill, sys_admin = (capability_number(n) for n in ("CHOWN", "KILL", "SYS_ADMIN"))

    def child(pause: Pause) -> None:
        permitted = DOCKER_DEFAULT_CAPABILITIES & syscalls.get_capabilities().permitted
        syscalls.set_capabilities(effective={chown, kill}, permitted=permitted, inheritable={chown})
        caps = syscalls.get_capabilities()
        assert caps == syscalls.CapabilitySets(frozenset({chown, kill}), permitted, frozenset({chown}))
        assert int(status_field("CapEff"), 16) == capability_mask({chown, kill})
        assert int(status_field("CapPrm"), 16) == capability_mask(permitted)
        assert syscalls.get_capabilities(os.getpid()) == caps
        # A dropped permitted capability cannot come back.
        with pytest.raises(OSError) as denied:
            syscalls.set_capabilities(
                effective={sys_admin}, permitted=permitted | {sys_admin}, inheritable=()
            )
        assert denied.value.errno == errno.EPERM
        assert "capset(" in str(denied.value)

    in_child(child)


@pytest.mark.privileged
def test_errors_carry_errno_and_what_was_attempted(tmp_path: Path) -> None:
    # Each call here fails before changing anything, so it can run in the test process itself.
    missing = tmp_path / "missing"
    with pytest.raises(OSError) as no_target:
        syscalls.mount("tmpfs", missing, "tmpfs", 0, "size=1m")
    assert no_target.value.errno == errno.ENOENT
    assert str(missing) in str(no_target.value)
    assert "No such file or directory" in str(no_target.value)

    with pytest.raises(OSError) as not_mounted:
        syscalls.umount2(tmp_path)
    assert not_mounted.value.errno == errno.EINVAL
    assert str(tmp_path) in str(not_mounted.value)

    new_root, outside = tmp_path / "root", tmp_path / "outside"
    new_root.mkdir()
    outside.mkdir()

    def child(pause: Pause) -> None:
        private_mount_namespace()
        syscalls.mount("tmpfs", new_root, "tmpfs", 0, "size=1m")
        # Another mount: put_old on the current root's mount would fail earlier, with EBUSY.
        syscalls.mount("tmpfs", outside, "tmpfs", 0, "size=1m")
        with pytest.raises(OSError) as put_old_outside:
            syscalls.pivot_root(new_root, outside)
        assert put_old_outside.value.errno == errno.EINVAL
        assert f"pivot_root({new_root}, {outside})" in str(put_old_outside.value)

    in_child(child)

    with pytest.raises(OSError) as bad_fd:
        syscalls.setns(-1, CLONE_NEWUTS)
    assert bad_fd.value.errno == errno.EBADF

    with pytest.raises(OSError) as bad_option:
        syscalls.prctl(-1)
    assert bad_option.value.errno == errno.EINVAL
