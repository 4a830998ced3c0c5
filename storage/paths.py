"""Paths inside an image: normalising tar/TOC names and resolving them without leaving the root."""

from __future__ import annotations

import os
from pathlib import Path

from storage.errors import UnsafePath

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40


def clean_name(name: str) -> str:
    """The canonical relative form of an entry name: `./usr/bin/` -> `usr/bin`, root -> ``.

    Absolute names and names with `..` components are refused: they would escape the root.
    """
    if name.startswith("/"):
        raise UnsafePath(f"absolute path {name!r} in archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafePath(f"path {name!r} escapes the root")
    if any("\0" in p for p in parts):
        raise UnsafePath(f"path {name!r} contains a NUL byte")
    return "/".join(parts)


def resolve_in_root(root: Path, name: str, follow_last: bool = False) -> Path:
    """Join `name` under `root`, following symlinks as if `root` were `/` (like chroot).

    Intermediate symlinks (and the last component with `follow_last`) are resolved against
    the root, so an absolute or `..`-laden link target can never lead outside it.
    """
    pending = [p for p in name.split("/") if p not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if (pending or follow_last) and candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise UnsafePath(f"too many levels of symbolic links in {name!r}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
            continue
        resolved.append(part)
    return root.joinpath(*resolved)
