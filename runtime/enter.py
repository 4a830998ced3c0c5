"""`lazyctr exec`: a new process inside a running container, as runc's setns init.

It joins the container's cgroup, namespaces and root, then forks the first process to live in the
container's PID namespace, which is finalized as the container's own PID 1 was (runtime/finalize.py),
with the seccomp profile the container was started with.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime import syscalls as sc
from runtime.cgroups import Cgroup
from runtime.finalize import finalize
from runtime.process import ContainerError, run_in_child, wait_status
from runtime.spec import Process, merge_env
from runtime.state import ContainerState
from runtime.steps import setup_step

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
        namespaces = [os.open(proc / "ns" / name, os.O_RDONLY) for name in NAMESPACES]
        root = os.open(proc / "root", os.O_RDONLY | os.O_DIRECTORY)
        workdir = cwd or os.readlink(proc / "cwd")
    except OSError as e:
        raise ContainerError(f"container {state.name} is not running: {e.strerror}") from None
    process = Process(
        argv, merge_env([i for i in container_env if "=" in i], env), workdir, user, state.seccomp
    )
    child = os.fork()
    if child == 0:
        run_in_child(lambda: _enter(state, namespaces, root, process))
    for fd in [*namespaces, root]:
        os.close(fd)
    return wait_status(child)


def _enter(state: ContainerState, namespaces: list[int], root: int, process: Process) -> int:
    join_cgroup(state.id)
    join_namespaces(namespaces)
    enter_root(root)
    inner = os.fork()  # the first process to live in the container's PID namespace
    if inner == 0:
        run_in_child(lambda: finalize(process))
    return wait_status(inner)


@setup_step
def join_cgroup(container_id: str) -> None:
    """Its limits apply to what we start too."""
    Cgroup.open(container_id).add(os.getpid())


@setup_step
def join_namespaces(namespaces: list[int]) -> None:
    for fd in namespaces:
        sc.setns(fd, 0)


@setup_step
def enter_root(root: int) -> None:
    os.fchdir(root)
    os.chroot(".")
