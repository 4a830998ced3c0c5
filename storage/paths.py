"""Paths inside an image: normalising tar/TOC names and resolving them without leaving the root."""

from __future__ import annotations

import os
from collections.abc import Callable
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


def resolve(name: str, link_at: Callable[[list[str]], str | None], follow_last: bool = False) -> list[str]:
    """The components of `name` with symlinks followed as if the root were `/` (like chroot).

    `link_at(parts)` gives the target of the symlink at `parts`, or None if it is not one.
    Intermediate symlinks (and the last component with `follow_last`) are resolved against the
    root, so an absolute or `..`-laden target can never lead outside it.
    """
    pending = [p for p in name.split("/") if p not in ("", ".")][::-1]
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        target = link_at([*resolved, part]) if pending or follow_last else None
        if target is None:
            resolved.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise UnsafePath(f"too many levels of symbolic links in {name!r}")
        if target.startswith("/"):
            resolved = []
        pending.extend([p for p in target.split("/") if p not in ("", ".")][::-1])
    return resolved


def resolve_in_root(root: Path, name: str, follow_last: bool = False) -> Path:
    """`name` joined under the directory `root`, its symlinks resolved inside `root`."""

    def link_at(parts: list[str]) -> str | None:
        path = root.joinpath(*parts)
        return os.readlink(path) if path.is_symlink() else None

    return root.joinpath(*resolve(name, link_at, follow_last))
