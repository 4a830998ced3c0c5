"""The snapshotter's records: which snapshots exist, their kind, parent, labels and usage.

One SQLite file (`<root>/metadata.db`) so that the records survive a restart of the
snapshotter, and every change is one transaction: containerd may call from several threads at
once, and a crash leaves either the old record or the new one. A snapshot's number (`id`) names
its directory under `<root>/snapshots/` and never changes, even when a commit renames its key.

The rules are containerd's (snapshots.Snapshotter): keys are unique across kinds; a parent must
be a committed snapshot; only an active snapshot can be committed, under a name not taken; a
snapshot with children cannot be removed; of the fields of an Info only labels can be updated.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from storage.errors import StorageError

LABELS = "labels"


class Kind(IntEnum):  # the numbers are those of the API's Kind enum
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


class SnapshotError(StorageError):
    """A call containerd's rules refuse; `code` is the gRPC status name it is answered with."""

    code = "FAILED_PRECONDITION"


class SnapshotNotFound(SnapshotError):
    code = "NOT_FOUND"


class SnapshotExists(SnapshotError):
    code = "ALREADY_EXISTS"


class InvalidSnapshotRequest(SnapshotError):
    code = "INVALID_ARGUMENT"


@dataclass
class Snapshot:
    id: int
    key: str
    kind: Kind
    parent: str  # the committed parent's key, or ""
    labels: dict[str, str] = field(default_factory=dict)
    created: float = 0.0
    updated: float = 0.0
    size: int = 0  # bytes and inodes of a committed snapshot, counted when it was committed
    inodes: int = 0
    image: str = ""  # a remote layer's: the lazily mounted image it is a layer of ("": a local one)
    layer: int = -1  # and its place in that image's manifest


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE NOT NULL,
    kind INTEGER NOT NULL,
    parent TEXT NOT NULL,
    labels TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    inodes INTEGER NOT NULL DEFAULT 0,
    image TEXT NOT NULL DEFAULT '',
    layer INTEGER NOT NULL DEFAULT -1
)
"""
_COLUMNS = "id, key, kind, parent, labels, created, updated, size, inodes, image, layer"


class Metadata:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by containerd's calls, serialised by our own lock.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def get(self, key: str) -> Snapshot:
        with self._transaction() as db:
            return _get(db, key)

    def create(
        self, key: str, kind: Kind, parent: str, labels: dict[str, str], image: str = "", layer: int = -1
    ) -> Snapshot:
        """A new snapshot; with `image`, a remote layer (committed from the start)."""
        if not key:
            raise InvalidSnapshotRequest("a snapshot key must not be empty")
        with self._transaction() as db:
            if _find(db, key) is not None:
                raise SnapshotExists(f"snapshot {key!r} already exists")
            if parent:
                base = _find(db, parent)
                if base is None:
                    raise SnapshotNotFound(f"parent snapshot {parent!r} does not exist")
                if base.kind != Kind.COMMITTED:
                    raise SnapshotError(f"parent snapshot {parent!r} is not committed")
            now = time.time()
            cursor = db.execute(
                "INSERT INTO snapshots (key, kind, parent, labels, created, updated, image, layer)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, int(kind), parent, json.dumps(labels), now, now, image, layer),
            )
            assert cursor.lastrowid is not None
            return Snapshot(cursor.lastrowid, key, kind, parent, dict(labels), now, now, 0, 0, image, layer)

    def commit(self, name: str, key: str, labels: dict[str, str] | None, size: int, inodes: int) -> Snapshot:
        """The active snapshot `key`, committed as `name` (with `labels` if given, else its own)."""
        if not name:
            raise InvalidSnapshotRequest("a committed snapshot's name must not be empty")
        with self._transaction() as db:
            active = _get(db, key)
            if active.kind != Kind.ACTIVE:
                raise SnapshotError(f"snapshot {key!r} is not active")
            if _find(db, name) is not None:
                raise SnapshotExists(f"snapshot {name!r} already exists")
            labels = active.labels if labels is None else labels
            now = time.time()
            db.execute(
                "UPDATE snapshots SET key = ?, kind = ?, labels = ?, updated = ?, size = ?, inodes = ?"
                " WHERE id = ?",
                (name, int(Kind.COMMITTED), json.dumps(labels), now, size, inodes, active.id),
            )
            return Snapshot(
                active.id, name, Kind.COMMITTED, active.parent, labels, active.created, now, size, inodes
            )

    def remove(self, key: str) -> Snapshot:
        with self._transaction() as db:
            snapshot = _get(db, key)
            if db.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (key,)).fetchone():
                raise SnapshotError(f"snapshot {key!r} has children: remove them first")
            db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot.id,))
            return snapshot

    def update_labels(self, key: str, labels: dict[str, str], paths: Sequence[str]) -> Snapshot:
        """Labels replaced (no paths, or `labels`) or changed one by one (`labels.NAME`: set, or
        deleted where `labels` has no NAME), as containerd's field mask says."""
        with self._transaction() as db:
            snapshot = _get(db, key)
            new = dict(snapshot.labels)
            if not paths or LABELS in paths:
                new = dict(labels)
            for path in paths:
                if path == LABELS:
                    continue
                name = path.removeprefix(LABELS + ".")
                if name == path or not name:
                    raise InvalidSnapshotRequest(f"cannot update {path!r}: only labels can be updated")
                if name in labels:
                    new[name] = labels[name]
                else:
                    new.pop(name, None)
            now = time.time()
            db.execute(
                "UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
                (json.dumps(new), now, snapshot.id),
            )
            snapshot.labels, snapshot.updated = new, now
            return snapshot

    def all(self) -> list[Snapshot]:
        with self._transaction() as db:
            return [_record(row) for row in db.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id")]

    def chain(self, key: str) -> list[Snapshot]:
        """The snapshot `key`'s ancestors, nearest first."""
        with self._transaction() as db:
            out: list[Snapshot] = []
            parent = _get(db, key).parent
            while parent:
                snapshot = _get(db, parent)
                out.append(snapshot)
                parent = snapshot.parent
            return out


class _Transaction:
    """`with` it: the lock held and one SQLite transaction, committed unless an exception leaves."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db, self._lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            self._db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self._lock.release()


def _record(row: tuple[int, str, int, str, str, float, float, int, int, str, int]) -> Snapshot:
    ident, key, kind, parent, labels, created, updated, size, inodes, image, layer = row
    return Snapshot(
        ident, key, Kind(kind), parent, json.loads(labels), created, updated, size, inodes, image, layer
    )


def _find(db: sqlite3.Connection, key: str) -> Snapshot | None:
    row = db.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?", (key,)).fetchone()
    return None if row is None else _record(row)


def _get(db: sqlite3.Connection, key: str) -> Snapshot:
    snapshot = _find(db, key)
    if snapshot is None:
        raise SnapshotNotFound(f"snapshot {key!r} does not exist")
    return snapshot
