"""Running one container: its namespaces, cgroup and PID 1, set up in runc's order.

The lazyctr process stays in the host's namespaces, with no process between it and the container:
it forks the container's PID 1 into a new PID namespace (its own children after that are born in
its own namespace again), and PID 1 unshares the mount, UTS, IPC and network namespaces, mounts the
storage driver's root in its mount namespace (so the kernel removes it when the container ends,
whatever happens to us), prepares the root file system (runtime/rootfs.py), sets up its terminal,
host name and loopback, and finalizes itself into the command (runtime/finalize.py) once lazyctr
has moved it into the container's cgroup, which lazyctr does meanwhile. Every step is one function
named after it, and its error names it. The lazyctr process learns that the command was exec'd
from a close-on-exec pipe, and that it ended from PID 1's exit: the `exec` and `exit` marks of
`run --timings` (storage/timeline.py). On a bridge network PID 1 joins instead a network namespace
lazyctr made before the fork, where the CNI plugins attach it meanwhile (runtime/network/).
"""

from __future__ import annotations

# socket.py's own start costs a few ms of every run: hostname and loopback need only its C core.
import _socket
import contextlib
import fcntl
import os
import shutil
import signal
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import syscalls as sc
from runtime.cgroups import Cgroup, Limits
from runtime.drivers import Driver
from runtime.finalize import EXEC_TRYING, finalize
from runtime.process import EXIT_SETUP_FAILED, ContainerError, exit_status, run_in_child, wait_status
from runtime.rootfs import prepare_rootfs, write_network_files
from runtime.spec import Spec
from runtime.state import ContainerState, all_states, containers_dir
from runtime.steps import setup_step
from runtime.systemd import UnifiedCgroup, mount_cgroup2
from runtime.tty import become_terminal_owner, proxy
from storage import timeline
from storage.files import file_lock
from storage.store import Image, Store

if TYPE_CHECKING:
    import socket

    from runtime.network.sandbox import Sandbox

# PID 1 unshares these; the PID namespace is made by its parent (see fork_in_new_pid_namespace).
NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET


