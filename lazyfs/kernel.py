"""The FUSE protocol spoken directly on /dev/fuse: an image's `ImageSource` served to the kernel.

Why not libfuse (through mfusepy, the fusepy fork): this kernel (6.18) has FUSE passthrough, with
which the kernel reads a file that is on local disk by itself, at the disk's speed, with no round
trip through this process; Debian 12's libfuse 3.14 cannot ask for it (its `want` flags are 32 bits,
passthrough is bit 37, and it has no backing-file ioctl). Measured on a 256 MiB file whose chunks are
all cached: 245 MB/s through libfuse and Python against 1.5 GB/s passed through, the same as the
disk. Speaking the protocol also drops libfuse's path layer and the ctypes callbacks, and lets
requests come over io_uring if asked to (lazyfs.uring, LAZYCTR_FUSE_URING=1: answered on the CPU that
asked; 7.42's FUSE_OVER_IO_URING).

What the kernel asks, and what it is told:
- the image never changes, so entries, attributes and misses are kept for a day (CACHE_SECONDS) and
  page-cache contents across opens (FOPEN_KEEP_CACHE);
- a directory listing carries every entry's attributes (READDIRPLUS): a walk costs a round trip per
  directory, not per entry; OPENDIR is declined once (the kernel then stops asking);
- an OPEN of a regular file whose bytes are on local disk, verified (`open_backing`: the image's
  assembled plain root, or a one-chunk file's chunk file) is passed through: the kernel reads that
  file from then on; any other file is read through `ImageSource.read` (fetched, verified, cached).
  An inode is passed through only while nobody has it open the other way (the kernel refuses to mix).

Nodes: the kernel's node id of a path is its inode number in the source (stable, shared by hard
links), the root's id 1; FORGET needs no bookkeeping, since every path's node id is known for the
life of the mount. Requests are served by WORKERS threads, each reading /dev/fuse itself: a read
waiting for the network blocks one thread, not the file system. Over io_uring (opt-in), RING_THREADS
threads per CPU, pinned to it, each with a ring entry of that CPU's queue, take over once every queue
has one; /dev/fuse then carries only FORGET and INTERRUPT.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import posixpath
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from lazyfs import uring
from lazyfs.source import BLOCK_SIZE, Attributes, ImageSource
from storage.errors import StorageError

log = logging.getLogger("lazyfs")

CACHE_SECONDS = 86400
WORKERS = 8
RING_THREADS = 4  # per CPU: the requests of one CPU that can wait (for the network) at once
RING_TOTAL = 32  # at most, over all CPUs: threads are a mount's memory (a fleet holds many mounts)
LISTINGS_KEPT = 256  # directory listings kept between a reader's pieces of them (and its read past the end)

# linux/fuse.h
LOOKUP, FORGET, GETATTR, READLINK, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 5, 14, 15, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
ACCESS, INTERRUPT, DESTROY, BATCH_FORGET, READDIRPLUS = 34, 36, 38, 42, 44
CHANGES = {4, 6, 8, 9, 10, 11, 12, 13, 16, 20, 21, 24, 30, 35, 43, 45, 47, 51}  # writes of any kind
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}
ASYNC_READ, DO_READDIRPLUS, PARALLEL_DIROPS = 1 << 0, 1 << 13, 1 << 18
MAX_PAGES, CACHE_SYMLINKS, NO_OPENDIR_SUPPORT, INIT_EXT = 1 << 22, 1 << 23, 1 << 24, 1 << 30
PASSTHROUGH_FLAG2 = 1 << (37 - 32)  # FUSE_PASSTHROUGH, in init's second word of flags
OVER_IO_URING_FLAG2 = 1 << (41 - 32)  # FUSE_OVER_IO_URING (7.42)
FOPEN_KEEP_CACHE, FOPEN_PASSTHROUGH = 1 << 1, 1 << 7
BACKING_OPEN = (1 << 30) | (16 << 16) | (229 << 8) | 1  # _IOW(229, 1, struct fuse_backing_map)
MINOR = 42  # the protocol this module speaks: 7.42 (passthrough came in 7.40, io_uring in 7.42)
MAX_PAGES_PER_READ = BLOCK_SIZE // 4096
BUFFER = 64 << 10  # a request's bytes: the mount is read-only, so none carries data (max_write 4096)

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
ENTRY = struct.Struct("<QQQQII")  # nodeid, generation, entry valid, attr valid, their nanoseconds
ATTR_OUT = struct.Struct("<QII")  # attr valid, its nanoseconds, dummy
OPEN_OUT = struct.Struct("<QIi")  # fh, open flags, backing id
DIRENT = struct.Struct("<QQII")  # ino, offset of the next, name length, type
DIRENTPLUS = struct.Struct("<" + ENTRY.format[1:] + ATTR.format[1:] + DIRENT.format[1:])  # then the name
INIT_OUT = struct.Struct("<IIIIHHIIHHIIH22x")
STATFS_OUT = struct.Struct("<QQQQQIII28x")
SIZE_OUT = struct.Struct("<II")  # getxattr/listxattr: the size the value would need
# The size of each request's fixed argument, which io_uring delivers apart from the rest (a name):
# fuse_getattr_in, fuse_open_in, fuse_read_in, fuse_release_in, fuse_getxattr_in, fuse_flush_in.
FIXED_ARGUMENT = {
    GETATTR: 16, OPEN: 8, READ: 40, RELEASE: 24, GETXATTR: 8, LISTXATTR: 8, FLUSH: 24, OPENDIR: 8,
    READDIR: 40, READDIRPLUS: 40, ACCESS: 8,
}  # fmt: skip

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
MS_RDONLY, MS_NOSUID, MS_NODEV = 1, 2, 4


class Kernel:
    """One mount: the /dev/fuse connection and the requests on it."""

    def __init__(
        self,
        source: ImageSource,
        open_backing: Callable[[str], int | None] | None = None,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.open_backing = open_backing  # a verified local file's descriptor for a path, or None
        self.on_ready = on_ready
        self.fd = -1
        self.passthrough = False  # the kernel agreed to it at INIT, and backing files can be registered
        self.over_uring = False  # the kernel agreed at INIT to send requests over io_uring
        self.transport = "/dev/fuse"  # how requests come: "io_uring" once one came that way
        self._threads: list[threading.Thread] = []
        self.paths: dict[int, str] = {1: "/"}  # node id -> a path of it
        self._attrs: dict[int, bytes] = {}  # node id -> its packed attributes (the image never changes)
        self._listings: dict[int, list[bytes]] = {}  # node id -> its packed entries, while being read
        self._backings: dict[int, int] = {}  # node id -> its backing id, once registered
        self._passed: list[int] = []  # node ids opened with passthrough since take_passed
        self._passed_since = 0  # when the first of them was opened (CLOCK_BOOTTIME ns)
        self._cached_opens: dict[int, int] = {}  # node id -> opens being read through us
        self._lock = threading.Lock()
        self._root_ino = source.inode("/")
        self._handlers: dict[int, Callable[[int, memoryview], list[bytes] | bytes | None]] = {
            LOOKUP: self._lookup,
            GETATTR: self._getattr,
            READLINK: self._readlink,
            OPEN: self._open,
            READ: self._read,
            RELEASE: self._release,
            STATFS: self._statfs,
            GETXATTR: self._getxattr,
            LISTXATTR: self._listxattr,
            INIT: self._init,
            READDIR: self._readdir,
            READDIRPLUS: self._readdirplus,
            DESTROY: lambda node, body: b"",
        }

    # -- the connection ---------------------------------------------------------------------------

    def mount(self, point: Path, fsname: str) -> None:
        """Open /dev/fuse and mount it at `point` (read-only, for every user, permissions by mode)."""
        self.over_uring = uring.enable()  # before the mount: the kernel offers it at INIT if enabled (opt-in)
        self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        options = f"fd={self.fd},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions"
        flags = MS_RDONLY | MS_NOSUID | MS_NODEV
        if _libc.mount(fsname.encode(), str(point).encode(), b"fuse.lazyfs", flags, options.encode()) != 0:
            number = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(number, f"cannot mount FUSE at {point}: {os.strerror(number)}")

    def serve(self) -> None:
        """Answer requests on WORKERS threads (and the ring's, once INIT started them) until the file
        system is unmounted."""
        workers = [threading.Thread(target=self._work, name=f"lazyfs-{n}") for n in range(WORKERS)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        with self._lock:
            ring_threads = list(self._threads)
        for thread in ring_threads:
            thread.join()
        os.close(self.fd)

    def _work(self) -> None:
        buffer = bytearray(BUFFER)
        view = memoryview(buffer)
        while True:
            try:
                length = os.readv(self.fd, [buffer])
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                return  # ENODEV: unmounted
            size, opcode, unique, node, *_ = IN_HEADER.unpack_from(buffer)
            if opcode in NO_REPLY:
                continue
            header, parts = self._answer(unique, opcode, node, view[IN_HEADER.size : min(size, length)])
            try:
                os.writev(self.fd, [header, *parts])
            except OSError as e:  # ENOENT: interrupted meanwhile; ENODEV: unmounted
                if e.errno not in (errno.ENOENT, errno.ENODEV):
                    log.warning("FUSE reply to request %d failed: %s", opcode, e)
            if opcode == INIT and header[4:8] == b"\0\0\0\0":
                if self.over_uring:
                    self._start_ring()
                if self.on_ready is not None:
                    self.on_ready()

    def _answer(self, unique: int, opcode: int, node: int, body: memoryview) -> tuple[bytes, list[bytes]]:
        """A request's answer: its fuse_out_header and what follows it."""
        handler = self._handlers.get(opcode)
        error = 0
        parts: list[bytes] = []
        if handler is None:
            error = errno.EROFS if opcode in CHANGES else errno.ENOSYS
        else:
            try:
                out = handler(node, body)
                parts = out if isinstance(out, list) else [out] if out else []
            except OSError as e:
                error = e.errno or errno.EIO
            except StorageError:
                error = errno.EIO
            except Exception:  # a bug must cost one request an EIO, never the mount
                log.exception("FUSE request %d failed", opcode)
                error = errno.EIO
        if error:
            parts = []
        size = OUT_HEADER.size
        for part in parts:
            size += len(part)
        return OUT_HEADER.pack(size, -error, unique), parts

    # -- FUSE over io_uring -----------------------------------------------------------------------

    def _start_ring(self) -> None:
        """RING_THREADS threads for each online CPU's queue (fewer on a big machine: RING_TOTAL in
        all), one for each other possible CPU's (the kernel waits for every queue to have one)."""
        possible, online = _cpus("possible"), set(_cpus("online"))
        per_cpu = max(1, min(RING_THREADS, RING_TOTAL // max(1, len(online))))
        with self._lock:
            for cpu in possible:
                for n in range(per_cpu if cpu in online else 1):
                    thread = threading.Thread(
                        target=self._ring_work, args=(cpu,), name=f"lazyfs-ring{cpu}-{n}"
                    )
                    self._threads.append(thread)
                    thread.start()

    def _ring_work(self, cpu: int) -> None:
        """Serve the requests made on `cpu`, pinned to it: the kernel wakes this thread where the
        reader waits for the answer."""
        with contextlib.suppress(OSError):  # a CPU outside our set: serve it from anywhere
            os.sched_setaffinity(0, {cpu})
        try:
            entry = uring.Entry(self.fd, cpu, MAX_PAGES_PER_READ * 4096)
        except OSError as e:
            log.warning("FUSE over io_uring unavailable (%s): requests come through /dev/fuse", e)
            return
        try:
            result = entry.register()
            if result < 0 and result != -errno.ENOTCONN:
                log.warning(
                    "FUSE over io_uring refused (%s): requests come through /dev/fuse", os.strerror(-result)
                )
            if result == 0:
                self.transport = "io_uring"
            while result == 0:
                opcode, unique, node, body = entry.request(FIXED_ARGUMENT)
                result = entry.answer(*self._answer(unique, opcode, node, body))
        finally:
            entry.close()

    # -- requests ---------------------------------------------------------------------------------

    def _init(self, node: int, body: memoryview) -> bytes:
        major, minor, readahead, flags, flags2 = struct.unpack_from("<IIIII", body)
        if major != 7:
            raise OSError(errno.EPROTO, f"FUSE protocol {major}.{minor}")
        wanted = (
            ASYNC_READ | DO_READDIRPLUS | PARALLEL_DIROPS | MAX_PAGES | CACHE_SYMLINKS | NO_OPENDIR_SUPPORT
        )
        extended = bool(flags & INIT_EXT)
        self.passthrough = extended and minor >= 40 and bool(flags2 & PASSTHROUGH_FLAG2)
        self.passthrough = self.passthrough and self.open_backing is not None
        self.over_uring = self.over_uring and extended and minor >= 42 and bool(flags2 & OVER_IO_URING_FLAG2)
        return INIT_OUT.pack(
            7,
            min(minor, MINOR),
            min(readahead, BLOCK_SIZE),
            (flags & wanted) | (INIT_EXT if extended else 0),
            16,  # max_background
            12,  # congestion_threshold
            4096,  # max_write: nothing is written
            1,  # time_gran: nanoseconds
            MAX_PAGES_PER_READ,
            0,
            (PASSTHROUGH_FLAG2 if self.passthrough else 0) | (OVER_IO_URING_FLAG2 if self.over_uring else 0),
            1 if self.passthrough else 0,  # max_stack_depth: backing files are on a plain file system
            0,
        )

    def _path(self, node: int) -> str:
        path = self.paths.get(node)
        if path is None:
            raise OSError(errno.ESTALE, "unknown node")
        return path

    def _node_of(self, ino: int) -> int:
        """The node id of a source inode: its number, but the root is 1 whatever its number is."""
        if ino == self._root_ino:
            return 1
        return ino if ino != 1 else self._root_ino

    def _attr(self, node: int, attrs: Attributes) -> bytes:
        packed = self._attrs.get(node)
        if packed is None:
            packed = self._attrs[node] = ATTR.pack(*_fuse_attr(attrs))
        return packed

    def _entry(self, path: str, attrs: Attributes) -> bytes:
        node = self._node_of(attrs[0])
        self.paths.setdefault(node, path)
        return ENTRY.pack(node, 0, CACHE_SECONDS, CACHE_SECONDS, 0, 0) + self._attr(node, attrs)

    def _lookup(self, parent: int, body: memoryview) -> bytes:
        name = bytes(body).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        path = posixpath.join(self._path(parent), name)
        try:
            attrs = self.source.attributes(path)
        except FileNotFoundError:  # a miss the kernel keeps too (node id 0)
            return ENTRY.pack(0, 0, CACHE_SECONDS, 0, 0, 0) + bytes(ATTR.size)
        return self._entry(path, attrs)

    def _getattr(self, node: int, body: memoryview) -> bytes:
        packed = self._attrs.get(node)
        if packed is None:
            packed = self._attr(node, self.source.attributes(self._path(node)))
        return ATTR_OUT.pack(CACHE_SECONDS, 0, 0) + packed

    def _readlink(self, node: int, body: memoryview) -> bytes:
        return self.source.readlink(self._path(node)).encode("utf-8", "surrogateescape")

    def register(self, files: Iterable[tuple[str, int]]) -> None:
        """Register the verified local file of each (path, inode) that has one now, so that their
        opens cost a lookup (a daemon does it on a thread of its own once the plain root is there)."""
        for path, ino in files:
            if not self.passthrough:
                return
            node = self._node_of(ino)
            self.paths.setdefault(node, path)
            self._backing(node)

    def _open(self, node: int, body: memoryview) -> bytes:
        backing = self._backing(node) if self.passthrough else 0
        with self._lock:
            if backing and not self._cached_opens.get(node):
                if not self._passed:
                    self._passed_since = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
                self._passed.append(node)
                return OPEN_OUT.pack(0, FOPEN_PASSTHROUGH, backing)
            self._cached_opens[node] = self._cached_opens.get(node, 0) + 1
        return OPEN_OUT.pack(1, FOPEN_KEEP_CACHE, 0)  # fh 1: read through us (see _release)

    def take_passed(self) -> tuple[int, list[str]]:
        """The paths opened with passthrough since the last call, once per open, and when the first
        of them was (CLOCK_BOOTTIME ns). Collected, not told as they come: telling another thread
        costs an open a wake-up and a turn of the GIL."""
        with self._lock:
            nodes, self._passed = self._passed, []
        return self._passed_since, [self.paths[node] for node in nodes]

    def _backing(self, node: int) -> int:
        """The kernel's id of the node's verified local file, registered on its first open; 0: none
        (yet: a chunk cached later may make one)."""
        with self._lock:
            known = self._backings.get(node)
        if known:
            return known
        assert self.open_backing is not None
        fd = self.open_backing(self._path(node))
        if fd is None:
            return 0
        try:
            mapping = ctypes.create_string_buffer(struct.pack("<iIQ", fd, 0, 0), 16)
            backing: int = _libc.ioctl(self.fd, ctypes.c_ulong(BACKING_OPEN), mapping)
            if backing < 0:
                number = ctypes.get_errno()
                log.warning("FUSE passthrough refused (%s): reading through lazyfs", os.strerror(number))
                self.passthrough = False
                return 0
        finally:
            os.close(fd)
        with self._lock:
            if node in self._backings:  # another thread registered it first: the kernel keeps both
                return self._backings[node]
            self._backings[node] = backing
        return backing

    def _release(self, node: int, body: memoryview) -> bytes:
        (handle,) = struct.unpack_from("<Q", body)
        if handle == 1:
            with self._lock:
                self._cached_opens[node] -= 1
        return b""

    def _read(self, node: int, body: memoryview) -> list[bytes]:
        _, offset, size = struct.unpack_from("<QQI", body)
        return self.source.read(self._path(node), size, offset)

    def _statfs(self, node: int, body: memoryview) -> bytes:
        s = self.source.statfs()
        return STATFS_OUT.pack(
            s["f_blocks"], s["f_bfree"], s["f_bavail"], s["f_files"], s["f_ffree"],
            s["f_bsize"], s["f_namemax"], s["f_frsize"],
        )  # fmt: skip

    def _getxattr(self, node: int, body: memoryview) -> bytes:
        (size,) = struct.unpack_from("<I", body)
        name = bytes(body[8:]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        return _sized(self.source.xattr(self._path(node), name), size)

    def _listxattr(self, node: int, body: memoryview) -> bytes:
        (size,) = struct.unpack_from("<I", body)
        names = self.source.xattrs(self._path(node))
        return _sized(b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names), size)

    def _readdir(self, node: int, body: memoryview) -> bytes:
        return self._listing(node, body, plus=False)

    def _readdirplus(self, node: int, body: memoryview) -> bytes:
        return self._listing(node, body, plus=True)

    def _listing(self, node: int, body: memoryview, plus: bool) -> bytes:
        """A directory's entries from the request's offset on, as many as fit its size. The kernel
        reads a listing in pieces, then once more past its end: the entries are packed for the
        first piece, kept for the next and dropped at the read past the end (which, were they
        dropped earlier, would pack them all again to say there are no more)."""
        _, offset, size = struct.unpack_from("<QQI", body)
        key = node if plus else -node
        entries = self._listings.get(key) if offset else None
        if entries is None:
            entries = self._pack_listing(node, plus)
            if len(self._listings) >= LISTINGS_KEPT:  # readers that stopped early: forget theirs
                self._listings.clear()
            self._listings[key] = entries
        if offset >= len(entries):
            self._listings.pop(key, None)
            return b""
        out: list[bytes] = []
        used = 0
        for entry in entries[offset:]:
            if used + len(entry) > size:
                break
            out.append(entry)
            used += len(entry)
        return b"".join(out)

    def _pack_listing(self, node: int, plus: bool) -> list[bytes]:
        path = self._path(node)
        dots = [(".", self.source.inode(path)), ("..", self.source.inode(posixpath.dirname(path)))]
        entries = []
        for offset, (name, ino) in enumerate(dots, 1):
            head = ENTRY.pack(0, 0, 0, 0, 0, 0) + bytes(ATTR.size) if plus else b""
            entries.append(head + _dirent(name.encode(), ino, offset, stat.S_IFDIR))
        if not plus:
            for offset, (name, (ino, mode, *_)) in enumerate(self.source.listing(path), 3):
                entries.append(_dirent(name.encode("utf-8", "surrogateescape"), ino, offset, mode))
            return entries
        # READDIRPLUS, a walk's hot path: one struct per entry, from plain tuples (no stat dicts).
        prefix, paths = path.rstrip("/") + "/", self.paths
        for offset, (name, attributes) in enumerate(self.source.listing(path), 3):
            encoded = name.encode("utf-8", "surrogateescape")
            ino, mode = attributes[0], attributes[1]
            node = self._node_of(ino)
            paths.setdefault(node, prefix + name)
            head = DIRENTPLUS.pack(
                node, 0, CACHE_SECONDS, CACHE_SECONDS, 0, 0,
                *_fuse_attr(attributes),
                ino, offset, len(encoded), mode >> 12,
            )  # fmt: skip
            entries.append(head + encoded + bytes(-(DIRENT.size + len(encoded)) % 8))
        return entries


def _cpus(which: str) -> list[int]:
    """The CPUs the kernel counts as `which` ("possible": it keeps a FUSE ring queue for each, and
    uses the ring once each has an entry; "online")."""
    try:
        spec = Path(f"/sys/devices/system/cpu/{which}").read_text().strip()
    except OSError:
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def _fuse_attr(attributes: Attributes) -> tuple[int, ...]:
    """struct fuse_attr's fields, in order, of a file's attributes (mtime stands for all three times)."""
    ino, mode, nlink, uid, gid, size, mtime, rdev = attributes
    seconds, nanoseconds = divmod(mtime, 1_000_000_000)
    return (
        ino, size, (size + 511) // 512, seconds, seconds, seconds,
        nanoseconds, nanoseconds, nanoseconds, mode, nlink, uid, gid, rdev, BLOCK_SIZE, 0,
    )  # fmt: skip


def _dirent(name: bytes, ino: int, following: int, mode: int) -> bytes:
    packed = DIRENT.pack(ino, following, len(name), stat.S_IFMT(mode) >> 12) + name
    return packed + bytes(-len(packed) % 8)


def _sized(value: bytes, size: int) -> bytes:
    """An xattr answer: the size it needs when asked for that (size 0), else the value if it fits."""
    if size == 0:
        return SIZE_OUT.pack(len(value), 0)
    if len(value) > size:
        raise OSError(errno.ERANGE, "buffer too small")
    return value
