"""What a COPY or ADD reads: its sources (the build context, an image's files, an extracted archive)
matched as BuildKit matches them, and the digest of everything they hold, for the step's cache key.

The rules are BuildKit's: wildcards follow Go's filepath.Match; a source that is a symlink is
followed, symlinks inside a copied directory stay links; .dockerignore and --exclude hide files; a
source that matches nothing is an error, except a wildcard next to a source that matched. Files
from the context are owned by root, files from an image (--from) keep their owners. The digest
covers paths, types, modes, owners (of image files), link targets and contents, never mtimes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import stat
from base64 import b64decode
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from builder.context import BuildContext, go_match, has_magic
from builder.dockerignore import DockerIgnore
from builder.errors import BuildError
from builder.fetch import check_checksum, fetch, is_git, is_url
from builder.image_files import ImageFiles
from builder.syntax import Heredoc
from storage.errors import StorageError
from storage.tree import Node

DIGEST_VERSION = b"lazyctr-copy-v1\0"


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
        return self.files.node(path, follow_last=False)

    def glob(self, pattern: str) -> list[tuple[str, str]]:
        parts = [p for p in posixpath.normpath("/" + pattern).split("/") if p]
        found: list[tuple[str, str]] = [("", "")]
        for part in parts:
            step: list[tuple[str, str]] = []
            for shown, real in found:
                names = [n for n in self.children(real) if go_match(part, n)] if has_magic(part) else [part]
                for name in names:
                    target = "/".join(self.files.resolve(f"{real}/{name}" if real else name))
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


def source_tree(source: BuildContext | ImageFiles) -> Source:
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


def matches(request: CopyRequest, tree: Source, pattern: str, excludes: Excludes) -> list[Match]:
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


def walk(tree: Source, root: str, excludes: Excludes, rel: str = "") -> Iterator[tuple[str, str, Entry]]:
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
            yield from walk(tree, root, excludes, child_rel)


def heredoc_for(request: CopyRequest, source: str) -> Heredoc | None:
    name = source.removeprefix("<<").removeprefix("-").strip("'\"")
    for heredoc in request.heredocs:
        if source == heredoc.name or (source.startswith("<<") and name == heredoc.name):
            return heredoc
    return None


def check_sources(request: CopyRequest) -> None:
    if not request.sources:
        raise BuildError(f"{request.verb} failed: no source files were specified")
    for source in request.sources:
        if heredoc_for(request, source) is not None:
            continue
        if is_git(source):
            raise BuildError(f"{request.verb} failed: {source}: git sources are not supported")
        if is_url(source) and not request.add:
            raise BuildError(f"COPY failed: {source}: source can't be a URL for COPY")
    if request.checksum is not None:
        check_checksum(request.checksum)
        if not all(is_url(s) for s in request.sources):
            raise BuildError(f"{request.verb} failed: --checksum is only supported for HTTP(S) sources")


def local_matches(request: CopyRequest, tree: Source) -> list[tuple[str, list[Match]]]:
    """Every local source with what it matched; a source that matches nothing is an error, except a
    wildcard when another source matched something (BuildKit allows empty wildcards)."""
    excludes = Excludes(request.excludes)
    out = []
    for source in request.sources:
        if heredoc_for(request, source) is not None or is_url(source):
            continue
        found = matches(request, tree, source, excludes)
        if not found and not has_magic(source):
            raise BuildError(f"{request.verb} failed: file not found in build context: {source}")
        out.append((source, found))
    if out and not any(found for _, found in out) and len(out) == len(request.sources):
        missing = ", ".join(source for source, _ in out)
        raise BuildError(f"{request.verb} failed: file not found in build context: {missing}")
    return out


@contextlib.contextmanager
def os_errors(request: CopyRequest) -> Iterator[None]:
    """A file the step cannot read or write is the user's problem to fix: one line, no traceback."""
    try:
        yield
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise BuildError(f"{request.verb} failed: {where}{e.strerror or e}") from None


def copy_digest(request: CopyRequest, source: BuildContext | ImageFiles) -> str:
    """sha256 hex over everything the step reads: relative paths, file types, modes, link targets and
    contents of the matched sources after .dockerignore and --exclude (not mtimes), owners of files
    from images, heredoc bodies, and for URLs the --checksum if given else the downloaded content's
    digest. It goes into the step's cache key: file contents are hashed once while they stay unchanged."""
    with os_errors(request):
        return _copy_digest(request, source)


def _copy_digest(request: CopyRequest, source: BuildContext | ImageFiles) -> str:
    check_sources(request)
    tree = source_tree(source)
    hasher = hashlib.sha256(DIGEST_VERSION)

    def put(*fields: object) -> None:
        for value in fields:
            hasher.update(str(value).encode("utf-8", "surrogateescape") + b"\0")
        hasher.update(b"\n")

    for src in request.sources:
        heredoc = heredoc_for(request, src)
        if heredoc is not None:
            put("heredoc", heredoc.name, hashlib.sha256(heredoc.body.encode()).hexdigest())
        elif is_url(src):
            put("url", src, request.checksum or fetch(src).digest)
    excludes = Excludes(request.excludes)
    for src, found in local_matches(request, tree):
        put("source", src)
        for match in found:
            put("match", match.shown)
            _put_entry(put, tree, match.real, match.entry)
            if match.entry.kind == "dir":
                for rel, path, entry in walk(tree, match.real, excludes):
                    put("path", rel)
                    _put_entry(put, tree, path, entry)
    if isinstance(source, BuildContext):
        source.save_digests()
    return hasher.hexdigest()


def _put_entry(put: Callable[..., None], tree: Source, path: str, entry: Entry) -> None:
    content = tree.content_digest(path, entry) if entry.kind == "reg" else ""
    put(entry.kind, oct(entry.mode), entry.uid, entry.gid, entry.link, entry.rdev, content)