class Container:
    """One container: `create` claims its name and directory, `run` runs it to its end."""

    def __init__(
        self, store: Store, image: Image, spec: Spec, driver: Driver, limits: Limits | None = None
    ) -> None:
        self.store = store
        self.image = image
        self.spec = spec
        self.driver = driver
        self.limits = limits or Limits()
        self.oom_killed = False
        self.dir = containers_dir(store.root) / spec.id
        self.hostname = spec.hostname or spec.id[:12]
        self.terminal: socket.socket | None = None  # PID 1's end of the terminal hand-over, with -t
        self.sandbox: Sandbox | None = None  # its network namespace on a bridge network, while it runs
        self.state = ContainerState(spec.id, spec.name or spec.id[:12], image.name, spec.argv)
        self.state.layers = [str(diff_id) for diff_id in image.config.diff_ids]
        self.state.driver = driver.name
        self.state.seccomp = spec.seccomp  # what `exec` applies too
        self.state.stop_signal = spec.stop_signal
        self.unified: UnifiedCgroup | None = None  # --systemd on a cgroup v1 host: its cgroup2 cgroup

    def create(self) -> None:
        """Claim the container's directory and name; a name already in use is refused."""
        containers = self.dir.parent
        containers.mkdir(parents=True, exist_ok=True)
        with file_lock(self.store.locks / "containers.lock"):
            if any(other.name == self.state.name for other in all_states(containers)):
                raise ContainerError(f"the container name {self.state.name!r} is already in use")
            self.dir.mkdir()
            self.state.save(self.dir)

    def run(self) -> int:
        """Run to completion; returns the exit status (128+N when killed by signal N).

        The state file says `running` (with PID 1's host PID) while it runs and `exited` after.
        """
        self.driver.prepare(self.image, self.dir)
        write_network_files(self.dir, self.spec.network, self.hostname)
        try:
            status = self._start_and_wait()
        finally:
            try:
                timeline.settle()  # while what the driver holds (a lazy mount's statistics) is there
            finally:
                # Before the state says `exited`: whoever waits for that (stop, rm -f) finds the
                # driver's resources (a shared lazy mount) already let go.
                self.driver.release(self.dir)
        self.state.status, self.state.exit_code, self.state.oom_killed = "exited", status, self.oom_killed
        self.state.save(self.dir)
        return status

    def _start_and_wait(self) -> int:
        self.sandbox = open_network(self.store.root, self.dir, self.spec, self.state.name, self.hostname)
        try:
            return self._start_and_wait_on_network()
        finally:
            if self.sandbox is not None:
                self.sandbox.close()  # the plugins' DEL: veth, address, NAT rules

    def _start_and_wait_on_network(self) -> int:
        cgroup = create_cgroup(self.spec.id, self.limits)
        if self.spec.systemd:
            self.unified = UnifiedCgroup.create(self.spec.id)
        go_read, go_write = os.pipe()  # a word from us: PID 1 is in its cgroup, it may exec
        exec_read, exec_write = os.pipe()  # close-on-exec: PID 1's end closes when it execs the command
        # With -t, PID 1 opens a terminal in the container's own devpts and hands us its master.
        terminal_here: socket.socket | None = None
        if self.spec.tty:
            import socket  # only a terminal's hand-over needs more than socket.py's core

            self.terminal, terminal_here = socket.socketpair()
        try:
            try:
                init = fork_in_new_pid_namespace(lambda: self._init(go_read, exec_write))
            finally:
                os.close(go_read)
                os.close(exec_write)
            if self.terminal is not None:
                self.terminal.close()  # only PID 1 holds it: if setup fails, we see the socket close
            signals = (signal.SIGINT, signal.SIGTERM)
            forward = {sig: signal.signal(sig, lambda s, _f: os.kill(init, s)) for sig in signals}
            try:
                try:
                    if self.sandbox is not None:  # while PID 1 sets its root up and we move it
                        self.sandbox.start_connecting()
                    ended = self._admit(cgroup, init, go_write)
                finally:
                    os.close(go_write)
                if ended is not None:
                    return ended
                self.state.pid, self.state.supervisor, self.state.status = init, os.getpid(), "running"
                self.state.save(self.dir)
                if command_execd(exec_read):
                    timeline.mark("exec")
                if terminal_here is not None:
                    import socket

                    _, fds, _, _ = socket.recv_fds(terminal_here, 1, 1)
                    terminal_here.close()
                    for master in fds:
                        proxy(master)
                        os.close(master)
                status = wait_status(init)
                timeline.mark("exit")
            finally:
                for sig, handler in forward.items():
                    signal.signal(sig, handler)
        finally:
            os.close(exec_read)
            self.oom_killed = cgroup.oom_killed()
            cgroup.remove()
            if self.unified is not None:
                self.unified.remove()
        return status

    def _admit(self, cgroup: Cgroup, init: int, go: int) -> int | None:
        """Move PID 1 into the container's cgroup, then let it exec; its status if it ended first.

        On cgroup v1 the move waits for an RCU grace period (~15 ms): PID 1 sets up its root
        meanwhile (and the CNI plugins attach it to its network), and waits for the word only before
        it unshares its cgroup namespace and execs."""
        try:
            join_cgroup(cgroup, init)
            if self.unified is not None:
                join_unified_cgroup(self.unified, init)
        except ContainerError as e:
            # PID 1's setup failed before it was moved in: its own error says why, its status tells.
            gone = isinstance(e.__cause__, ProcessLookupError)
            ended, status = os.waitpid(init, 0 if gone else os.WNOHANG)
            if ended == init:
                return exit_status(status)
            os.kill(init, signal.SIGKILL)  # it must not exec outside its cgroup
            wait_status(init)
            raise
        if self.sandbox is not None:
            try:
                self.sandbox.wait_connected()  # the command starts on a network that is there
            except BaseException:
                os.kill(init, signal.SIGKILL)
                wait_status(init)
                raise
            timeline.mark("network")
        with contextlib.suppress(BrokenPipeError):  # PID 1's setup failed: its status tells
            os.write(go, b"g")
        return None

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- inside PID 1 of the container: the rest of runc's sequence, then exec ---------------------

    def _init(self, go: int, exec_report: int) -> int:
        unshare_namespaces(new_network=self.spec.network != "host" and self.sandbox is None)
        if self.sandbox is not None:
            join_network_namespace(self.sandbox.netns_fd)
        make_mounts_private()
        rootfs = mount_rootfs(self.driver, self.dir)
        if not self.spec.interactive and not self.spec.tty:
            detach_stdin()
        prepare_rootfs(rootfs, self.dir, self.spec)
        if self.terminal is not None:
            open_terminal(self.terminal)
        set_hostname(self.hostname)
        if self.spec.network != "host":
            loopback_up()
        # Limits hold from the command's first instruction. Nothing came: lazyctr failed (and says why).
        if os.read(go, 1) != b"g":
            return EXIT_SETUP_FAILED
        os.close(go)
        unshare_cgroup_namespace()  # now rooted at the container's own cgroup
        if self.spec.systemd:
            mount_cgroup2()
        return finalize(self.spec.process(), exec_report)


