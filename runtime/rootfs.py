"""The container's root file system, set up as runc's rootfs_linux does, one function per step.

`write_network_files` runs on the host, before the container starts; `prepare_rootfs` runs in the
container's PID 1, in its own mount namespace, on the root the storage driver mounted: the network
files and volumes bound in, the root made read-only if asked, /proc, /sys and /dev mounted,
pivot_root, then the masked and read-only paths. Each step's error names the step.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from runtime import syscalls as sc
from runtime.mountpoints import HOSTNAME_FILE, NETWORK_FILES
from runtime.spec import Spec, Volume
from runtime.steps import setup_step
from runtime.systemd import mount_systemd_tmpfs
from runtime.volumes import seed
from storage.paths import resolve_in_root

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
MASKED_PATHS = ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/sys/firmware")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
LOCAL_HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


def prepare_rootfs(rootfs: Path, container_dir: Path, spec: Spec) -> None:
    """Everything the root needs before the process is finalized, in runc's order; ends in the new root."""
    make_workdir(rootfs, spec.cwd)
    bind_network_files(rootfs, container_dir)
    bind_volumes(rootfs, spec.volumes)
    if spec.read_only:
        remount_readonly(rootfs)
    mount_proc(rootfs)
    mount_sys(rootfs)
    mount_dev(rootfs)
    if spec.systemd:
        mount_systemd_tmpfs(rootfs)
    pivot_root(rootfs)
    mask_paths()
    make_paths_readonly()


# -- on the host, before the container starts ------------------------------------------------------


def write_network_files(container_dir: Path, network: str, hostname: str) -> None:
    """The container's /etc/hosts and /etc/resolv.conf: the host's on the host network; otherwise
    localhost and the container's own name, and the host's resolvers minus loopback ones (unreachable).
    On a bridge network also /etc/hostname; runtime/network/ rewrites hosts once the address is known."""
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
    if network not in ("none", "host"):  # a bridge network's /etc/hostname, as docker's
        _network_file(container_dir, HOSTNAME_FILE).write_text(f"{hostname}\n")


def _network_file(container_dir: Path, path: str) -> Path:
    """Where the container's own copy of the network file `path` is kept."""
    return container_dir / Path(path).name


def _loopback_nameserver(line: str) -> bool:
    words = line.split()
    return len(words) >= 2 and words[0] == "nameserver" and (words[1].startswith("127.") or words[1] == "::1")


# -- in the container's PID 1: the steps of prepare_rootfs -----------------------------------------


@setup_step
def make_workdir(rootfs: Path, cwd: str) -> None:
    """docker creates a missing working directory."""
    resolve_in_root(rootfs, cwd, follow_last=True).mkdir(parents=True, exist_ok=True)


@setup_step
def bind_network_files(rootfs: Path, container_dir: Path) -> None:
    """Bind the files of write_network_files over the image's; a missing one (or its directory) is
    created as a mount point (which prune_mount_points keeps out of layers)."""
    for path in (*NETWORK_FILES, HOSTNAME_FILE):
        if path == HOSTNAME_FILE and not _network_file(container_dir, path).exists():
            continue  # not on a bridge network
        target = resolve_in_root(rootfs, path, follow_last=True)
        if target.is_dir():
            continue  # an image with a directory there keeps it: nothing sensible to bind
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # the image's own is bound over without a copy-up
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        # Named after `path`, not `target`: the image's file may be a link (to systemd's stub-resolv.conf).
        sc.mount(str(_network_file(container_dir, path)), target, None, sc.MS_BIND)


@setup_step
def bind_volumes(rootfs: Path, volumes: list[Volume]) -> None:
    for volume in volumes:
        # Resolved inside the root, so a symlink in the image cannot aim the mount at the host.
        target = resolve_in_root(rootfs, volume.target, follow_last=True)
        if volume.named:
            seed(volume.source, target)
        if volume.source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch(exist_ok=True)
        sc.mount(str(volume.source), target, None, sc.MS_BIND | sc.MS_REC)
        if volume.read_only:
            _remount_readonly(str(volume.source), target)


@setup_step
def remount_readonly(rootfs: Path) -> None:
    """`--read-only`: the root only; /dev, /proc, the network files and volumes are mounted after."""
    _remount_readonly(str(rootfs), rootfs)


def _remount_readonly(source: str, target: Path | str) -> None:
    sc.mount(source, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


@setup_step
def mount_proc(rootfs: Path) -> None:
    (rootfs / "proc").mkdir(exist_ok=True)
    sc.mount("proc", str(rootfs / "proc"), "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "")


@setup_step
def mount_sys(rootfs: Path) -> None:
    (rootfs / "sys").mkdir(exist_ok=True)
    flags = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_RDONLY
    sc.mount("sysfs", str(rootfs / "sys"), "sysfs", flags, "")


@setup_step
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


@setup_step
def pivot_root(rootfs: Path) -> None:
    """Make `rootfs` the root; the old root is detached so no host mount stays visible."""
    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


@setup_step
def mask_paths() -> None:
    """What in /proc and /sys tells about the host, hidden under an empty tmpfs or /dev/null."""
    for path in MASKED_PATHS:
        if os.path.isdir(path):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, "")
        elif os.path.exists(path):
            sc.mount("/dev/null", path, "", sc.MS_BIND, "")


@setup_step
def make_paths_readonly() -> None:
    """The kernel's knobs in /proc, readable but not writable."""
    for path in READONLY_PATHS:
        if os.path.exists(path):
            sc.mount(path, path, "", sc.MS_BIND | sc.MS_REC, "")
            _remount_readonly(path, path)
