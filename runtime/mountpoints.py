"""The mount points a container's set-up makes in its root, and how to keep them out of its changes.

A RUN step's layer and a commit are the container's upper directory; the files and directories made
only so that something could be mounted on them (volumes, /proc, the network files) are no change of
the container's, so they are pruned before the upper directory becomes a layer.
"""

from __future__ import annotations

import os
from pathlib import Path

# Bound over the image's own, as docker and BuildKit do: a minimal image (debootstrap's minbase) has no
# /etc/hosts, and without `localhost` a server such as postgresql cannot open its socket.
NETWORK_FILES = ("/etc/hosts", "/etc/resolv.conf")
HOSTNAME_FILE = "/etc/hostname"  # bound too on a bridge network (the image's stays on none and host)
RUNTIME_MOUNT_POINTS = ("/proc", "/sys", "/dev", *NETWORK_FILES, HOSTNAME_FILE)


def mount_points(upper: Path, lowers: list[Path], targets: list[str]) -> set[str]:
    """What in a container's upper directory only the mounts made (paths relative to it): the empty
    files and directories created as mount points for `targets` (its volumes) and the runtime's own,
    and the copies-up of existing ones.

    `lowers` are the image's layer directories, top last. Without them (a commit: a lazy root's lower is
    unmounted by then) an empty directory or file there counts as a mount point: the container cannot
    have made it itself, as it cannot remove or write through a mount point, only the mounted file.
    """
    found: set[str] = set()
    for target in [*targets, *RUNTIME_MOUNT_POINTS]:
        parts = [p for p in target.split("/") if p]
        while parts:
            relative = "/".join(parts)
            path = upper / relative
            lower = next(
                (base / relative for base in reversed(lowers) if os.path.lexists(base / relative)), None
            )
            if not os.path.lexists(path) or path.is_symlink():
                parts.pop()
                continue
            if path.is_dir() and all(f"{relative}/{child.name}" in found for child in path.iterdir()):
                if lower is not None and not _same_metadata(path, lower):
                    break
            elif not (
                path.is_file()
                and (
                    (lower is None and path.stat().st_size == 0)
                    or (lower is not None and _same_file(path, lower))
                )
            ):
                break
            found.add(relative)
            parts.pop()
    return found


def prune_mount_points(upper: Path, lowers: list[Path], targets: list[str]) -> None:
    """Remove the mount_points from `upper`, so no mount point ends in a RUN step's layer."""
    for relative in sorted(mount_points(upper, lowers, targets), key=lambda name: -name.count("/")):
        path = upper / relative
        if path.is_dir():
            path.rmdir()
        else:
            path.unlink()


def _same_metadata(a: Path, b: Path) -> bool:
    sa, sb = a.lstat(), b.lstat()
    return (sa.st_mode, sa.st_uid, sa.st_gid) == (sb.st_mode, sb.st_uid, sb.st_gid)


def _same_file(a: Path, b: Path) -> bool:
    return b.is_file() and _same_metadata(a, b) and a.read_bytes() == b.read_bytes()
