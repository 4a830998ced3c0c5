"""Running one container: its root file system, namespaces and process, set up in runc's order.

The lazyctr process stays in the host's namespaces and only waits. A forked monitor unshares the
mount, UTS, IPC, network and PID namespaces, mounts the overlay root inside its own mount namespace
(so the kernel removes it when the container ends, whatever happens to us) and forks the
container's PID 1, which finishes the setup, one small function per step, and execs the command.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import signal
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime import seccomp
from runtime import syscalls as sc
from runtime.cgroups import Cgroup, CgroupError, Limits
from runtime.drivers import Driver
from runtime.mountpoints import NETWORK_FILES
from runtime.process import (
    EXIT_NOT_EXECUTABLE,
    EXIT_NOT_FOUND,
    EXIT_SETUP_FAILED,
    ContainerError,
    exit_status,
    run_in_child,
    wait_status,
)
from runtime.state import ContainerState, all_states
from runtime.tty import become_terminal_owner, proxy
from storage.files import file_lock
from storage.paths import resolve_in_root
from storage.store import Image, Store

NAMESPACES = sc.CLONE_NEWNS | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWPID
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
                     signal.SIGUSR2, signal.SIGWINCH)  # fmt: skip
MASKED_PATHS = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
LOCAL_HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


@dataclass
class Spec:
    """What to run, with the image config already merged with the command line."""

    argv: list[str]
    env: list[str]
    cwd: str = "/"
    hostname: str = ""
    name: str = ""
    user: str = ""  # USER[:GROUP], names or numbers, resolved inside the container
    volumes: list[Volume] = field(default_factory=list)
    read_only: bool = False
    network: str = "none"  # none, host or private
    interactive: bool = False  # -i: keep stdin; without it the container reads /dev/null
    tty: bool = False  # -t: a pseudo-terminal
    init: bool = False  # --init: a minimal init as PID 1 that reaps zombies and forwards signals
    seccomp: bool = True  # docker's default seccomp denylist (where libseccomp is installed)
    id: str = field(default_factory=lambda: secrets.token_hex(32))


@dataclass(frozen=True)
class Volume:
    source: Path
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> Volume:
        """`SRC:DST[:ro|rw]`, as docker's -v; SRC must exist."""
        parts = text.split(":")
        if (
            len(parts) not in (2, 3)
            or not parts[0]
            or not parts[1].startswith("/")
            or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
        ):
            raise ContainerError(f"invalid volume {text!r}: expected /host/path:/container/path[:ro]")
        source = Path(parts[0]).resolve()
        if not source.exists():
            raise ContainerError(f"volume source {parts[0]} does not exist")
        return cls(source, parts[1], len(parts) == 3 and parts[2] == "ro")


def spec_for(
    image: Image, command: list[str], env: list[str], workdir: str | None, entrypoint: str | None = None
) -> Spec:
    """Entrypoint + Cmd (or the given command) and Env, merged as docker merges them.

    `--entrypoint` replaces the image's Entrypoint and clears its Cmd, as with docker.
    """
    config = image.config.config
    if entrypoint is not None:
        argv = [entrypoint, *command] if entrypoint else list(command)
    else:
        argv = list(config.get("Entrypoint") or []) + (command or list(config.get("Cmd") or []))
    if not argv:
        raise ContainerError(f"no command given and {image.name} has no Entrypoint or Cmd")
    merged = {item.split("=", 1)[0]: item for item in config.get("Env") or [f"PATH={DEFAULT_PATH}"]}
    merged.update({item.split("=", 1)[0]: item for item in env})
    spec = Spec(argv, list(merged.values()), workdir or config.get("WorkingDir") or "/")
    spec.user = str(config.get("User") or "")
    return spec


