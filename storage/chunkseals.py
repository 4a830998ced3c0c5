"""Seals of verified chunk files: a chunk file checked against its digest once is trusted, by every
process, for as long as it stays the very file that was checked.

A seal is a file's (inode, size, mtime, ctime) taken when its bytes were known to match its digest:
when the cache wrote bytes its caller had verified, or when it hashed the file. Any change to the
file (a write, a truncation, a chmod, another file renamed over it) changes its ctime, which no one
can set back, so a file whose seal no longer matches is hashed again before it is served, and a
changed one is never served. What a seal cannot see is a change below the file system (a disk
that flips a bit on its own); chunk files are writable by their owner only (mkstemp's 0600).

Seals live in memory and in sixteen append-only logs, `<root>/seals/<x>` by the first hex digit of
the digest (few files to read at a new mount, each a small part of a big cache's), one line per
seal, `<hex> <ino> <size> <mtime_ns> <ctime_ns>`, appended with O_APPEND so that the lines of
concurrent mounts never interleave. A new mount reads them instead of hashing every cached
chunk again, which is what lets a warm read go at the disk's speed. A line that does not parse is
skipped, and the last line for a chunk wins; a log mostly made of superseded lines is rewritten.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from storage.files import atomic_write

Seal = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def seal_of(status: os.stat_result) -> Seal:
    return (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


class ChunkSeals:
    def __init__(self, root: Path) -> None:
        self.root = root / "seals"
        self._logs: dict[str, dict[str, Seal]] = {}  # by the first hex digit
        self._lock = threading.Lock()

    def matches(self, hex_digest: str, seal: Seal) -> bool:
        """Whether the chunk's file is still the one that was verified."""
        return self._log(hex_digest[:1]).get(hex_digest) == seal

    def record(self, hex_digest: str, seal: Seal) -> None:
        """Remember that the chunk's file, as `seal` describes it, holds the verified bytes."""
        log = self._log(hex_digest[:1])
        if log.get(hex_digest) == seal:
            return
        log[hex_digest] = seal
        line = " ".join([hex_digest, *map(str, seal)]) + "\n"
        with contextlib.suppress(OSError):  # a read-only root: the seal holds for this process only
            self.root.mkdir(exist_ok=True)
            fd = os.open(
                self.root / hex_digest[:1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def _log(self, shard: str) -> dict[str, Seal]:
        log = self._logs.get(shard)
        if log is not None:
            return log
        with self._lock:
            if shard not in self._logs:
                self._logs[shard] = self._read(shard)
            return self._logs[shard]

    def _read(self, shard: str) -> dict[str, Seal]:
        path = self.root / shard
        try:
            lines = path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return {}
        log: dict[str, Seal] = {}
        for line in lines:
            fields = line.split()
            if len(fields) == 5 and len(fields[0]) == 64 and all(f.isdigit() for f in fields[1:]):
                ino, size, mtime, ctime = (int(f) for f in fields[1:])
                log[fields[0].decode()] = (ino, size, mtime, ctime)
        if len(lines) > 2 * len(log) + 64:  # mostly superseded lines: keep the last of each
            text = "".join(" ".join([key, *map(str, seal)]) + "\n" for key, seal in log.items())
            with contextlib.suppress(OSError):
                atomic_write(path, text.encode())
        return log
