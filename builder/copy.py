"""COPY and ADD: which files a step reads (their digest goes into the step's cache key), and writing
them into an overlayfs-style upper directory that becomes the step's layer.

The rules are BuildKit's: a directory source copies its contents, not itself; a source that is a
symlink is followed, symlinks inside a copied directory stay links; several sources (or a wildcard
matching several) need a directory destination; missing parents of the destination are created
0755 (owned by the --chown owner, else root); parents that exist in the image are written into the
upper directory with their existing metadata, so the layer does not change them. Files keep their
modes and mtimes (clamped to SOURCE_DATE_EPOCH when given), and are owned by root unless --chown,
except files copied from an image (--from), which keep their owners. ADD extracts local tar
archives (told by content, not name) and downloads URLs, which it never extracts.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import time
from base64 import b64decode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, Protocol, cast

import zstandard

from builder.context import BuildContext, go_match, has_magic
from builder.dockerfile import Heredoc
from builder.dockerignore import DockerIgnore
from builder.errors import BuildError
from builder.fetch import Download, check_checksum, fetch, is_git, is_url
from builder.image_files import ImageFiles
from storage.errors import NotFound, StorageError
from storage.extract import extract_layer
from storage.paths import resolve
from storage.tree import Node

DIGEST_VERSION = b"lazyctr-copy-v1\0"
HEREDOC_MODE = 0o644
DOWNLOAD_MODE = 0o600
PARENT_MODE = 0o755
MULTIPLE_SOURCES = (
    "When using COPY with more than one source file, the destination must be a directory and end with a /"
)


@dataclass(frozen=True)
class CopyRequest:
    sources: list[str]  # already variable-expanded; for ADD may be URLs
    dest: str  # already expanded; relative dests are relative to workdir
    workdir: str = "/"
    chown: str | None = None  # "user[:group]", names or ids
    chmod: str | None = None  # octal "755" or symbolic "u+x,g-w"
    link: bool = False  # --link: the layer must not depend on the base
    excludes: tuple[str, ...] = ()  # --exclude patterns
    heredocs: tuple[Heredoc, ...] = ()  # COPY <<EOF /dest: heredoc names appear in `sources`
    add: bool = False  # ADD: local archives are extracted, URLs downloaded
    checksum: str | None = None  # ADD --checksum=sha256:... for URLs
    keep_git_dir: bool = False  # git sources are refused either way

    @property
    def verb(self) -> str:
        return "ADD" if self.add else "COPY"


# -- sources -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One file of a source, as lstat sees it."""

    kind: str  # dir, reg, symlink, char, block, fifo
    mode: int  # permission bits, with setuid/setgid/sticky
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    link: str = ""  # a symlink's target
    rdev: int = 0
    inode: object = None  # files with the same inode become hard links in the layer
    xattrs: dict[str, bytes] = field(default_factory=dict)


class Source(Protocol):
    """Where sources come from: the build context, an image (--from), an extracted archive."""

    def glob(self, pattern: str) -> list[tuple[str, str]]: ...

    def entry(self, path: str) -> Entry | None: ...
    def children(self, path: str) -> list[str]: ...
    def content(self, path: str) -> Iterator[bytes]: ...
    def content_digest(self, path: str, entry: Entry) -> str: ...


class ContextSource:
    def __init__(self, context: BuildContext, keep_owners: bool = False) -> None:
        self.context = context
        self.keep_owners = keep_owners  # an extracted archive's owners are kept; the context's are not

    def glob(self, pattern: str) -> list[tuple[str, str]]:
        return self.context.glob(pattern)

    def entry(self, path: str) -> Entry | None:
        try:
            st = self.context.lstat(path)
        except OSError:
            return None
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return None  # sockets: not files a layer can hold
        owner = (st.st_uid, st.st_gid) if self.keep_owners else (0, 0)
        return Entry(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=owner[0],
            gid=owner[1],
            mtime_ns=st.st_mtime_ns,
            size=st.st_size if kind == "reg" else 0,
            link=self.context.readlink(path) if kind == "symlink" else "",
            rdev=st.st_rdev if kind in ("char", "block") else 0,
            inode=(st.st_dev, st.st_ino) if kind == "reg" and st.st_nlink > 1 else None,
        )

    def children(self, path: str) -> list[str]:
        return self.context.children(path)

    def content(self, path: str) -> Iterator[bytes]:
        return self.context.open(path)

    def content_digest(self, path: str, entry: Entry) -> str:
        return self.context.file_digest(path, self.context.lstat(path))


_KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "reg",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
}


class ImageSource:
    """An image's files as a COPY --from source; paths are resolved as if the image root were `/`."""

    def __init__(self, files: ImageFiles) -> None:
        self.files = files

    def _node(self, path: str) -> Node | None:
        try:
            return self.files.tree.lookup(path, follow_last=False)
        except (NotFound, StorageError):
            return None

    def _resolve(self, path: str) -> str:
        def link_at(parts: list[str]) -> str | None:
            node = self._node("/".join(parts))
            return node.entry.link_name if node is not None and node.entry.type == "symlink" else None

        try:
            return "/".join(resolve(path, link_at, follow_last=True))
        except StorageError as e:
            raise BuildError(f"{path}: {e}") from None

    def glob(self, pattern: str) -> list[tuple[str, str]]:
        parts = [p for p in posixpath.normpath("/" + pattern).split("/") if p]
        found: list[tuple[str, str]] = [("", "")]
        for part in parts:
            step: list[tuple[str, str]] = []
            for shown, real in found:
                names = [n for n in self.children(real) if go_match(part, n)] if has_magic(part) else [part]
                for name in names:
                    target = self._resolve(f"{real}/{name}" if real else name)
                    if self._node(target) is not None:
                        step.append((f"{shown}/{name}" if shown else name, target))
            found = step
        return sorted(found)

    def entry(self, path: str) -> Entry | None:
        node = self._node(path)
        if node is None:
            return None
        meta, content = node.entry, node.content
        kind = "reg" if node.kind == "hardlink" else node.kind
        return Entry(
            kind=kind,
            mode=meta.mode & 0o7777,
            uid=meta.uid,
            gid=meta.gid,
            mtime_ns=meta.mtime_ns,
            size=content.size if kind == "reg" else 0,
            link=meta.link_name if kind == "symlink" else "",
            rdev=os.makedev(meta.dev_major, meta.dev_minor) if kind in ("char", "block") else 0,
            inode=(node.layer, content.path) if kind == "reg" else None,
            xattrs={k: b64decode(v) for k, v in meta.xattrs.items()},
        )

    def children(self, path: str) -> list[str]:
        node = self._node(path)
        return sorted(node.children or {}) if node is not None else []

    def content(self, path: str) -> Iterator[bytes]:
        node = self._node(path)
        assert node is not None
        try:
            yield from self.files.iter_content(node)
        except StorageError as e:
            raise BuildError(f"/{path} in {self.files.name}: {e}") from None

    def content_digest(self, path: str, entry: Entry) -> str:
        node = self._node(path)
        assert node is not None
        if node.content.digest is not None:
            return node.content.digest.hex
        hasher = hashlib.sha256()
        for data in self.content(path):
            hasher.update(data)
        return hasher.hexdigest()


def _tree(source: BuildContext | ImageFiles) -> Source:
    return ContextSource(source) if isinstance(source, BuildContext) else ImageSource(source)


# -- what a step reads --------------------------------------------------------------------------


@dataclass
class Match:
    """A local source path (or one match of a wildcard) and what it resolves to."""

    shown: str  # as matched, for naming the copy
    real: str  # where it leads once symlinks are followed
    entry: Entry