class Container:
    def __init__(
        self, store: Store, image: Image, spec: Spec, driver: Driver, limits: Limits | None = None
    ) -> None:
        self.store = store
        self.image = image
        self.spec = spec
        self.driver = driver
        self.limits = limits or Limits()
        self.oom_killed = False
        self.dir = store.root / "containers" / spec.id
        self.hostname = spec.hostname or spec.id[:12]
        self.terminal: socket.socket | None = None  # PID 1's end of the terminal hand-over, with -t
        self.state = ContainerState(spec.id, spec.name or spec.id[:12], image.name, spec.argv)
        self.state.layers = [str(diff_id) for diff_id in image.config.diff_ids]
        self.state.driver = driver.name

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
            # Before the state says `exited`: whoever waits for that (stop, rm -f) finds the
            # driver's resources (a shared lazy mount) already let go.
            self.driver.release(self.dir)
        self.state.status, self.state.exit_code, self.state.oom_killed = "exited", status, self.oom_killed
        self.state.save(self.dir)
        return status

    def _start_and_wait(self) -> int:
        try:
            cgroup = Cgroup.create(self.spec.id, self.limits)
        except (CgroupError, OSError) as e:
            raise ContainerError(f"cgroup: {e}") from None
        report_read, report_write = os.pipe()
        # With -t, PID 1 opens a terminal in the container's own devpts and hands us its master.
        self.terminal, terminal_here = socket.socketpair() if self.spec.tty else (None, None)
        try:
            monitor = os.fork()
            if monitor == 0:
                os.close(report_read)
                run_in_child(lambda: self._monitor(cgroup, report_write))
            os.close(report_write)
            if self.terminal is not None:
                self.terminal.close()
            forward = {
                sig: signal.signal(sig, lambda s, _f: os.kill(monitor, s))
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                pid = os.read(report_read, 32)
                if pid:
                    self.state.pid, self.state.supervisor, self.state.status = (
                        int(pid),
                        os.getpid(),
                        "running",
                    )
                    self.state.save(self.dir)
                if terminal_here is not None:
                    _, fds, _, _ = socket.recv_fds(terminal_here, 1, 1)
                    terminal_here.close()
                    for master in fds:
                        proxy(master)
                        os.close(master)
                status = wait_status(monitor)
            finally:
                for sig, handler in forward.items():
                    signal.signal(sig, handler)
        finally:
            os.close(report_read)
            self.oom_killed = cgroup.oom_killed()
            cgroup.remove()
        return status

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- inside the monitor: new namespaces, overlay root ------------------------------------------

    def _monitor(self, cgroup: Cgroup, report: int) -> int:
        sc.unshare(NAMESPACES if self.spec.network != "host" else NAMESPACES & ~sc.CLONE_NEWNET)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        rootfs = self.driver.mount(self.dir)
        go_read, go_write = os.pipe()
        init = os.fork()
        if init == 0:
            os.close(go_write)
            os.read(go_read, 1)  # wait until we are in the cgroup: limits hold from the first instruction
            os.close(go_read)
            sc.unshare(sc.CLONE_NEWCGROUP)  # now rooted at the container's own cgroup
            run_in_child(lambda: self._init(rootfs))
        os.close(go_read)
        if self.terminal is not None:
            self.terminal.close()  # only PID 1 holds it: if setup fails, we see the socket close
        cgroup.add(init)  # only the container's processes: the monitor's memory is not the container's
        os.write(report, str(init).encode())
        os.close(report)
        os.write(go_write, b"g")
        os.close(go_write)
        signal.signal(signal.SIGINT, lambda s, _f: os.kill(init, s))
        signal.signal(signal.SIGTERM, lambda s, _f: os.kill(init, s))
        return wait_status(init)

    # -- inside PID 1 of the container: the rest of runc's sequence, then exec ---------------------

    def _init(self, rootfs: Path) -> int:
        if not self.spec.interactive and not self.spec.tty:
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        make_workdir(rootfs, self.spec.cwd)
        bind_network_files(rootfs, self.dir)
        bind_volumes(rootfs, self.spec.volumes)
        if self.spec.read_only:
            sc.mount(str(rootfs), rootfs, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
        mount_proc(rootfs)
        mount_sys(rootfs)
        mount_dev(rootfs)
        pivot_root(rootfs)
        mask_paths()
        if self.terminal is not None:
            master, slave = os.openpty()  # /dev/ptmx is the container's: its own /dev/pts/0
            socket.send_fds(self.terminal, [b"t"], [master])
            os.close(master)
            self.terminal.close()
            become_terminal_owner(slave)
        socket.sethostname(self.hostname)
        if self.spec.network != "host":
            loopback_up()
        sc.drop_bounding_capabilities(sc.DOCKER_DEFAULT_CAPABILITIES)
        sc.set_no_new_privs()
        env = switch_user(self.spec.user, self.spec.env) if self.spec.user else self.spec.env
        if self.spec.seccomp:
            seccomp.apply_default_filter()
        if self.spec.init:
            return run_as_init(lambda: exec_command(self.spec.argv, env, self.spec.cwd))
        return exec_command(self.spec.argv, env, self.spec.cwd)


def run_as_init(start: Callable[[], int]) -> int:
    """`--init`: stay PID 1, forward signals to the command, reap every orphan, exit as it does."""
    child = os.fork()
    if child == 0:
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        run_in_child(start)
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    while True:
        try:
            pid, status = os.wait()
        except InterruptedError:
            continue
        except ChildProcessError:
            return EXIT_SETUP_FAILED
        if pid == child:
            return exit_status(status)


def make_workdir(rootfs: Path, cwd: str) -> None:
    """docker creates a missing working directory."""
    resolve_in_root(rootfs, cwd, follow_last=True).mkdir(parents=True, exist_ok=True)


def write_network_files(container_dir: Path, network: str, hostname: str) -> None:
    """The container's /etc/hosts and /etc/resolv.conf: the host's on the host network; otherwise
    localhost and the container's own name, and the host's resolvers minus loopback ones (unreachable)."""
    host = network == "host"
    try:
        hosts = Path("/etc/hosts").read_text() if host else f"{LOCAL_HOSTS}127.0.1.1\t{hostname}\n"
    except OSError:
        hosts = LOCAL_HOSTS
    try:
        resolv = Path("/etc/resolv.conf").read_text()
    except OSError:
        resolv = ""
    if not host:
        resolv = "".join(line for line in resolv.splitlines(keepends=True) if not _loopback_nameserver(line))
    for path, text in zip(NETWORK_FILES, (hosts, resolv), strict=True):
        _network_file(container_dir, path).write_text(text)


def _network_file(container_dir: Path, path: str) -> Path:
    """Where the container's own copy of the network file `path` is kept."""
    return container_dir / Path(path).name


def _loopback_nameserver(line: str) -> bool:
    words = line.split()
    return len(words) >= 2 and words[0] == "nameserver" and (words[1].startswith("127.") or words[1] == "::1")


def bind_network_files(rootfs: Path, container_dir: Path) -> None:
    """Bind the files of write_network_files over the image's; a missing one (or its directory) is
    created as a mount point (which prune_mount_points keeps out of layers)."""
    for path in NETWORK_FILES:
        target = resolve_in_root(rootfs, path, follow_last=True)
        if target.is_dir():
            continue  # an image with a directory there keeps it: nothing sensible to bind
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # the image's own is bound over without a copy-up
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        # Named after `path`, not `target`: the image's file may be a link (to systemd's stub-resolv.conf).
        sc.mount(str(_network_file(container_dir, path)), target, None, sc.MS_BIND)


def bind_volumes(rootfs: Path, volumes: list[Volume]) -> None:
    for volume in volumes:
        # Resolved inside the root, so a symlink in the image cannot aim the mount at the host.
        target = resolve_in_root(rootfs, volume.target, follow_last=True)
        if volume.source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        sc.mount(str(volume.source), target, None, sc.MS_BIND | sc.MS_REC)
        if volume.read_only:
            sc.mount(str(volume.source), target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


def switch_user(user: str, env: list[str]) -> list[str]:
    """Become USER[:GROUP] (names from the container's /etc/passwd and /etc/group, or numbers)."""
    name, _, group = user.partition(":")
    passwd = _table("/etc/passwd")
    entry = next((row for row in passwd if name in (row[0], row[2])), None)
    if entry is None and not name.isdigit():
        raise ContainerError(f"unable to find user {name}: no matching entries in passwd file")
    uid = int(entry[2]) if entry else int(name)
    gid = int(entry[3]) if entry else 0
    if group:
        groups = [row for row in _table("/etc/group") if group in (row[0], row[2])]
        if not groups and not group.isdigit():
            raise ContainerError(f"unable to find group {group}: no matching entries in group file")
        gid = int(groups[0][2]) if groups else int(group)
    login = entry[0] if entry else ""
    extra = [int(row[2]) for row in _table("/etc/group") if login and login in row[3].split(",")]
    os.setgroups(sorted({gid, *extra}))
    os.setgid(gid)
    os.setuid(uid)
    home = entry[5] if entry else "/"
    return env if any(item.startswith("HOME=") for item in env) else [*env, f"HOME={home}"]


def _table(path: str) -> list[list[str]]:
    try:
        with open(path) as f:
            return [line.rstrip("\n").split(":") for line in f if line.count(":") >= 3]
    except OSError:
        return []


def mount_proc(rootfs: Path) -> None:
    (rootfs / "proc").mkdir(exist_ok=True)
    sc.mount("proc", str(rootfs / "proc"), "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "")


def mount_sys(rootfs: Path) -> None:
    (rootfs / "sys").mkdir(exist_ok=True)
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY
    sc.mount("sysfs", str(rootfs / "sys"), "sysfs", flags, "")


def mount_dev(rootfs: Path) -> None:
    """A tmpfs /dev with the usual devices bound from the host, devpts, shm, mqueue and fd links."""
    dev = rootfs / "dev"
    dev.mkdir(exist_ok=True)
    sc.mount("tmpfs", str(dev), "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name in DEVICES:
        (dev / name).touch()
        sc.mount(f"/dev/{name}", str(dev / name), "", sc.MS_BIND, "")
    for name, fstype, flags, data in (
        ("pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"),
        ("shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k"),
        ("mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, ""),
    ):
        (dev / name).mkdir()
        sc.mount(name, str(dev / name), fstype, flags, data)
    os.symlink("pts/ptmx", dev / "ptmx")
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, dev / link)


def pivot_root(rootfs: Path) -> None:
    """Make `rootfs` the root; the old root is detached so no host mount stays visible."""
    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_paths() -> None:
    for path in MASKED_PATHS:
        if os.path.isdir(path):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, "")
        elif os.path.exists(path):
            sc.mount("/dev/null", path, "", sc.MS_BIND, "")
    for path in READONLY_PATHS:
        if os.path.exists(path):
            sc.mount(path, path, "", sc.MS_BIND | sc.MS_REC, "")
            sc.mount(path, path, "", sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY, "")


def loopback_up() -> None:
    """`ip link set lo up`, without needing `ip` in the image."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, siocgifflags, request))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def reset_signals() -> None:
    """The command starts with every signal at its default and none blocked, as under docker.

    Python ignores SIGPIPE and SIGXFSZ, and a lazyctr started in the background by a shell inherits
    an ignored SIGINT and SIGQUIT; ignored signals survive exec, so without this `yes | head` in a
    container would see EPIPE instead of dying, and Ctrl-C would not stop it.
    """
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            with contextlib.suppress(OSError, ValueError):  # the C library's own realtime signals
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_command(argv: list[str], env_list: list[str], cwd: str) -> int:
    env = dict(item.split("=", 1) for item in env_list if "=" in item)
    try:
        os.chdir(cwd)
    except OSError as e:
        print(f"lazyctr: error: working directory {cwd}: {e.strerror}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    reset_signals()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"lazyctr: error: {argv[0]}: {e.strerror}", file=sys.stderr)
        return EXIT_NOT_FOUND if e.errno == errno.ENOENT else EXIT_NOT_EXECUTABLE
