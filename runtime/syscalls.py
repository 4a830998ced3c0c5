"""The Linux system calls Python 3.11 lacks, through ctypes, so the rest of the runtime reads as plain Python.

This module owns: unshare, setns, mount, umount2, pivot_root, prctl (no_new_privs, the capability
bounding set), capget/capset, the constants they take, and the capability name <-> number table
with docker's default set. Every call raises OSError(errno, "<strerror>: <what was attempted>") on
failure, so an error names the call and its arguments. Nothing here decides policy: which
namespaces, mounts or capabilities a container gets is up to the setup steps that call it.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Namespaces (linux/sched.h): flags of unshare(2), and the nstype of setns(2).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

# umount2(2) flags.
MNT_FORCE = 1
MNT_DETACH = 2

# prctl(2) options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

# glibc 2.36 (Debian 12) has no pivot_root wrapper; the number depends on the architecture.
SYS_PIVOT_ROOT = {"x86_64": 155, "amd64": 155, "aarch64": 41, "arm64": 41}

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# linux/capability.h, in number order: CAPABILITY_NAMES[n] is the name of capability n.
CAPABILITY_NAMES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAPABILITIES: dict[str, int] = {name: number for number, name in enumerate(CAPABILITY_NAMES)}

# What `docker run` grants by default (moby's oci/caps/defaults.go); CapBnd 00000000a80425fb.
DOCKER_DEFAULT_CAPABILITY_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID",
    "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
)  # fmt: skip
DOCKER_DEFAULT_CAPABILITIES = frozenset(CAPABILITIES[name] for name in DOCKER_DEFAULT_CAPABILITY_NAMES)

StrPath = str | os.PathLike[str]

_libc = ctypes.CDLL(None, use_errno=True)


def _prototype(name: str, restype: type, *argtypes: type) -> ctypes._NamedFuncPointer:
    function = getattr(_libc, name)
    function.restype = restype
    function.argtypes = argtypes
    return function  # type: ignore[no-any-return]


_unshare = _prototype("unshare", ctypes.c_int, ctypes.c_int)
_setns = _prototype("setns", ctypes.c_int, ctypes.c_int, ctypes.c_int)
_mount = _prototype(
    "mount", ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p
)
_umount2 = _prototype("umount2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
_prctl = _prototype(
    "prctl", ctypes.c_int, ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong
)
# syscall(2) is variadic: no argtypes; the arguments are passed as explicit ctypes values.
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


# Version 3 takes two 32-bit words per set: capabilities 0-31, then 32-63.
_CapDataPair = _CapData * 2

_capget = _prototype("capget", ctypes.c_int, ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))
_capset = _prototype("capset", ctypes.c_int, ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData))


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)}: {what}")
    return result


def _path(path: StrPath) -> bytes:
    return os.fsencode(path)


def _optional(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (CLONE_NEW* flags)."""
    _check(_unshare(flags), f"unshare(flags={flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that `fd` (an open /proc/PID/ns/* file) refers to; nstype 0 accepts any kind."""
    _check(_setns(fd, nstype), f"setns(fd={fd}, nstype={nstype:#x})")


def mount(
    source: str | None,
    target: StrPath,
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2). `source` and `fstype` are None for remounts and propagation changes."""
    result = _mount(_optional(source), _path(target), _optional(fstype), flags, _optional(data))
    options = f"type {fstype or 'none'}, flags {flags:#x}" + (f", data {data}" if data else "")
    _check(result, f"mount {source or 'none'} on {os.fspath(target)} ({options})")


def umount2(target: StrPath, flags: int = 0) -> None:
    """Unmount `target`; MNT_DETACH detaches it now and frees it when it is no longer busy."""
    _check(_umount2(_path(target), flags), f"umount {os.fspath(target)} (flags {flags:#x})")


def pivot_root(new_root: StrPath, put_old: StrPath) -> None:
    """Make the mount at `new_root` the root of this mount namespace; the old root moves to `put_old`."""
    what = f"pivot_root({os.fspath(new_root)}, {os.fspath(put_old)})"
    machine = os.uname().machine  # what platform.machine() says, without importing it
    number = SYS_PIVOT_ROOT.get(machine)
    if number is None:
        raise OSError(
            errno.ENOSYS,
            f"{os.strerror(errno.ENOSYS)}: {what}: no pivot_root syscall number known for {machine}",
        )
    result = _syscall(
        ctypes.c_long(number), ctypes.c_char_p(_path(new_root)), ctypes.c_char_p(_path(put_old))
    )
    _check(int(result), what)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns what the option returns (0 for most setters)."""
    return _check(
        _prctl(option, arg2, arg3, arg4, arg5), f"prctl(option={option}, {arg2}, {arg3}, {arg4}, {arg5})"
    )


def set_no_new_privs() -> None:
    """From now on execve grants no privileges (setuid bits, file capabilities); inherited, irreversible."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def last_capability() -> int:
    """The highest capability number this kernel knows."""
    return int(Path("/proc/sys/kernel/cap_last_cap").read_text())


def drop_bounding_capabilities(keep: Iterable[int]) -> None:
    """Remove every capability not in `keep` from the bounding set, so no later execve can regain it."""
    kept = set(keep)
    for cap in range(last_capability() + 1):
        if cap not in kept:
            try:
                prctl(PR_CAPBSET_DROP, cap)
            except OSError as e:
                raise OSError(e.errno, f"{e.strerror} (dropping {capability_name(cap)})") from None


def bounding_capabilities() -> frozenset[int]:
    """The capabilities in this thread's bounding set."""
    return frozenset(cap for cap in range(last_capability() + 1) if prctl(PR_CAPBSET_READ, cap) == 1)


@dataclass(frozen=True)
class CapabilitySets:
    effective: frozenset[int]
    permitted: frozenset[int]
    inheritable: frozenset[int]


def capability_mask(caps: Iterable[int]) -> int:
    """The 64-bit mask of a set of capabilities, as /proc/PID/status prints it in hex."""
    mask = 0
    for cap in caps:
        if not 0 <= cap < 64:
            raise ValueError(f"capability number out of range: {cap}")
        mask |= 1 << cap
    return mask


def _capabilities_of(mask: int) -> frozenset[int]:
    return frozenset(cap for cap in range(64) if mask >> cap & 1)


def set_capabilities(effective: Iterable[int], permitted: Iterable[int], inheritable: Iterable[int]) -> None:
    """capset(2) for this thread. Sets can only shrink, and effective must be a subset of permitted."""
    masks = [capability_mask(effective), capability_mask(permitted), capability_mask(inheritable)]
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapDataPair()
    for word in (0, 1):
        data[word].effective, data[word].permitted, data[word].inheritable = (
            (mask >> (32 * word)) & 0xFFFFFFFF for mask in masks
        )
    _check(
        _capset(ctypes.byref(header), data),
        "capset(effective={:#x}, permitted={:#x}, inheritable={:#x})".format(*masks),
    )


def get_capabilities(pid: int = 0) -> CapabilitySets:
    """capget(2): the capability sets of `pid` (0: the calling thread)."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = _CapDataPair()
    _check(_capget(ctypes.byref(header), data), f"capget(pid={pid})")

    def joined(field: str) -> frozenset[int]:
        return _capabilities_of(getattr(data[0], field) | getattr(data[1], field) << 32)

    return CapabilitySets(joined("effective"), joined("permitted"), joined("inheritable"))


def capability_number(name: str) -> int:
    """The number of a capability named as docker accepts it: `CAP_CHOWN`, `chown`, `cap_chown`."""
    key = name.strip().upper()
    if not key.startswith("CAP_"):
        key = "CAP_" + key
    try:
        return CAPABILITIES[key]
    except KeyError:
        raise ValueError(f"unknown capability {name!r}") from None


def capability_name(number: int) -> str:
    """`CAP_CHOWN` for 0; `CAP_<n>` for a number newer than this table."""
    return CAPABILITY_NAMES[number] if 0 <= number < len(CAPABILITY_NAMES) else f"CAP_{number}"
