"""The build context: the directory COPY and ADD read their sources from, seen through .dockerignore.

A path .dockerignore excludes does not exist for COPY, except a directory that holds a re-included
path (`!dir/keep`): like docker, the directory is sent with just that path in it. Sources are
matched with Go's filepath.Match wildcards, one path component at a time. Symlinks are resolved on
the real file system, and a source whose path or link target leads outside the context is refused:
the context is all a build may read of the machine it runs on.

File digests are remembered per (path, inode, size, mtime, ctime), in memory and, with
`digest_cache`, in a JSON file, so computing a COPY's cache key for an unchanged large context
hashes nothing again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from builder.errors import BuildError
from storage.errors import UnsafePath
from storage.paths import resolve

HASH_BUFSIZE = 1 << 20
_INSIDE = "\0"  # the context's root while resolving a path in it: no file name holds a NUL


class Ignore(Protocol):
    def excluded(self, path: str) -> bool: ...

    def walk(self, context: Path) -> Iterator[str]: ...


class _NothingIgnored:
    def excluded(self, path: str) -> bool:
        return False

    def walk(self, context: Path) -> Iterator[str]:
        for directory, dirs, files in os.walk(context):
            base = Path(directory).relative_to(context).as_posix()
            for name in [*dirs, *files]:
                yield name if base == "." else f"{base}/{name}"


class OutsideContext(BuildError):
    """A source path or a symlink on its way leads outside the build context."""


class BuildContext:
    def __init__(self, root: Path, ignore: Ignore, digest_cache: Path | None = None) -> None:
        self.root = root
        self.ignore = ignore
        self.digest_cache = digest_cache
        self._real_root = Path(os.path.realpath(root))
        self._visible: set[str] | None = None
        self._digests: dict[str, str] = {}
        self._digests_loaded = False
        self._digests_dirty = False

    @classmethod
    def plain(cls, root: Path) -> BuildContext:
        """A directory read without any .dockerignore (an extracted archive)."""
        return cls(root, _NothingIgnored())

    # -- what exists ---------------------------------------------------------------------------

    def visible(self, path: str) -> bool:
        """Whether the context-relative `path` (`` = the root) was sent to the build."""
        if not path:
            return True
        if self._visible is None:
            self._visible = self._scan()
        return path in self._visible

    def _scan(self) -> set[str]:
        """Every path .dockerignore lets through, with the directories that lead to them."""
        return set(self.ignore.walk(self._real_root))

    def lstat(self, path: str) -> os.stat_result:
        return os.lstat(self._real_root / path) if path else os.stat(self._real_root)

    def children(self, path: str) -> list[str]:
        """The names in directory `path` that exist for the build, sorted."""
        try:
            names = os.listdir(self._real_root / path)
        except OSError:
            return []
        return sorted(n for n in names if self.visible(f"{path}/{n}" if path else n))

    def open(self, path: str) -> Iterator[bytes]:
        with open(self._real_root / path, "rb") as f:
            while data := f.read(HASH_BUFSIZE):
                yield data

    def readlink(self, path: str) -> str:
        return os.readlink(self._real_root / path)

    # -- sources -------------------------------------------------------------------------------

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """The context-relative path `path` leads to, symlinks followed as the real file system
        does; OutsideContext if that leaves the context, on the way or at the end."""
        outside = OutsideContext(f"{path}: outside the build context")
        if "\0" in path:
            raise outside

        # storage's resolver stays inside a root as chroot does: `..` stops at it and an absolute
        # target starts from it. A build must refuse both instead, so the path is resolved below a
        # component no file name can be: a `..` that climbs out removes it, and shows.
        def link_at(parts: list[str]) -> str | None:
            if parts[:1] != [_INSIDE]:
                raise outside
            here = self._real_root.joinpath(*parts[1:])
            if not here.is_symlink():
                return None
            target = os.readlink(here)
            if target.startswith("/"):
                raise outside  # an absolute target names the builder's machine, not the context
            return target

        try:
            parts = resolve(f"{_INSIDE}/{path}", link_at, follow_last)
        except UnsafePath:
            raise BuildError(f"{path}: too many levels of symbolic links") from None
        if parts[:1] != [_INSIDE]:
            raise outside
        return "/".join(parts[1:])

    def glob(self, pattern: str) -> list[tuple[str, str]]:
        """The sources `pattern` names: (the path as matched, the path it resolves to), sorted.

        `pattern` is context-relative (a leading `/` is the context root); `..` may not climb out.
        Wildcards follow Go's filepath.Match; the last component is followed if it is a symlink.
        """
        parts = [p for p in pattern.split("/") if p not in ("", ".")]
        depth = 0
        for part in parts:
            depth += -1 if part == ".." else 1
            if depth < 0:
                raise OutsideContext(f"{pattern}: outside the build context")
        normal = posixpath.normpath("/".join(parts)) if parts else ""
        parts = [p for p in normal.split("/") if p not in ("", ".")]
        found: list[tuple[str, str]] = [("", "")]
        try:
            for part in parts:
                step: list[tuple[str, str]] = []
                for shown, real in found:
                    for name in self._names(real, part):
                        joined = f"{real}/{name}" if real else name
                        target = self.resolve(joined, follow_last=True)
                        if self._exists(joined) and self._exists(target):
                            step.append((f"{shown}/{name}" if shown else name, target))
                found = step
        except OutsideContext:
            raise OutsideContext(f"{pattern}: outside the build context") from None
        return sorted(found)

    def _names(self, directory: str, part: str) -> list[str]:
        return [n for n in self.children(directory) if go_match(part, n)] if has_magic(part) else [part]

    def _exists(self, path: str) -> bool:
        if not self.visible(path):
            return False
        try:
            self.lstat(path)
        except OSError:
            return False
        return True

    # -- digests -------------------------------------------------------------------------------

    def file_digest(self, path: str, st: os.stat_result) -> str:
        """sha256 hex of a regular file's contents, remembered while the file is unchanged."""
        self._load_digests()
        key = f"{path}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        known = self._digests.get(key)
        if known is None:
            hasher = hashlib.sha256()
            for data in self.open(path):
                hasher.update(data)
            known = self._digests[key] = hasher.hexdigest()
            self._digests_dirty = True
        return known

    def _load_digests(self) -> None:
        if self._digests_loaded or self.digest_cache is None:
            return
        self._digests_loaded = True
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(self.digest_cache.read_bytes())
            root = data.get("root") if isinstance(data, dict) else None
            digests = data.get("digests") if isinstance(data, dict) else None
            if root == str(self._real_root) and isinstance(digests, dict):
                self._digests.update(
                    (k, v) for k, v in digests.items() if isinstance(k, str) and isinstance(v, str)
                )

    def save_digests(self) -> None:
        """Write the remembered digests to `digest_cache` (atomically), if any are new."""
        if self.digest_cache is None or not self._digests_dirty:
            return
        from storage.files import atomic_write

        self.digest_cache.parent.mkdir(parents=True, exist_ok=True)
        body = {"root": str(self._real_root), "digests": self._digests}
        atomic_write(self.digest_cache, json.dumps(body, sort_keys=True).encode())
        self._digests_dirty = False