class Excludes:
    """--exclude patterns, matched against paths relative to each source (and against its name)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.matcher = DockerIgnore.parse("\n".join(patterns)) if patterns else None

    def excluded(self, path: str) -> bool:
        return self.matcher is not None and bool(path) and self.matcher.excluded(path)


def _matches(request: CopyRequest, tree: Source, pattern: str, excludes: Excludes) -> list[Match]:
    found = []
    try:
        matched = tree.glob(pattern)
    except BuildError as e:
        raise BuildError(f"{request.verb} failed: {e}") from None
    for shown, real in matched:
        entry = tree.entry(real)
        if entry is not None and not excludes.excluded(posixpath.basename(shown)):
            found.append(Match(shown, real, entry))
    return found


def _walk(tree: Source, root: str, excludes: Excludes, rel: str = "") -> Iterator[tuple[str, str, Entry]]:
    """(path relative to `root`, path in the tree, entry) for everything below directory `root`."""
    for name in tree.children(f"{root}/{rel}".strip("/")):
        child_rel = f"{rel}/{name}" if rel else name
        if excludes.excluded(child_rel):
            continue
        path = f"{root}/{child_rel}" if root else child_rel
        entry = tree.entry(path)
        if entry is None:
            continue
        yield child_rel, path, entry
        if entry.kind == "dir":
            yield from _walk(tree, root, excludes, child_rel)


def _heredoc(request: CopyRequest, source: str) -> Heredoc | None:
    name = source.removeprefix("<<").removeprefix("-").strip("'\"")
    for heredoc in request.heredocs:
        if source == heredoc.name or (source.startswith("<<") and name == heredoc.name):
            return heredoc
    return None


def _heredoc_body(heredoc: Heredoc) -> bytes:
    text = heredoc.content
    if heredoc.chomp:  # <<-EOF: leading tabs go, as in the shell
        text = "".join(line.lstrip("\t") for line in text.splitlines(keepends=True))
    return text.encode()


def _check_sources(request: CopyRequest) -> None:
    if not request.sources:
        raise BuildError(f"{request.verb} failed: no source files were specified")
    for source in request.sources:
        if _heredoc(request, source) is not None:
            continue
        if is_git(source):
            raise BuildError(f"{request.verb} failed: {source}: git sources are not supported")
        if is_url(source) and not request.add:
            raise BuildError(f"COPY failed: {source}: source can't be a URL for COPY")
    if request.checksum is not None:
        check_checksum(request.checksum)
        if not all(is_url(s) for s in request.sources):
            raise BuildError(f"{request.verb} failed: --checksum is only supported for HTTP(S) sources")


def _local_matches(request: CopyRequest, tree: Source) -> list[tuple[str, list[Match]]]:
    """Every local source with what it matched; a source that matches nothing is an error, except a
    wildcard when another source matched something (BuildKit allows empty wildcards)."""
    excludes = Excludes(request.excludes)
    out = []
    for source in request.sources:
        if _heredoc(request, source) is not None or is_url(source):
            continue
        found = _matches(request, tree, source, excludes)
        if not found and not has_magic(source):
            raise BuildError(f"{request.verb} failed: file not found in build context: {source}")
        out.append((source, found))
    if out and not any(found for _, found in out) and len(out) == len(request.sources):
        missing = ", ".join(source for source, _ in out)
        raise BuildError(f"{request.verb} failed: file not found in build context: {missing}")
    return out


def copy_digest(request: CopyRequest, source: BuildContext | ImageFiles) -> str:
    """sha256 hex over everything the step reads: relative paths, file types, modes, link targets and
    contents of the matched sources after .dockerignore and --exclude (not mtimes), owners of files
    from images, heredoc bodies, and for URLs the --checksum if given else the downloaded content's
    digest. It goes into the step's cache key: file contents are hashed once while they stay unchanged."""
    with _os_errors(request):
        return _copy_digest(request, source)


def _copy_digest(request: CopyRequest, source: BuildContext | ImageFiles) -> str:
    _check_sources(request)
    tree = _tree(source)
    hasher = hashlib.sha256(DIGEST_VERSION)

    def put(*fields: object) -> None:
        for value in fields:
            hasher.update(str(value).encode("utf-8", "surrogateescape") + b"\0")
        hasher.update(b"\n")

    for src in request.sources:
        heredoc = _heredoc(request, src)
        if heredoc is not None:
            put("heredoc", heredoc.name, hashlib.sha256(_heredoc_body(heredoc)).hexdigest())
        elif is_url(src):
            put("url", src, request.checksum or fetch(src).digest)
    excludes = Excludes(request.excludes)
    for src, found in _local_matches(request, tree):
        put("source", src)
        for match in found:
            put("match", match.shown)
            _put_entry(put, tree, match.real, match.entry)
            if match.entry.kind == "dir":
                for rel, path, entry in _walk(tree, match.real, excludes):
                    put("path", rel)
                    _put_entry(put, tree, path, entry)
    if isinstance(source, BuildContext):
        source.save_digests()
    return hasher.hexdigest()