def command_execd(exec_report: int) -> bool:
    """Whether PID 1 exec'd the command: it said it would, and its end closed without a word more
    (see runtime/finalize.py). Returns when that end closes."""
    said = b""
    while piece := os.read(exec_report, 8):
        said += piece
    return said == EXEC_TRYING


# -- lazyctr's steps: PID 1's cgroup and PID namespace ---------------------------------------------


@setup_step
def create_cgroup(name: str, limits: Limits) -> Cgroup:
    return Cgroup.create(name, limits)


def fork_in_new_pid_namespace(child: Callable[[], int]) -> int:
    """Fork `child` as PID 1 of a new PID namespace; returns its PID. Our own children after it
    are born in our PID namespace again (a helper we run later, say)."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        unshare_pid_namespace()
        try:
            pid = os.fork()
            if pid == 0:
                run_in_child(child)
        finally:
            sc.setns(own, sc.CLONE_NEWPID)  # the namespace our children are born in: ours again
    finally:
        os.close(own)
    return pid


@setup_step
def unshare_pid_namespace() -> None:
    sc.unshare(sc.CLONE_NEWPID)


@setup_step
def join_cgroup(cgroup: Cgroup, pid: int) -> None:
    cgroup.add(pid)


@setup_step
def join_unified_cgroup(cgroup: UnifiedCgroup, pid: int) -> None:
    cgroup.add(pid)


# -- PID 1's steps besides the root file system ----------------------------------------------------


@setup_step
def unshare_namespaces(new_network: bool) -> None:
    """New mount, UTS, IPC and (unless on the host's network or joining lazyctr's) network namespaces."""
    sc.unshare(NAMESPACES if new_network else NAMESPACES & ~sc.CLONE_NEWNET)


@setup_step
def join_network_namespace(netns: int) -> None:
    """The namespace lazyctr made for a bridge network, where the CNI plugins put the container's eth0."""
    sc.setns(netns, sc.CLONE_NEWNET)


def open_network(root: Path, container_dir: Path, spec: Spec, name: str, hostname: str) -> Sandbox | None:
    """On a bridge network: its namespace made and recorded (runtime/network/), before PID 1 is forked."""
    if spec.network in ("none", "host"):
        return None
    from runtime.network.sandbox import (
        Sandbox,  # subprocess, socket, ipaddress: only a bridged container pays
    )

    sandbox = Sandbox(root, container_dir, spec.network, name, hostname, spec.ports)
    sandbox.open()
    return sandbox


@setup_step
def make_mounts_private() -> None:
    """Nothing mounted from here on propagates back to the host."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


@setup_step
def mount_rootfs(driver: Driver, container_dir: Path) -> Path:
    return driver.mount(container_dir)


@setup_step
def unshare_cgroup_namespace() -> None:
    sc.unshare(sc.CLONE_NEWCGROUP)


@setup_step
def detach_stdin() -> None:
    """Without -i or -t the container reads /dev/null, as under docker."""
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)


@setup_step
def open_terminal(terminal: socket.socket) -> None:
    """-t: a pseudo-terminal of the container's own devpts; its master goes to lazyctr to proxy."""
    import socket

    master, slave = os.openpty()  # /dev/ptmx is the container's: its own /dev/pts/0
    socket.send_fds(terminal, [b"t"], [master])
    os.close(master)
    terminal.close()
    become_terminal_owner(slave)


@setup_step
def set_hostname(hostname: str) -> None:
    _socket.sethostname(hostname)


@setup_step
def loopback_up() -> None:
    """`ip link set lo up`, without needing `ip` in the image."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, request))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
    finally:
        s.close()
