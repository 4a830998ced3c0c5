"""Human-readable forms of sizes, times and file modes for the command line."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from datetime import datetime

from storage.toc import NS, parse_time_ns


def human_size(size: float) -> str:
    """Sizes in SI units, as docker and podman print them."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g}{unit}" if unit != "B" else f"{int(size)}B"
        size /= 1000
    raise AssertionError("unreachable")


def human_age(stamp: str | None) -> str:
    if not stamp:
        return "unknown"
    try:
        seconds = max(0, time.time() - parse_time_ns(stamp) / NS)
    except (ValueError, OverflowError, TypeError):
        return "unknown"
    for unit, length in (
        ("year", 31536000),
        ("month", 2592000),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    ):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "less than a minute ago"


def ls_time(mtime_ns: int) -> str:
    """Local `YYYY-MM-DD HH:MM`, or `?` padded to that width for a time datetime cannot show.

    A TOC may hold any RFC 3339 time: Go's zero time (year 1) or the last second of year 9999 in
    a zone west of UTC fall outside datetime's range once converted to local time.
    """
    try:
        when = datetime.fromtimestamp(mtime_ns // NS)
    except (ValueError, OverflowError, OSError):
        return f"{'?':<16}"
    # Not strftime: glibc's %Y does not pad years before 1000 to four digits.
    return f"{when.year:04}-{when.month:02}-{when.day:02} {when.hour:02}:{when.minute:02}"


def ls_line(name: str, attrs: Mapping[str, int], target: str = "") -> str:
    """One line of `ls -l` from a file's stat: mode, owner, size, mtime, name (and a symlink's target)."""
    mode = attrs["st_mode"]
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        size_text = f"{os.major(attrs['st_rdev'])}, {os.minor(attrs['st_rdev'])}"
    else:
        size_text = str(attrs["st_size"])
    when = ls_time(attrs["st_mtime"])
    link = f" -> {target}" if stat.S_ISLNK(mode) else ""
    return (
        f"{stat.filemode(mode)} {attrs['st_uid']:>5} {attrs['st_gid']:>5} {size_text:>10} {when} {name}{link}"
    )
