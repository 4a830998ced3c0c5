"""Snapshots on disk, as containerd's overlayfs snapshotter lays them out; no gRPC here.

Under the snapshotter's root: `metadata.db` (metadata.py) and `snapshots/<id>/` per snapshot,
with `fs/` (its files: a committed layer, or an active snapshot's upper directory) and `work/`
(overlayfs's work directory, for an active snapshot with parents). The mounts of a snapshot are
what containerd's overlayfs snapshotter answers, so containerd, ctr and the CRI plugin mount
them as they mount its own: no parent, a bind mount of `fs/`; otherwise an overlay with the
parents' `fs/` as lower directories (nearest first), and for an active snapshot its own `fs/`
as the upper one. A view of a single parent is that parent's `fs/`, read-only.

A directory is created before its record and removed after it, through `snapshots/.trash` so a
crash never leaves half a directory under a live id; `cleanup` removes what no record names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lazyfs.snapshotter.metadata import Kind, Metadata, Snapshot, SnapshotError, SnapshotExists
from lazyfs.snapshotter.remote import TARGET_LABEL, LayerRequest, RemoteImages, RemoteLayer


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    options: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    size: int
    inodes: int


class Snapshots:
    def __init__(self, root: Path, remote: RemoteImages | None = None) -> None:
        self.root = root
        self.directories = root / "snapshots"
        self.trash = self.directories / ".trash"
        self.trash.mkdir(parents=True, exist_ok=True)
        self.metadata = Metadata(root / "metadata.db")
        self.remote = remote
        if remote is not None:
            remote.restore({s.image for s in self.metadata.all() if s.image})

    def close(self) -> None:
        self.metadata.close()

    def fs(self, snapshot: Snapshot) -> Path:
        if snapshot.image and self.remote is not None:
            return self.remote.path(RemoteLayer(snapshot.image, snapshot.layer))
        return self.directories / str(snapshot.id) / "fs"

    def prepare(self, key: str, parent: str, labels: dict[str, str], kind: Kind = Kind.ACTIVE) -> list[Mount]:
        """A new active snapshot (or view) `key` on `parent`; the mounts that make its root.

        A layer containerd is about to unpack (`TARGET_LABEL` names the snapshot it will commit)
        that can be served lazily is committed under that name at once, and containerd is told
        it exists (ALREADY_EXISTS), as remote snapshotters do: it then skips the layer's download."""
        target = labels.get(TARGET_LABEL)
        request = LayerRequest.from_labels(labels) if target and kind == Kind.ACTIVE else None
        if target and request is not None and self.remote is not None:
            layer = self.remote.prepare(request)
            if layer is not None:
                self.metadata.create(target, Kind.COMMITTED, parent, labels, layer.image, layer.index)
                raise SnapshotExists(f"snapshot {target!r} is served lazily (a remote layer)")
        snapshot = self.metadata.create(key, kind, parent, labels)
        try:
            directory = self.directories / str(snapshot.id)
            (directory / "fs").mkdir(parents=True)
            if kind == Kind.ACTIVE:
                (directory / "work").mkdir()
        except OSError:
            self.metadata.remove(key)
            raise
        return self.mounts(key)

    def mounts(self, key: str) -> list[Mount]:
        snapshot = self.metadata.get(key)
        if snapshot.kind == Kind.COMMITTED:
            raise SnapshotError(f"snapshot {key!r} is committed: it has no mounts of its own")
        parents = [str(self.fs(p)) for p in self.metadata.chain(key)]
        writable = snapshot.kind == Kind.ACTIVE
        if not parents:
            return [Mount("bind", str(self.fs(snapshot)), ["rw" if writable else "ro", "rbind"])]
        if not writable and len(parents) == 1:
            return [Mount("bind", parents[0], ["ro", "rbind"])]
        options = ["index=off"]  # lower directories may be remote mounts: no inode index across them
        if writable:
            work = self.directories / str(snapshot.id) / "work"
            options += [f"workdir={work}", f"upperdir={self.fs(snapshot)}"]
        options.append("lowerdir=" + ":".join(parents))
        return [Mount("overlay", "overlay", options)]

    def commit(self, name: str, key: str, labels: dict[str, str] | None) -> Snapshot:
        snapshot = self.metadata.get(key)
        if snapshot.kind != Kind.ACTIVE:
            raise SnapshotError(f"snapshot {key!r} is not active")
        usage = disk_usage(self.fs(snapshot))
        committed = self.metadata.commit(name, key, labels, usage.size, usage.inodes)
        shutil.rmtree(self.directories / str(committed.id) / "work", ignore_errors=True)
        return committed

    def remove(self, key: str) -> None:
        snapshot = self.metadata.remove(key)
        self._discard(self.directories / str(snapshot.id))
        last = snapshot.image and not any(s.image == snapshot.image for s in self.metadata.all())
        if last and self.remote is not None:  # no snapshot stands on its image any more
            self.remote.release(snapshot.image)

    def usage(self, key: str) -> Usage:
        snapshot = self.metadata.get(key)
        if snapshot.kind == Kind.COMMITTED:
            return Usage(snapshot.size, snapshot.inodes)
        return disk_usage(self.fs(snapshot))

    def cleanup(self) -> None:
        """Remove the directories that no snapshot record names (left by a crash)."""
        known = {str(s.id) for s in self.metadata.all()}
        for entry in self.directories.iterdir():
            if entry != self.trash and entry.name not in known:
                self._discard(entry)
        shutil.rmtree(self.trash, ignore_errors=True)
        self.trash.mkdir(exist_ok=True)

    def _discard(self, directory: Path) -> None:
        """Out of sight in one rename, then deleted (what a crash interrupts, cleanup finishes)."""
        doomed = self.trash / directory.name
        with contextlib.suppress(FileNotFoundError):
            directory.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def disk_usage(top: Path) -> Usage:
    """Bytes allocated and inodes under `top`, each inode counted once (hard links), as containerd counts."""
    seen: set[int] = set()
    size = 0
    for directory, dirs, files in os.walk(top):
        for name in (directory, *(os.path.join(directory, n) for n in dirs + files)):
            try:
                st = os.lstat(name)
            except FileNotFoundError:
                continue
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_blocks * 512
    return Usage(size, len(seen))
