"""`lazyctr exec`: a new process inside a running container, by joining its namespaces (setns)."""

from __future__ import annotations

import os
from pathlib import Path

from runtime import seccomp
from runtime import syscalls as sc
from runtime.cgroups import Cgroup, CgroupError
from runtime.container import exec_command, switch_user
from runtime.process import ContainerError, run_in_child, wait_status
from runtime.state import ContainerState

# The order matters: the mount namespace last but one (we still need /proc of the host to open
# the others), and the PID namespace only takes effect for children, hence the second fork.
NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")


def exec_in(state: ContainerState, argv: list[str], env: list[str], cwd: str | None, user: str) -> int:
    """Run `argv` in the running container `state`; returns its exit status."""
    if not state.running:
        raise ContainerError(f"container {state.name} is not running")
    proc = Path(f"/proc/{state.pid}")
    try:
        container_env = (proc / "environ").read_bytes().decode(errors="surrogateescape").split("\0")
        namespaces = [(name, os.open(proc / "ns" / name, os.O_RDONLY)) for name in NAMESPACES]
        root = os.open(proc / "root", os.O_RDONLY | os.O_DIRECTORY)
        workdir = cwd or os.readlink(proc / "cwd")
    except OSError as e:
        raise ContainerError(f"container {state.name} is not running: {e.strerror}") from None
    merged = {item.split("=", 1)[0]: item for item in container_env if "=" in item}
    merged.update({item.split("=", 1)[0]: item for item in env})
    child = os.fork()
    if child == 0:
        run_in_child(lambda: _enter(state, namespaces, root, argv, list(merged.values()), workdir, user))
    for _, fd in namespaces:
        os.close(fd)
    os.close(root)
    return wait_status(child)


def _enter(
    state: ContainerState, namespaces: list[tuple[str, int]], root: int, argv: list[str], env: list[str],
    cwd: str, user: str,
) -> int:  # fmt: skip
    try:
        Cgroup.open(state.id).add(os.getpid())  # its limits apply to what we start too
    except (CgroupError, OSError) as e:
        raise ContainerError(f"cannot join the container's cgroup: {e}") from None
    for _, fd in namespaces:
        sc.setns(fd, 0)
    os.fchdir(root)
    os.chroot(".")
    inner = os.fork()  # the first process to live in the container's PID namespace
    if inner == 0:
        run_in_child(lambda: _finish(argv, env, cwd, user))
    return wait_status(inner)


def _finish(argv: list[str], env: list[str], cwd: str, user: str) -> int:
    sc.drop_bounding_capabilities(sc.DOCKER_DEFAULT_CAPABILITIES)
    sc.set_no_new_privs()
    if user:
        env = switch_user(user, env)
    if seccomp.available():
        seccomp.apply_default_filter()
    return exec_command(argv, env, cwd)