def has_magic(part: str) -> bool:
    return any(c in part for c in "*?[\\")


def go_match(pattern: str, name: str) -> bool:
    """Go's filepath.Match for one path component: `*`, `?`, `[...]` (with `^` negation), `\\`."""
    return _compile(pattern)(name)


@lru_cache(maxsize=256)
def _compile(pattern: str) -> Callable[[str], bool]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i + 1 >= len(pattern):
                raise BuildError(f"bad pattern {pattern!r}: trailing backslash")
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            end, cls = _char_class(pattern, i)
            out.append(cls)
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    regex = re.compile("".join(out), re.DOTALL)
    return lambda name: regex.fullmatch(name) is not None


def _char_class(pattern: str, start: int) -> tuple[int, str]:
    """The `[...]` at `start`: (index of its `]`, the regex class)."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "^"
    if negate:
        i += 1
    ranges: list[str] = []
    first = True
    while True:
        if i >= len(pattern):
            raise BuildError(f"bad pattern {pattern!r}: unterminated [")
        if pattern[i] == "]" and not first:
            break
        lo, i = _class_char(pattern, i)
        hi = lo
        if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]":
            hi, i = _class_char(pattern, i + 1)
            if hi < lo:
                raise BuildError(f"bad pattern {pattern!r}: range {lo}-{hi}")
        ranges.append(re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}")
        first = False
    return i, f"[{'^' if negate else ''}{''.join(ranges)}{'/' if negate else ''}]"


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    c = pattern[i]
    if c == "\\":
        if i + 1 >= len(pattern):
            raise BuildError(f"bad pattern {pattern!r}: trailing backslash")
        return pattern[i + 1], i + 2
    if c in "-]":  # Go wants these escaped inside a class
        raise BuildError(f"bad pattern {pattern!r}: unescaped {c!r} in [...]")
    return c, i + 1