def _put_entry(put: Callable[..., None], tree: Source, path: str, entry: Entry) -> None:
    content = tree.content_digest(path, entry) if entry.kind == "reg" else ""
    put(entry.kind, oct(entry.mode), entry.uid, entry.gid, entry.link, entry.rdev, content)


# -- writing the step ---------------------------------------------------------------------------


def copy_step(
    request: CopyRequest,
    source: BuildContext | ImageFiles,
    target: ImageFiles,
    upper: Path,
    clamp_mtime_ns: int | None = None,
) -> None:
    """Write what the step adds into `upper`, an empty directory laid out like an overlayfs upper dir
    (the caller turns it into a layer with storage.diff.upper_to_tar). `target` is the image the
    step writes onto: it decides whether dest is an existing directory, the metadata of parents that
    exist, and user and group names."""
    with _os_errors(request):
        _copy_step(request, source, target, upper, clamp_mtime_ns)


def _copy_step(
    request: CopyRequest,
    source: BuildContext | ImageFiles,
    target: ImageFiles,
    upper: Path,
    clamp_mtime_ns: int | None,
) -> None:
    _check_sources(request)
    tree = _tree(source)
    owner = _owner(request.chown, target)
    chmod = parse_chmod(request.chmod) if request.chmod is not None else None
    writer = Writer(upper, None if request.link else target, owner, chmod, clamp_mtime_ns)
    dest = Destination.of(request, target)

    local = _local_matches(request, tree)
    count = sum(len(found) for _, found in local) + sum(1 for s in request.sources if is_url(s))
    count += sum(1 for s in request.sources if _heredoc(request, s) is not None)
    if (len(request.sources) > 1 or count > 1) and not dest.is_dir:
        raise BuildError(MULTIPLE_SOURCES)

    for src in request.sources:
        heredoc = _heredoc(request, src)
        if heredoc is not None:
            parts = dest.file_parts(heredoc.name)
            writer.parents(parts[:-1])
            writer.file(parts, _heredoc_body(heredoc), HEREDOC_MODE, None)
        elif is_url(src):
            download = fetch(src, request.checksum)
            parts = dest.file_parts(download.filename)
            writer.parents(parts[:-1])
            with open(download.path, "rb") as f:
                writer.file(parts, _chunks(f), DOWNLOAD_MODE, download.mtime_ns)
    excludes = Excludes(request.excludes)
    for _, found in local:
        for match in found:
            if request.add and match.entry.kind == "reg" and isinstance(tree, ContextSource):
                compression = archive_compression(tree.context, match.real)
                if compression is not None:
                    _extract(tree, match, compression, dest, writer)
                    continue
            if match.entry.kind == "dir":
                _copy_dir(tree, match.real, dest.parts, excludes, writer)
            else:
                parts = dest.file_parts(posixpath.basename(match.shown))
                writer.parents(parts[:-1])
                writer.entry(parts, tree, match.real, match.entry)
    writer.finish()


@contextlib.contextmanager
def _os_errors(request: CopyRequest) -> Iterator[None]:
    """A file the step cannot read or write is the user's problem to fix: one line, no traceback."""
    try:
        yield
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise BuildError(f"{request.verb} failed: {where}{e.strerror or e}") from None


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while data := f.read(1 << 20):
        yield data


def _copy_dir(tree: Source, root: str, dest: list[str], excludes: Excludes, writer: Writer) -> None:
    writer.parents(dest[:-1])
    if dest:
        root_entry = tree.entry(root)
        assert root_entry is not None
        writer.directory(dest, root_entry, keep_existing=True)
    for rel, path, entry in _walk(tree, root, excludes):
        writer.entry([*dest, *rel.split("/")], tree, path, entry)


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
        parts = _resolve_in(target, path)
        node = _exact(target, parts)
        return cls(parts, wants_dir or (node is not None and node.is_dir))

    def file_parts(self, name: str) -> list[str]:
        if self.is_dir:
            return [*self.parts, name]
        if not self.parts:
            raise BuildError("cannot copy a file to /: the root is a directory")
        return self.parts


def _resolve_in(target: ImageFiles, path: str) -> list[str]:
    def link_at(parts: list[str]) -> str | None:
        node = _exact(target, parts)
        return node.entry.link_name if node is not None and node.entry.type == "symlink" else None

    try:
        return resolve(path, link_at, follow_last=True)
    except StorageError as e:
        raise BuildError(f"{path}: {e}") from None


