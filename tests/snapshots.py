"""What a directory tree is, as far as an image decides it, and comparing two of them path by path."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Meta:
    """What a path is on disk, as far as a layer decides it (not atime, inode numbers, dir sizes)."""

    kind: str
    mode: int  # permission bits incl. setuid, setgid and sticky
    uid: int
    gid: int
    size: int | None  # of regular files and symlinks; a directory's size is the file system's business
    mtime_ns: int
    nlink: int | None  # of everything but directories
    link: str | None  # symlink target
    rdev: tuple[int, int] | None  # device numbers of char and block devices
    xattrs: tuple[tuple[str, bytes], ...]
    sha256: str | None  # contents of regular files


@dataclass
class Snapshot:
    entries: dict[str, Meta]
    links: set[frozenset[str]]  # paths sharing an inode (hard links), in groups of two or more


KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "reg",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def snapshot(root: Path) -> Snapshot:
    entries: dict[str, Meta] = {}
    inodes: dict[int, list[str]] = defaultdict(list)
    pending = [""]
    while pending:
        rel = pending.pop()
        path = os.path.join(root, rel) if rel else str(root)
        st = os.lstat(path)
        kind = KINDS[stat.S_IFMT(st.st_mode)]
        digest = None
        if kind == "reg":
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        xattrs = tuple(
            sorted(
                (name, os.getxattr(path, name, follow_symlinks=False))
                for name in os.listxattr(path, follow_symlinks=False)
            )
        )
        entries["/" + rel] = Meta(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind in ("reg", "symlink") else None,
            mtime_ns=st.st_mtime_ns,
            nlink=None if kind == "dir" else st.st_nlink,
            link=os.readlink(path) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else None,
            xattrs=xattrs,
            sha256=digest,
        )
        if kind == "dir":
            pending.extend(os.path.join(rel, name) for name in os.listdir(path))
        else:
            inodes[st.st_ino].append("/" + rel)
    return Snapshot(entries, {frozenset(paths) for paths in inodes.values() if len(paths) > 1})


def assert_same_tree(
    expected: Snapshot, found: Snapshot, what: str, against: str = "GNU tar's extraction of the original"
) -> None:
    problems: list[str] = []
    missing = sorted(expected.entries.keys() - found.entries.keys())
    extra = sorted(found.entries.keys() - expected.entries.keys())
    if missing:
        problems.append(f"{len(missing)} paths missing, e.g. {missing[:10]}")
    if extra:
        problems.append(f"{len(extra)} unexpected paths, e.g. {extra[:10]}")
    differing: dict[str, list[str]] = defaultdict(list)  # by field, so 900 paths make one line
    for path in sorted(expected.entries.keys() & found.entries.keys()):
        want, got = expected.entries[path], found.entries[path]
        for field in dataclasses.fields(Meta):
            a, b = getattr(want, field.name), getattr(got, field.name)
            if a != b:
                differing[field.name].append(f"{path}: expected {a!r}, found {b!r}")
    for name, paths in differing.items():
        shown = "; ".join(paths[:5])
        problems.append(f"{name} differs on {len(paths)} paths, e.g. {shown}")
    if expected.links != found.links:
        problems.append(
            f"hard-link groups differ: expected {sorted(map(sorted, expected.links))}, "
            f"found {sorted(map(sorted, found.links))}"
        )
    if problems:
        shown = "\n  ".join(problems)
        pytest.fail(f"{what} differs from {against}:\n  {shown}")
