"""`run --systemd`: what a container needs so that systemd can boot as its PID 1, as `podman --systemd`.

systemd wants, besides its command: `container=<manager>` in its environment (how it knows it runs in
a container), tmpfs on /run, /run/lock, /tmp and /var/log/journal, a cgroup2 file system at
/sys/fs/cgroup that it may write to (mounted after the container's cgroup namespace is made, so it
shows the container's own cgroup as its root) and SIGRTMIN+3 to halt (SIGTERM makes it re-execute
itself). On a host whose controllers are on cgroup v1 (a hybrid layout with an empty cgroup2
hierarchy beside them), the container gets a cgroup of its own in that cgroup2 hierarchy as well:
systemd tracks its units there, without controllers, while the limits stay on v1. `--systemd true`
(the default) turns this on when the command is an init (/sbin/init, /usr/sbin/init, ...systemd).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path

from lazyfs.host import mounts
from runtime import syscalls as sc
from runtime.cgroups import PARENT, detect_layout
from runtime.process import ContainerError
from runtime.spec import Spec, merge_env
from runtime.steps import setup_step
from storage.paths import resolve_in_root

MODES = ("true", "false", "always")
INIT_COMMANDS = ("/sbin/init", "/usr/sbin/init", "/usr/local/sbin/init")
STOP_SIGNAL = int(signal.SIGRTMIN) + 3  # systemd's halt
ENVIRONMENT = "container=lazyctr"
TMPFS = {"/run": "mode=755", "/run/lock": "mode=1777", "/tmp": "mode=1777", "/var/log/journal": "mode=755"}


def wanted(mode: str, argv: list[str]) -> bool:
    """Whether the container runs systemd: always, never, or (`true`) when its command is an init."""
    if mode not in MODES:
        raise ContainerError(f"--systemd must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "true":
        return mode == "always"
    return bool(argv) and (argv[0] in INIT_COMMANDS or os.path.basename(argv[0]) == "systemd")


def configure(spec: Spec) -> None:
    """Make `spec` a systemd container: its environment, its stop signal, the mounts it gets."""
    spec.systemd = True
    spec.env = merge_env(spec.env, [ENVIRONMENT])
    spec.stop_signal = STOP_SIGNAL


# -- on the host: the container's cgroup2 cgroup on a cgroup v1 host ---------------------------------


class UnifiedCgroup:
    """`lazyctr/<id>` in the cgroup2 hierarchy of a hybrid host, for systemd's own bookkeeping."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, container_id: str) -> UnifiedCgroup | None:
        """None where the container's own cgroup is cgroup2 already (a v2 host): that one serves."""
        if detect_layout() == "v2":
            return None
        found = [Path(m.point) for m in mounts() if m.fstype == "cgroup2"]
        if not found:
            raise ContainerError("--systemd needs a cgroup2 hierarchy, and this host has only cgroup v1")
        path = found[0] / PARENT / container_id
        path.mkdir(parents=True)
        return cls(path)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self, timeout: float = 10.0) -> None:
        """Remove it with every cgroup systemd made in it, deepest first, once their processes are gone."""
        deadline = time.monotonic() + timeout
        for directory, _, _ in sorted(os.walk(self.path), key=lambda walked: -walked[0].count("/")):
            while True:
                try:
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:  # still busy: the container's last processes are being reaped
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        with suppress(OSError):
            self.path.parent.rmdir()  # the shared parent, if no other container uses it


# -- in the container's PID 1 --------------------------------------------------------------------


@setup_step
def mount_systemd_tmpfs(rootfs: Path) -> None:
    """tmpfs where systemd keeps its runtime state and logs, as podman mounts them."""
    for path, options in TMPFS.items():
        target = resolve_in_root(rootfs, path, follow_last=True)
        target.mkdir(parents=True, exist_ok=True)
        sc.mount("tmpfs", target, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, options)


@setup_step
def mount_cgroup2() -> None:
    """cgroup2 at /sys/fs/cgroup, writable: in the container's cgroup namespace, its own subtree."""
    if not os.path.isdir("/sys/fs/cgroup"):
        raise ContainerError("/sys/fs/cgroup is missing in the container")
    sc.mount("cgroup2", "/sys/fs/cgroup", "cgroup2", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "")