def _exact(target: ImageFiles | None, parts: list[str]) -> Node | None:
    if target is None:
        return None
    node: Node | None = target.tree.root
    for part in parts:
        node = (node.children or {}).get(part) if node is not None else None
    return node


def _owner(chown: str | None, target: ImageFiles) -> tuple[int, int] | None:
    if chown is None:
        return None
    user, sep, group = chown.partition(":")
    if not user or (sep and not group):
        raise BuildError(f"invalid --chown {chown!r}: expected user[:group]")
    return target.user_ids(user, group if sep else None)


class Writer:
    """Writes entries into the upper directory. Directory modes and times are set last: writing
    their children would change the times, and a read-only mode would stop us writing them."""

    def __init__(
        self,
        upper: Path,
        target: ImageFiles | None,
        owner: tuple[int, int] | None,
        chmod: Callable[[int, bool], int] | None,
        clamp_mtime_ns: int | None,
    ) -> None:
        self.upper = upper
        self.target = target
        self.owner = owner
        self.chmod = chmod
        self.clamp = clamp_mtime_ns
        self.now_ns = time.time_ns() if clamp_mtime_ns is None else clamp_mtime_ns
        self.written: dict[str, str] = {}  # upper path -> kind
        self.dirs: dict[str, tuple[int, int]] = {}  # directory -> (mode, mtime_ns), applied in finish
        self.inodes: dict[object, str] = {}  # source inode -> the upper path that holds it

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
            node = _exact(self.target, parts[:i])
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
        node = _exact(self.target, parts)
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


# -- ADD of a local archive ---------------------------------------------------------------------

TAR_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def archive_compression(context: BuildContext, path: str) -> str | None:
    """How the file at `path` is compressed if it is a tar archive ("" for a plain tar), else None.
    Like docker, by content: the decompressed first block must be a valid tar header."""
    with open(context.root / path, "rb") as f:
        head = f.read(8)
        compression = next((name for magic, name in TAR_MAGICS if head.startswith(magic)), "")
        f.seek(0)
        try:
            with _decompressed(f, compression) as stream:
                block = stream.read(tarfile.BLOCKSIZE)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError):
            return None
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return compression


def _decompressed(f: IO[bytes], compression: str) -> BinaryIO:
    stream: object
    if compression == "gzip":
        stream = gzip.GzipFile(fileobj=f)
    elif compression == "bzip2":
        stream = bz2.BZ2File(f)
    elif compression == "xz":
        stream = lzma.LZMAFile(f)  # noqa: SIM115  # the caller closes it
    elif compression == "zstd":
        stream = zstandard.ZstdDecompressor().stream_reader(f, closefd=False)
    else:
        stream = f  # closed by the caller either way
    return cast(BinaryIO, stream)


def _extract(tree: ContextSource, match: Match, compression: str, dest: Destination, writer: Writer) -> None:
    """Unpack a local archive into the destination directory: first into a private directory with
    the layer extractor (which refuses names and links leading out of it), then copied in like a
    directory, keeping the archive's owners unless --chown."""
    scratch = Path(tempfile.mkdtemp(prefix=".lazyctr-add-", dir=writer.upper.parent))
    try:
        with open(tree.context.root / match.real, "rb") as f, _decompressed(f, compression) as stream:
            try:
                extract_layer(stream, "archive", scratch)
            except (StorageError, OSError, EOFError, lzma.LZMAError) as e:
                raise BuildError(f"ADD failed: {match.shown}: cannot extract archive: {e}") from None
            except zstandard.ZstdError as e:
                raise BuildError(f"ADD failed: {match.shown}: cannot extract archive: {e}") from None
        unpacked = ContextSource(BuildContext.plain(scratch), keep_owners=True)
        writer.parents(dest.parts)  # made like any missing parent, not from the scratch directory
        for rel, path, entry in _walk(unpacked, "", Excludes(())):
            writer.entry([*dest.parts, *rel.split("/")], unpacked, path, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# -- --chmod --------------------------------------------------------------------------------------


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


__all__ = ["CopyRequest", "Download", "copy_digest", "copy_step", "parse_chmod"]
