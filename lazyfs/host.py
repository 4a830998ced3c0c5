"""What the host says about its mounts and processes: the one mount-table reader and liveness check.

lazyfs needs both (is a mount up, is its daemon alive) and is the leftmost room that does, so
runtime/, benchmarks/ and tests/ use these too instead of their own copies.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """The kernel writes a space, tab, newline or backslash in a mountinfo path as `\\040` and the like."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


class Mount(NamedTuple):
    """One line of the mount table: where, what file system, and its super-block options."""

    point: str
    fstype: str
    options: str


def mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[Mount]:
    """Every mount, in the table's order, with escaped characters restored."""
    with open(mountinfo) as f:
        lines = [line.split() for line in f if line.strip()]
    # The optional fields end with "-"; the type, the source and the super-block options follow it.
    return [
        Mount(_unescape(fields[4]), fields[fields.index("-") + 1], fields[fields.index("-") + 3])
        for fields in lines
    ]


def mount_points(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[str]:
    """Every mount point of the mount table, in its order, with escaped characters restored."""
    return [mount.point for mount in mounts(mountinfo)]


def is_mounted(mountpoint: Path) -> bool:
    """Whether something is mounted exactly at `mountpoint`."""
    return str(mountpoint.resolve()) in mount_points()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (a process that died, not yet reaped by its parent) does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False
