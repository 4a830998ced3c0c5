"""The file copier of COPY and ADD: entries written into an overlayfs-style upper directory that
becomes the step's layer, with --chown, --chmod and --link applied.

Missing parents of the destination are created 0755 (owned by the --chown owner, else root);
parents that exist in the image are written into the upper directory with their existing metadata,
so the layer does not change them. Files keep their modes and mtimes (clamped to SOURCE_DATE_EPOCH
when given); files that share an inode in the source stay hard links. With --link the base image is
not looked at: nothing in it can redirect the destination.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
import time
from base64 import b64decode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import BuildError
from builder.image_files import ImageFiles
from builder.sources import CopyRequest, Entry, Source
from storage.errors import NotFound, StorageError
from storage.tree import Node

PARENT_MODE = 0o755


@dataclass
class Destination:
    parts: list[str]  # the destination, resolved inside the target image
    is_dir: bool  # ends in `/` or is an existing directory: sources go inside it

    @classmethod
    def of(cls, request: CopyRequest, target: ImageFiles) -> Destination:
        dest = request.dest
        path = posixpath.join("/", request.workdir or "/", dest)
        wants_dir = dest.endswith("/") or dest in ("", ".") or dest.endswith("/.") or path.rstrip("/") == ""
        if request.link:  # the base is not looked at: nothing in it can redirect or turn dest into a dir
            parts = [p for p in posixpath.normpath(path).split("/") if p]
            return cls(parts, wants_dir)
        parts = target.resolve(path)
        node = target.exact(parts)
        return cls(parts, wants_dir or (node is not None and node.is_dir))

    def file_parts(self, name: str) -> list[str]:
        if self.is_dir:
            return [*self.parts, name]
        if not self.parts:
            raise BuildError("cannot copy a file to /: the root is a directory")
        return self.parts


def owner_ids(chown: str | None, target: ImageFiles) -> tuple[int, int] | None:
    if chown is None:
        return None
    user, sep, group = chown.partition(":")
    if not user or (sep and not group):
        raise BuildError(f"invalid --chown {chown!r}: expected user[:group]")
    return target.user_ids(user, group if sep else None)


@dataclass
class Writer:
    """Writes entries into the upper directory. Directory modes and times are set last: writing
    their children would change the times, and a read-only mode would stop us writing them."""

    upper: Path
    target: ImageFiles | None  # the image written onto; None with --link: the base is not looked at
    owner: tuple[int, int] | None  # --chown
    chmod: Callable[[int, bool], int] | None  # --chmod
    clamp: int | None  # SOURCE_DATE_EPOCH in ns: no mtime is later
    written: dict[str, str] = field(default_factory=dict)  # upper path -> kind
    dirs: dict[str, tuple[int, int]] = field(default_factory=dict)  # directory -> (mode, mtime_ns), set last
    inodes: dict[object, str] = field(default_factory=dict)  # source inode -> the upper path that holds it

    def __post_init__(self) -> None:
        self.now_ns = time.time_ns() if self.clamp is None else self.clamp

    def _node(self, parts: list[str]) -> Node | None:
        return self.target.exact(parts) if self.target is not None else None

    def _mtime(self, ns: int) -> int:
        return ns if self.clamp is None else min(ns, self.clamp)

    def parents(self, parts: list[str]) -> None:
        """Make every directory on the way to `parts` (inclusive), copying up those the target has."""
        for i in range(1, len(parts) + 1):
            path = "/".join(parts[:i])
            kind = self.written.get(path)
            if kind == "dir":
                continue
            if kind is not None:
                raise BuildError(f"cannot copy to /{path}: not a directory")
            node = self._node(parts[:i])
            if node is not None and not node.is_dir:
                raise BuildError(f"cannot copy to /{path}: not a directory")
            if node is not None:
                self._existing_dir(path, node)
            else:
                uid, gid = self.owner or (0, 0)
                entry = Entry("dir", PARENT_MODE, uid, gid, self.now_ns)
                self._mkdir(path, entry, entry.mode)

    def _existing_dir(self, path: str, node: Node) -> None:
        meta = node.entry
        entry = Entry(
            "dir",
            meta.mode & 0o7777,
            meta.uid,
            meta.gid,
            meta.mtime_ns,
            xattrs={k: b64decode(v) for k, v in meta.xattrs.items()},
        )
        self._mkdir(path, entry, entry.mode, clamp=False)

    def _mkdir(self, path: str, entry: Entry, mode: int, clamp: bool = True) -> None:
        full = self.upper / path
        if self.written.get(path) != "dir":
            self._remove(path)
            os.mkdir(full, 0o700)
            self.written[path] = "dir"
        os.lchown(full, entry.uid, entry.gid)
        self._xattrs(full, entry)
        self.dirs[path] = (mode, self._mtime(entry.mtime_ns) if clamp else entry.mtime_ns)

    def directory(self, parts: list[str], entry: Entry, keep_existing: bool = False) -> None:
        """A directory from the source. With `keep_existing` (the destination directory itself),
        one the target already has keeps its metadata, as BuildKit leaves it."""
        path = "/".join(parts)
        node = self._node(parts)
        if keep_existing and node is not None and node.is_dir:
            if self.written.get(path) != "dir":
                self._existing_dir(path, node)
            return
        if keep_existing and node is not None:
            raise BuildError(f"cannot copy to /{path}: not a directory")
        self._mkdir(path, self._owned(entry), self._mode(entry))

    def entry(self, parts: list[str], tree: Source, path: str, entry: Entry) -> None:
        if entry.kind == "dir":
            self.directory(parts, entry)
            return
        target = "/".join(parts)
        full = self.upper / target
        if entry.inode is not None and self.written.get(self.inodes.get(entry.inode, "")) == "reg":
            self._remove(target)
            os.link(self.upper / self.inodes[entry.inode], full)
            self.written[target] = entry.kind
            return
        owned = self._owned(entry)
        if entry.kind == "reg":
            self.file(parts, tree.content(path), self._mode(entry), entry.mtime_ns, owned)
            if entry.inode is not None:
                self.inodes[entry.inode] = target
            return
        self._remove(target)
        if entry.kind == "symlink":
            os.symlink(entry.link, full)
        else:
            kinds = {"char": stat.S_IFCHR, "block": stat.S_IFBLK, "fifo": stat.S_IFIFO}
            os.mknod(full, kinds[entry.kind] | 0o600, entry.rdev)
        self.written[target] = entry.kind
        os.lchown(full, owned.uid, owned.gid)
        if entry.kind != "symlink":
            os.chmod(full, self._mode(entry))
        self._xattrs(full, owned)
        os.utime(full, ns=(self._mtime(entry.mtime_ns),) * 2, follow_symlinks=False)

    def file(
        self,
        parts: list[str],
        content: bytes | Iterator[bytes],
        mode: int,
        mtime_ns: int | None,
        entry: Entry | None = None,
    ) -> None:
        """A regular file; without `entry` (heredocs, downloads) it is new: --chmod and --chown apply."""
        path = "/".join(parts)
        full = self.upper / path
        if entry is None:
            uid, gid = self.owner or (0, 0)
            entry = Entry("reg", mode, uid, gid, mtime_ns if mtime_ns is not None else self.now_ns)
            mode = self.chmod(mode, False) if self.chmod is not None else mode
        self._remove(path)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            if isinstance(content, bytes):
                out.write(content)
            else:
                for data in content:
                    out.write(data)
            os.fchown(out.fileno(), entry.uid, entry.gid)  # before chmod: chown clears setuid bits
            os.fchmod(out.fileno(), mode)
        self._xattrs(full, entry)
        self.written[path] = "reg"
        os.utime(full, ns=(self._mtime(entry.mtime_ns),) * 2, follow_symlinks=False)

    def _owned(self, entry: Entry) -> Entry:
        if self.owner is None:
            return entry
        return Entry(**{**entry.__dict__, "uid": self.owner[0], "gid": self.owner[1]})

    def _mode(self, entry: Entry) -> int:
        return self.chmod(entry.mode, entry.kind == "dir") if self.chmod is not None else entry.mode

    def _xattrs(self, full: Path, entry: Entry) -> None:
        for name, value in entry.xattrs.items():
            # A name space this file system or user may not write: the layer goes without it.
            with contextlib.suppress(OSError):
                os.setxattr(full, name, value, follow_symlinks=False)

    def _remove(self, path: str) -> None:
        """Make room for `path` in the upper directory (a later source replaces an earlier one)."""
        full = self.upper / path
        if path not in self.written:
            return
        if self.written.pop(path) == "dir":
            shutil.rmtree(full)
            for other in [p for p in self.written if p.startswith(path + "/")]:
                del self.written[other]
            for other in [p for p in self.dirs if p == path or p.startswith(path + "/")]:
                del self.dirs[other]
        else:
            os.unlink(full)

    def finish(self) -> None:
        for path in sorted(self.dirs, key=lambda p: -p.count("/")):
            mode, mtime_ns = self.dirs[path]
            full = self.upper / path
            os.chmod(full, mode)
            os.utime(full, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def make_dirs(files: ImageFiles, upper: Path, path: str, clamp_ns: int | None) -> None:
    """Create `path` in `upper` unless the image has it; the existing parents on the way are copied
    up with their metadata, as overlayfs would."""
    try:
        node = files.tree.lookup(path)
        if node.is_dir:
            return
    except (NotFound, StorageError):
        pass
    parts = [p for p in path.split("/") if p]
    current = upper
    walked = ""
    for part in parts:
        walked = f"{walked}/{part}"
        current = current / part
        try:
            existing = files.tree.lookup(walked, follow_last=False)
        except (NotFound, StorageError):
            existing = None
        if existing is not None and not existing.is_dir:
            raise BuildError(f"WORKDIR {path}: {walked} exists and is not a directory")
        current.mkdir(exist_ok=True)
        if existing is not None:
            os.chmod(current, existing.entry.mode & 0o7777)
            os.chown(current, existing.entry.uid, existing.entry.gid)
        else:
            os.chmod(current, 0o755)
    if clamp_ns is not None:
        for directory in [upper, *upper.rglob("*")]:
            os.utime(directory, ns=(clamp_ns, clamp_ns), follow_symlinks=False)


def parse_chmod(text: str) -> Callable[[int, bool], int]:
    """--chmod as a function of (mode, is_dir): octal (`755`) or symbolic (`u+x,g-w,o=r,a+X`)."""
    if text and all(c in "01234567" for c in text):
        if len(text) > 4:
            raise BuildError(f"invalid --chmod {text!r}: at most 4 octal digits")
        value = int(text, 8)
        return lambda mode, is_dir: value
    clauses = []
    for clause in text.split(","):
        who_end = 0
        while who_end < len(clause) and clause[who_end] in "ugoa":
            who_end += 1
        who, rest = clause[:who_end] or "a", clause[who_end:]
        if not rest or rest[0] not in "+-=" or any(c not in "rwxXst" for c in rest[1:]):
            raise BuildError(f"invalid --chmod {text!r}: expected octal digits or [ugoa][+-=][rwxXst]")
        clauses.append((who, rest[0], rest[1:]))

    def apply(mode: int, is_dir: bool) -> int:
        for who, op, perms in clauses:
            mask = 0
            for w in "ugo" if "a" in who else who:
                shift = {"u": 6, "g": 3, "o": 0}[w]
                bits = 0
                for p in perms:
                    if p == "r":
                        bits |= 4
                    elif p == "w":
                        bits |= 2
                    elif p == "x" or (p == "X" and (is_dir or mode & 0o111)):
                        bits |= 1
                mask |= bits << shift
                if "s" in perms and w in "ug":
                    mask |= stat.S_ISUID if w == "u" else stat.S_ISGID
                if "t" in perms and w == "o":
                    mask |= stat.S_ISVTX
            if op == "+":
                mode |= mask
            elif op == "-":
                mode &= ~mask
            else:
                clear = 0
                for w in "ugo" if "a" in who else who:
                    clear |= 0o7 << {"u": 6, "g": 3, "o": 0}[w]
                mode = (mode & ~clear) | mask
        return mode & 0o7777

    return apply
