"""Layer blob -> files on disk: decompression, the uncompressed digest (diff_id) and tar extraction.

Owns `open_layer_stream` (gzip, zstd incl. zstd:chunked, or plain tar, told apart by magic bytes,
hashed as it is read) and `extract_layer` (one OCI layer onto a directory, applying or converting
its whiteouts); `extract_members` applies entries that come with their contents from elsewhere (the
chunk cache) by the same rules. Extraction is our own, not `tarfile.extract`: every name is cleaned
and every parent resolved as if the destination were `/`, so no entry, symlink or hard link of this
or a lower layer can make us write outside it; the last component of a path is never followed.

Errors: a compressed stream that is corrupt or cut short raises CorruptLayer; a tar that is
malformed or truncated, or uses an entry type we do not support, raises BadArchive; a stream whose
sha256 is not the promised diff_id raises DigestMismatch. On any error, the destination holds a
partial, untrusted layer: callers extract into a temporary directory and rename it on success.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, Protocol, cast

import zstandard

from storage.digest import CANONICAL, Digest
from storage.errors import BadArchive, CorruptLayer, DigestMismatch
from storage.paths import OPAQUE_WHITEOUT, WHITEOUT_PREFIX, clean_name, resolve_in_root
from storage.toc import member_time_ns

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MAGIC_TAIL = b"\x2a\x4d\x18"  # skippable frames: 0x50..0x5f, then these three bytes
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
# aufs bookkeeping entries (.wh..wh.plnk, .wh..wh.aufs) that old Docker layers carry: not files.
AUFS_META_PREFIX = WHITEOUT_PREFIX + WHITEOUT_PREFIX
# overlayfs keeps its own state in these; honouring them from a layer would let it redirect or
# hide files of other layers in an overlay mount, so they are never copied from a tar.
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
# The file systems refuse these for namespaces they do not support or we may not write: skip those.
XATTR_SKIP_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}
COPY_BUFSIZE = 1 << 20
MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "leave unchanged" to chown
Whiteouts = Literal["apply", "overlay"]
Member = tuple[tarfile.TarInfo, Iterable[bytes] | None]  # an entry, and a regular file's contents


def _is_skippable_magic(magic: bytes) -> bool:
    return len(magic) == 4 and magic[0] & 0xF0 == 0x50 and magic[1:] == SKIPPABLE_MAGIC_TAIL


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Prefixed:
    """A stream with the bytes already peeked from it put back in front."""

    def __init__(self, prefix: bytes, rest: Readable) -> None:
        self._prefix = prefix
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if not self._prefix:
            return self._rest.read(size)
        if size < 0:
            data, self._prefix = self._prefix + self._rest.read(), b""
            return data
        data, self._prefix = self._prefix[:size], self._prefix[size:]
        return data


class _ZstdFrameWalker:
    """Follows zstd frame boundaries through compressed bytes without decompressing them.

    python-zstandard's stream_reader ends quietly, as if at EOF, when its input stops in the middle
    of a frame; walking the frame and block headers is how we tell a finished stream from a cut one.
    """

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4
        self._buf = bytearray()
        self._skip = 0
        self._checksum = False

    @property
    def at_frame_boundary(self) -> bool:
        return self._state == "magic" and not self._buf and not self._skip

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view) and self._state != "unknown":
            if self._skip:
                n = min(self._skip, len(view) - pos)
                self._skip -= n
                pos += n
                continue
            take = min(self._need - len(self._buf), len(view) - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                header = bytes(self._buf)
                self._buf.clear()
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        if self._state == "magic":
            if header == ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif _is_skippable_magic(header):
                self._state, self._need = "skippable", 4
            else:
                self._state = "unknown"  # not a frame: the decompressor reports that itself
        elif self._state == "skippable":
            self._skip = int.from_bytes(header, "little")
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            descriptor = header[0]
            single_segment = descriptor >> 5 & 1
            self._checksum = bool(descriptor >> 2 & 1)
            window = 0 if single_segment else 1
            dictionary_id = (0, 1, 2, 4)[descriptor & 3]
            content_size = (single_segment, 2, 4, 8)[descriptor >> 6]
            self._skip = window + dictionary_id + content_size
            self._state, self._need = "block", 3
        else:  # block header: last-block bit, 2 bits of type, 21 bits of size
            block = int.from_bytes(header, "little")
            self._skip = 1 if (block >> 1) & 3 == 1 else block >> 3  # an RLE block holds one byte
            if block & 1:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4


class _TrackedSource:
    """The compressed bytes on their way into the zstd decompressor, watched by a frame walker."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self.walker = _ZstdFrameWalker()
        self.eof = False

    def read(self, size: int = -1, /) -> bytes:
        data = self._source.read(size)
        if data:
            self.walker.feed(data)
        if size < 0 or (size and not data):
            self.eof = True
        return data


