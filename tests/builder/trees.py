"""Directories of files for builder tests: a build context, a COPY source."""

from __future__ import annotations

import os
from pathlib import Path


def write_tree(root: Path, files: dict[str, bytes | str], mtime_ns: int | None = None) -> Path:
    """`root` with `files` in it (a str value is a symlink target); every mtime `mtime_ns` if given."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)
    if mtime_ns is not None:
        for path in [*root.rglob("*"), root]:
            os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    return root
