"""The chunk cache: verified, uncompressed file chunks under `<root>/chunks`, keyed by their digest.

Every image shares it, so a file present in two images (or two layers) is fetched and stored once.
A chunk is written to a temporary file and renamed into place, without an fsync: a crash may leave
a truncated or empty file under a digest name, and a file may be changed on disk later. So a chunk
file read back from disk is checked against its name (a mismatch is a miss, and the file is
removed), which is far cheaper than an fsync per chunk written on the hot path, unless it is sealed
(storage/chunkseals.py): still the very file whose bytes were verified, by this process or another.

Verified chunks are also kept in memory, in two parts: those fetched (read ahead, prefetched) that
no reader has taken yet, until their first read (a read-ahead stream counts on them: a reader
following it takes them without reading and hashing them again; a cap bounds what a fill of a whole
image that nobody reads would keep); and the few last read, so that a reader taking one chunk in
several FUSE reads reads it from disk once. A chunk read once is otherwise on disk, in the page cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from storage.chunkseals import ChunkSeals, Seal, seal_of
from storage.digest import Digest

UNREAD_LIMIT = 64 << 20  # fetched chunks kept until their first read (what read-ahead is ahead by)
RECENT_LIMIT = 8 << 20  # chunks read last: a reader's FUSE reads of the same chunks
WARM_THREADS = 4  # chunk files read ahead at once
WARM_GROUP = 8  # chunk files per task of a read-ahead thread


class ChunkCache:
    def __init__(
        self, root: Path, unread_limit: int = UNREAD_LIMIT, recent_limit: int = RECENT_LIMIT
    ) -> None:
        self.root = root / "chunks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.seals = ChunkSeals(root)
        self._unread = _Memory(unread_limit)  # fetched, verified, not read yet
        self._recent = _Memory(recent_limit)  # read last, verified
        self._lock = threading.Lock()
        self._warmer: ThreadPoolExecutor | None = None  # made when first asked to read ahead

    def path(self, digest: Digest) -> Path:
        return self.root / digest.hex[:2] / digest.hex

    def get(self, digest: Digest) -> bytes | None:
        """The chunk, verified, or None when it is not cached (or its file was damaged)."""
        data = self.get_from_memory(digest)
        if data is not None:
            return data
        path = f"{self.root}/{digest.hex[:2]}/{digest.hex}"  # not pathlib: this is the warm read path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            data = os.read(fd, os.fstat(fd).st_size)
            seal = seal_of(os.fstat(fd))  # after the read: a write during it has changed the ctime
        finally:
            os.close(fd)
        if not self._verified(digest, path, seal, data):
            return None
        with self._lock:
            self._recent.add(digest, data)
        return data

    def open_verified(self, digest: Digest) -> int | None:
        """A read-only descriptor of the chunk's file whose bytes are the chunk's (sealed, or hashed
        now), for the kernel to read directly (FUSE passthrough); None when it is not cached or was
        damaged. The caller closes it."""
        path = f"{self.root}/{digest.hex[:2]}/{digest.hex}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        seal = seal_of(os.fstat(fd))
        if self.seals.matches(digest.hex, seal):
            return fd
        data = os.pread(fd, seal[1], 0)
        # Unchanged while it was read (a write sets the ctime), and it hashes to its name.
        if seal_of(os.fstat(fd)) == seal and self._verified(digest, path, seal, data):
            return fd
        os.close(fd)
        return None

    def _verified(self, digest: Digest, path: str, seal: Seal, data: bytes) -> bool:
        """Whether the file at `path` (as `seal` describes it, holding `data`) is the chunk: sealed, or
        hashed now and sealed; a file that does not hash to its name is removed."""
        if self.seals.matches(digest.hex, seal):
            return True
        if hashlib.new(digest.algorithm, data).hexdigest() != digest.hex:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return False
        self.seals.record(digest.hex, seal)
        return True

    def advise(self, digests: list[Digest]) -> None:
        """Have these chunks read from disk into the page cache (a sequential reader's next ones), on
        background threads, a few chunks each: their opens and reads overlap one another and the
        reader's, so the disk sees a queue rather than one small read after another."""
        todo = [digest for digest in digests if digest not in self._unread and digest not in self._recent]
        if not todo:
            return
        with self._lock:
            if self._warmer is None:
                self._warmer = ThreadPoolExecutor(WARM_THREADS, thread_name_prefix="chunk-warm")
        for start in range(0, len(todo), WARM_GROUP):
            self._warmer.submit(self._read_ahead, todo[start : start + WARM_GROUP])

    def _read_ahead(self, digests: list[Digest]) -> None:
        for digest in digests:
            try:
                fd = os.open(self.path(digest), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def get_from_memory(self, digest: Digest) -> bytes | None:
        """The chunk if it is in memory; a first read moves it from the unread part to the recent one."""
        with self._lock:
            data = self._recent.take(digest)
            if data is None:
                data = self._unread.take(digest)
            if data is not None:
                self._recent.add(digest, data)
            return data

    def contains(self, digest: Digest) -> bool:
        """Whether the chunk is cached (unverified: for counting and planning, not for serving)."""
        return digest in self._unread or digest in self._recent or self.path(digest).exists()

    def put(self, digest: Digest, data: bytes) -> None:
        """Store a chunk the caller has verified against `digest`; in memory too until it is read."""
        with self._lock:
            if digest not in self._recent:
                self._unread.add(digest, data)
        path = self.path(digest)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.rename(tmp, path)
                # After the rename, which sets the ctime the seal must match.
                self.seals.record(digest.hex, seal_of(os.fstat(f.fileno())))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


class _Memory:
    """Chunks in memory up to `limit` bytes, the oldest added dropped first (the caller locks)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._chunks: OrderedDict[Digest, bytes] = OrderedDict()

    def __contains__(self, digest: Digest) -> bool:
        return digest in self._chunks

    def add(self, digest: Digest, data: bytes) -> None:
        if len(data) > self.limit // 4:
            return  # one chunk would push out too many others
        if digest in self._chunks:
            self._chunks.move_to_end(digest)
            return
        self._chunks[digest] = data
        self.size += len(data)
        while self.size > self.limit:
            _, dropped = self._chunks.popitem(last=False)
            self.size -= len(dropped)

    def take(self, digest: Digest) -> bytes | None:
        data = self._chunks.pop(digest, None)
        if data is not None:
            self.size -= len(data)
        return data