class _ZstdStream:
    """Decompresses every zstd frame of a blob in turn; skippable frames (a zstd:chunked TOC,
    tar-split data and footer) decompress to nothing."""

    def __init__(self, source: Readable, what: str) -> None:
        self._source = _TrackedSource(source)
        self._what = what
        # zstandard only ever calls read() on its source.
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(IO[bytes], self._source), read_across_frames=True, closefd=False
        )

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self._reader.read(size)
        except zstandard.ZstdError as e:
            raise CorruptLayer(f"{self._what}: corrupt zstd stream: {e}") from None
        at_end = size < 0 or (size and not data)
        if at_end and not (self._source.eof and self._source.walker.at_frame_boundary):
            raise CorruptLayer(f"{self._what}: zstd stream is truncated")
        return data


class _GzipStream:
    def __init__(self, source: Readable, what: str) -> None:
        # GzipFile only seeks when asked to seek itself, which nobody does here.
        self._reader = gzip.GzipFile(fileobj=cast(IO[bytes], source), mode="rb")
        self._what = what

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._reader.read(size)
        except EOFError:
            raise CorruptLayer(f"{self._what}: gzip stream is truncated") from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise CorruptLayer(f"{self._what}: corrupt gzip stream: {e}") from None


class HashingReader(io.RawIOBase):
    """A read-only stream that hashes (with `algorithm`) and counts everything read through it."""

    def __init__(self, inner: Readable, algorithm: str = CANONICAL) -> None:
        super().__init__()
        self._inner = inner
        self._hasher = hashlib.new(algorithm)
        self.size = 0
        self.at_eof = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size)
        if data:
            self._hasher.update(data)
            self.size += len(data)
        if size < 0 or (size and not data):
            self.at_eof = True
        return data

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    @property
    def digest(self) -> Digest:
        """The digest of the whole stream; asking before it was read to the end is a bug."""
        if not self.at_eof:
            raise ValueError("HashingReader.digest asked for before the stream was read to its end")
        return Digest.from_hasher(self._hasher)


def _read_exactly(blob: Readable, n: int) -> bytes:
    data = b""
    while len(data) < n and (more := blob.read(n - len(data))):
        data += more
    return data


def open_layer_stream(blob: Readable, what: str, algorithm: str = CANONICAL) -> HashingReader:
    """The uncompressed tar of a layer blob, hashed (with `algorithm`) as it is read (`.digest` = the
    diff_id).

    The compression is told from the blob's first bytes, not from the media type (`what` only names
    the stream in errors): mislabelled layers exist, and a zstd:chunked blob is plain tar+zstd.
    """
    magic = _read_exactly(blob, 4)
    source = _Prefixed(magic, blob)
    inner: Readable
    if magic.startswith(GZIP_MAGIC):
        inner = _GzipStream(source, what)
    elif magic == ZSTD_MAGIC or _is_skippable_magic(magic):
        inner = _ZstdStream(source, what)
    else:
        inner = source
    return HashingReader(inner, algorithm)


