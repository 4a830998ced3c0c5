"""Which repositories of which registries hold which blobs, as far as this machine has seen them.

A push asks it where else on the target registry a blob lives, to mount the blob from there instead
of uploading it again; pushes and pulls tell it what they saw succeed. docker keeps the same
(`v2metadata-by-diffid` in its distribution metadata). The record is one SQLite database,
`<root>/blob-locations.db`, shared by the processes of a root. It is a hint, never trusted: a mount
the registry refuses (the blob was deleted there) falls back to an upload and the entry goes, and a
database that cannot be read or written costs only the hint (one warning line on stderr).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

DATABASE = "blob-locations.db"
CANDIDATES = 3  # repositories a push tries to mount a blob from before it uploads (docker's limit)
_SCHEMA = """CREATE TABLE IF NOT EXISTS locations (
    digest TEXT NOT NULL, registry TEXT NOT NULL, repository TEXT NOT NULL, seen REAL NOT NULL,
    PRIMARY KEY (digest, registry, repository))"""


class BlobLocations:
    """The record under a lazyctr root (`root`/blob-locations.db)."""

    def __init__(self, root: Path) -> None:
        self.path = root / DATABASE

    @contextlib.contextmanager
    def _database(self) -> Iterator[sqlite3.Connection | None]:
        """A connection in a transaction (committed when the block ends), or None when the database
        is unusable; then the block goes without the hint."""
        connection = None
        try:
            connection = sqlite3.connect(self.path, timeout=30)
            connection.execute(_SCHEMA)
        except sqlite3.Error as e:
            _warn(self.path, e)
            if connection is not None:
                connection.close()
            yield None
            return
        try:
            with connection:
                yield connection
        except sqlite3.Error as e:
            _warn(self.path, e)
        finally:
            connection.close()

    def record(self, registry: str, repository: str, digests: Iterable[str]) -> None:
        """`registry`/`repository` holds every blob of `digests` (seen just now)."""
        now = time.time()
        rows = [(str(digest), registry, repository, now) for digest in digests]
        with self._database() as db:
            if db is not None:
                db.executemany("INSERT OR REPLACE INTO locations VALUES (?, ?, ?, ?)", rows)

    def repositories(self, registry: str, digest: str, limit: int = CANDIDATES) -> list[str]:
        """The repositories of `registry` last seen holding `digest`, the most recent first."""
        with self._database() as db:
            if db is None:
                return []
            found = db.execute(
                "SELECT repository FROM locations WHERE digest = ? AND registry = ?"
                " ORDER BY seen DESC LIMIT ?",
                (str(digest), registry, limit),
            )
            return [str(repository) for (repository,) in found]
        return []  # the database failed half way

    def forget(self, registry: str, repository: str, digest: str) -> None:
        """`registry`/`repository` turned out not to hold `digest` (any longer)."""
        with self._database() as db:
            if db is not None:
                db.execute(
                    "DELETE FROM locations WHERE digest = ? AND registry = ? AND repository = ?",
                    (str(digest), registry, repository),
                )


def _warn(path: Path, error: sqlite3.Error) -> None:
    print(f"lazyctr: warning: {path}: {error} (pushes upload what they cannot mount)", file=sys.stderr)
