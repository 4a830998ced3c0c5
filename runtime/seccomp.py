"""A seccomp filter for containers, through libseccomp (ctypes): docker's default profile as a denylist.

Syscalls that docker's default profile refuses to a container without extra capabilities fail
with EPERM (user and other namespaces, keyrings, kernel modules, mounts, clocks, bpf, ...);
clone3 fails with ENOSYS so that libc falls back to clone, whose namespace flags can be checked.
"""

from __future__ import annotations

import ctypes
import errno

from runtime import syscalls as sc
from runtime.process import ContainerError

DEFAULT, UNCONFINED = "default", "unconfined"  # the profiles a container can have
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7

DENIED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "get_kernel_syms", "get_mempolicy",
    "init_module", "ioperm", "iopl", "kcmp", "kexec_file_load", "kexec_load", "keyctl",
    "lookup_dcookie", "mbind", "mount", "mount_setattr", "move_mount", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open",
    "pivot_root", "process_vm_readv", "process_vm_writev", "query_module", "quotactl", "reboot",
    "request_key", "set_mempolicy", "setns", "settimeofday", "stime", "swapoff", "swapon", "sysfs",
    "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
)  # fmt: skip
NAMESPACE_FLAGS = (
    sc.CLONE_NEWNS
    | sc.CLONE_NEWUTS
    | sc.CLONE_NEWIPC
    | sc.CLONE_NEWUSER
    | sc.CLONE_NEWPID
    | sc.CLONE_NEWNET
    | sc.CLONE_NEWCGROUP
)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _library() -> ctypes.CDLL | None:
    # By its soname first: find_library runs ldconfig in a subprocess, 10-20 ms of every `run`.
    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        from ctypes.util import find_library

        name = find_library("seccomp")
        return ctypes.CDLL(name, use_errno=True) if name else None


LIBSECCOMP = _library()


def available() -> bool:
    return LIBSECCOMP is not None


def profile_of(security_opts: tuple[str, ...] | list[str]) -> str:
    """The profile `--security-opt` asks for: only `seccomp=unconfined` is understood."""
    for option in security_opts:
        if option != f"seccomp={UNCONFINED}":
            raise ContainerError(f"unsupported --security-opt {option!r}: only seccomp={UNCONFINED}")
    return UNCONFINED if security_opts else DEFAULT


def apply(profile: str) -> None:
    """Load `profile` into this process: the default filter, where libseccomp is installed."""
    if profile != UNCONFINED and available():
        apply_default_filter()


def apply_default_filter() -> None:
    """Load the filter into this process (and what it will exec); needs no_new_privs set first."""
    lib = LIBSECCOMP
    if lib is None:
        raise OSError(errno.ENOSYS, "libseccomp is not installed")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]  # fmt: skip
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        for name in DENIED:
            _rule(lib, ctx, name, _errno_action(errno.EPERM))
        _rule(lib, ctx, "clone3", _errno_action(errno.ENOSYS))
        # clone with any namespace flag: as docker, refused to a container without CAP_SYS_ADMIN.
        for flag in _bits(NAMESPACE_FLAGS):
            _rule(lib, ctx, "clone", _errno_action(errno.EPERM), _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag))
        result = lib.seccomp_load(ctx)
        if result < 0:
            raise OSError(-result, f"seccomp_load: {errno.errorcode.get(-result, result)}")
    finally:
        lib.seccomp_release(ctx)


def _rule(lib: ctypes.CDLL, ctx: int, name: str, action: int, *comparisons: _ArgCmp) -> None:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        return  # not a syscall on this architecture
    array = (_ArgCmp * len(comparisons))(*comparisons) if comparisons else None
    result = lib.seccomp_rule_add_array(ctx, action, number, len(comparisons), array)
    if result < 0:
        raise OSError(-result, f"seccomp rule for {name}: {errno.errorcode.get(-result, result)}")


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(64) if mask & (1 << i)]