@dataclass
class ExtractStats:
    entries: int = 0  # tar entries applied, whiteouts included
    bytes: int = 0  # regular-file content written


@dataclass
class _DirMetadata:
    mode: int
    atime_ns: int
    mtime_ns: int


@dataclass
class _Extractor:
    root: Path
    whiteouts: Whiteouts
    stats: ExtractStats = field(default_factory=ExtractStats)
    # Paths this layer wrote, and their ancestors: what an opaque whiteout must keep.
    written: set[Path] = field(default_factory=set)
    # Paths an overlay-mode whiteout hid: a directory this layer then creates there must be opaque.
    whited_out: set[Path] = field(default_factory=set)
    # Directory mode and times are set last: writing children changes the times, and a read-only
    # mode would stop us writing them.
    dirs: dict[Path, _DirMetadata] = field(default_factory=dict)
    same_owner: bool = field(default_factory=lambda: os.geteuid() == 0)

    def apply(self, member: tarfile.TarInfo, contents: Iterable[bytes] | None) -> None:
        """Apply one entry; `contents` are a regular file's bytes, in blocks (None for other kinds)."""
        self.stats.entries += 1
        name = clean_name(member.name)
        parent_name, _, base = name.rpartition("/")
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, parent_name, base)
            return
        if not name:
            if not member.isdir():
                raise BadArchive(f"malformed layer: root entry {member.name!r} is not a directory")
            self._set_metadata(self.root, member)
            return
        if member.issparse() or not (
            member.isdir() or member.isreg() or member.issym() or member.islnk() or member.isdev()
        ):
            raise BadArchive(f"{member.name}: unsupported tar entry type {member.type!r}")
        path = self._parent_dir(parent_name, name) / base
        if member.isdir():
            if not self._replace(path, keep_dir=True):
                os.mkdir(path, 0o700)
            if path in self.whited_out:
                os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
        elif member.isreg():
            self._replace(path)
            self._write_file(member, contents, path)
        elif member.issym():
            if not member.linkname:
                raise BadArchive(f"{member.name}: symlink with an empty target")
            self._replace(path)
            os.symlink(member.linkname, path)
        elif member.islnk():
            self._hardlink(member, path)
            self._mark_written(path)
            return  # the inode's metadata came with the entry it was first written by
        else:
            self._replace(path)
            self._make_node(member, path)
        self._mark_written(path)
        self._set_metadata(path, member)

    def finish(self) -> None:
        for path, meta in self.dirs.items():
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
            except FileNotFoundError:
                continue
            os.chmod(path, meta.mode)
            os.utime(path, ns=(meta.atime_ns, meta.mtime_ns), follow_symlinks=False)

    def _parent_dir(self, parent_name: str, name: str) -> Path:
        """The real directory `parent_name` leads to inside the root, created if missing."""
        parent = resolve_in_root(self.root, parent_name, follow_last=True)
        try:
            if stat.S_ISDIR(os.lstat(parent).st_mode):
                return parent
        except FileNotFoundError:
            pass
        current = self.root
        for part in parent.relative_to(self.root).parts:
            current = current / part
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    raise BadArchive(f"{name}: {parent_name} is not a directory") from None
            except NotADirectoryError:
                raise BadArchive(f"{name}: {parent_name} is not a directory") from None
            else:
                os.chmod(current, 0o755)  # mkdir's mode went through the umask
                self._mark_written(current)
        return parent

    def _replace(self, path: Path, keep_dir: bool = False) -> bool:
        """Clear the way for a new entry at `path`; True if an existing directory was kept."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            if keep_dir:
                return True
            self._remove_tree(path)
        else:
            os.unlink(path)
        return False

    def _remove_tree(self, path: Path) -> None:
        if path in self.written:  # only then can it hold directories whose metadata is pending
            self.dirs = {p: m for p, m in self.dirs.items() if p != path and not p.is_relative_to(path)}
        shutil.rmtree(path)

    def _remove_lower(self, path: Path) -> None:
        """Remove what lower layers put at `path`, keeping what this layer wrote (spec: a whiteout
        hides only lower layers' files)."""
        pending = [path]
        while pending:
            current = pending.pop()
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                continue
            if current not in self.written:
                if stat.S_ISDIR(mode):
                    self._remove_tree(current)
                else:
                    os.unlink(current)
            elif stat.S_ISDIR(mode):
                pending.extend(current / child for child in os.listdir(current))

    def _mark_written(self, path: Path) -> None:
        while path not in self.written and path != self.root:
            self.written.add(path)
            path = path.parent

    def _whiteout(self, member: tarfile.TarInfo, parent_name: str, base: str) -> None:
        if base.startswith(AUFS_META_PREFIX) and base != OPAQUE_WHITEOUT:
            return
        if base == OPAQUE_WHITEOUT:
            if self.whiteouts == "overlay":
                directory = self._parent_dir(parent_name, member.name)
                os.setxattr(directory, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
                return
            directory = resolve_in_root(self.root, parent_name, follow_last=True)
            if directory.is_dir():
                for child in os.listdir(directory):
                    self._remove_lower(directory / child)
            return
        hidden = base[len(WHITEOUT_PREFIX) :]
        if hidden in ("", ".", ".."):
            raise BadArchive(f"{member.name}: invalid whiteout")
        if self.whiteouts == "apply":
            directory = resolve_in_root(self.root, parent_name, follow_last=True)
            if directory.is_dir():
                self._remove_lower(directory / hidden)
            return
        path = self._parent_dir(parent_name, member.name) / hidden
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
            self._lchown(path, member)
            self.whited_out.add(path)
            self._mark_written(path)
            return
        # This layer wrote `path` itself: it stays, and only what lower layers have there is hidden.
        if stat.S_ISDIR(mode):
            os.setxattr(path, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)

    def _write_file(self, member: tarfile.TarInfo, contents: Iterable[bytes] | None, path: Path) -> None:
        if contents is None:
            raise BadArchive(f"{member.name}: no content")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            for data in contents:
                out.write(data)
                self.stats.bytes += len(data)

    def _hardlink(self, member: tarfile.TarInfo, path: Path) -> None:
        target_name = clean_name(member.linkname)
        if not target_name:
            raise BadArchive(f"{member.name}: hard link to the root directory")
        target_parent, _, target_base = target_name.rpartition("/")
        target = resolve_in_root(self.root, target_parent, follow_last=True) / target_base
        try:
            target_mode = os.lstat(target).st_mode
        except (FileNotFoundError, NotADirectoryError):
            raise BadArchive(f"{member.name}: hard link target {member.linkname!r} does not exist") from None
        if stat.S_ISDIR(target_mode):
            raise BadArchive(f"{member.name}: hard link to directory {member.linkname!r}")
        if target == path:
            return
        self._replace(path)
        os.link(target, path, follow_symlinks=False)

    def _make_node(self, member: tarfile.TarInfo, path: Path) -> None:
        if member.isfifo():
            os.mkfifo(path, 0o600)
            return
        kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
        try:
            device = os.makedev(member.devmajor, member.devminor)
        except (OverflowError, ValueError):
            raise BadArchive(
                f"{member.name}: invalid device number {member.devmajor}:{member.devminor}"
            ) from None
        os.mknod(path, kind | 0o600, device)

    def _lchown(self, path: Path, member: tarfile.TarInfo) -> None:
        # Like GNU tar: keep the archive's owners when root, become the owner otherwise.
        if not self.same_owner:
            return
        if not (0 <= member.uid <= MAX_ID and 0 <= member.gid <= MAX_ID):
            raise BadArchive(f"{member.name}: invalid owner {member.uid}:{member.gid}")
        os.lchown(path, member.uid, member.gid)

    def _set_metadata(self, path: Path, member: tarfile.TarInfo) -> None:
        # Order matters: chown clears setuid/setgid bits and security.capability.
        self._lchown(path, member)
        mode = member.mode & 0o7777
        if not member.isdir() and not member.issym():
            os.chmod(path, mode)
        self._set_xattrs(path, member)
        mtime_ns, atime_ns = member_time_ns(member), member_time_ns(member, "atime")
        if member.isdir():
            self.dirs[path] = _DirMetadata(mode, atime_ns, mtime_ns)
            return
        try:
            os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)
        except (OverflowError, ValueError):
            raise BadArchive(f"{member.name}: invalid time {member.mtime!r}") from None

    def _set_xattrs(self, path: Path, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(XATTR_PAX_PREFIX):
                continue
            name = key[len(XATTR_PAX_PREFIX) :]
            if name.startswith(OVERLAY_XATTR_PREFIXES):
                continue
            try:
                os.setxattr(path, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False)
            except OSError as e:
                if e.errno not in XATTR_SKIP_ERRNOS:
                    raise


def _tar_members(tar: tarfile.TarFile) -> Iterator[Member]:
    """A tar stream's members, a regular file's with its contents (read before the next member)."""
    while (member := tar.next()) is not None:
        source = tar.extractfile(member) if member.isreg() else None
        yield member, _blocks(source) if source is not None else None
        # tarfile keeps every header it read, and a layer may have millions of entries.
        tar.members.clear()  # type: ignore[attr-defined]  # missing from typeshed


def _blocks(source: IO[bytes]) -> Iterator[bytes]:
    while data := source.read(COPY_BUFSIZE):
        yield data


def extract_members(members: Iterable[Member], dest: Path, whiteouts: Whiteouts = "apply") -> ExtractStats:
    """Apply entries that come from elsewhere than a tar stream (a TOC and the chunk cache, say) onto
    `dest`, with every check `extract_layer` makes: each is a tar header and, for a regular file, its
    contents in blocks."""
    dest.mkdir(parents=True, exist_ok=True)
    extractor = _Extractor(Path(os.path.realpath(dest)), whiteouts)
    for member, contents in members:
        extractor.apply(member, contents)
    extractor.finish()
    return extractor.stats


def extract_layer(
    blob: Readable,
    media_type: str,
    dest: Path,
    diff_id: Digest | None = None,
    whiteouts: Whiteouts = "apply",
) -> ExtractStats:
    """Extract one layer blob onto `dest`, checking its uncompressed digest against `diff_id`.

    With whiteouts="apply", `dest` may hold the lower layers already: `.wh.NAME` removes NAME
    and `.wh..wh..opq` empties its directory of lower layers' files. With "overlay", `dest` is one
    overlayfs lower directory: whiteouts become 0:0 character devices and opaque directories get
    the `trusted.overlay.opaque` xattr (both need root).
    """
    if whiteouts not in ("apply", "overlay"):
        raise ValueError(f"whiteouts must be 'apply' or 'overlay', not {whiteouts!r}")
    dest.mkdir(parents=True, exist_ok=True)
    extractor = _Extractor(Path(os.path.realpath(dest)), whiteouts)
    stream = open_layer_stream(blob, f"layer ({media_type})")
    try:
        with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
            for member, contents in _tar_members(tar):
                extractor.apply(member, contents)
            end = tar.offset
        while stream.read(COPY_BUFSIZE):
            pass
    except tarfile.TarError as e:
        raise BadArchive(f"malformed layer: {e}") from None
    # tarfile ends quietly at a header cut short; like Go's archive/tar we refuse that, but accept
    # a stream that ends cleanly between entries without the end-of-archive blocks.
    if 0 < stream.size - end < tarfile.BLOCKSIZE:
        raise BadArchive(f"malformed layer: truncated tar header at offset {end}")
    extractor.finish()
    if diff_id is not None and stream.digest != diff_id:
        raise DigestMismatch(
            f"layer extracted into {dest}: diff_id mismatch: expected {diff_id}, found {stream.digest}"
        )
    return extractor.stats
