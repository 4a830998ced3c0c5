"""The registry's default storage driver: plain files under one directory.

Whole-file writes go through `storage.files.atomic_write` (a temporary file, fsync, rename), so a
crash leaves the old file or the new one. An appendable file is one file opened for appending;
it becomes an ordinary one by a hard link, which never replaces what is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from registry.driver import READ_SIZE, FileInfo, StorageDriver, checked_path, pieces
from storage.files import atomic_write, fsync_dir


class FilesystemDriver(StorageDriver):
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, path: str) -> Path:
        return self.root / checked_path(path)

    def make_dirs(self, *paths: str) -> None:
        for path in paths:
            self._path(path).mkdir(parents=True, exist_ok=True)

    def get_content(self, path: str) -> bytes | None:
        try:
            return self._path(path).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put_content(self, path: str, data: bytes) -> None:
        atomic_write(self._path(path), data)

    def stat(self, path: str) -> FileInfo | None:
        try:
            found = self._path(path).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileInfo(found.st_size, found.st_mtime)

    def list(self, path: str) -> list[str]:
        try:
            return [entry.name for entry in self._path(path).iterdir() if not entry.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return []

    def delete(self, *paths: str) -> None:
        for path in map(self._path, paths):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def read(self, path: str, start: int, end: int) -> Iterator[bytes]:
        with self._path(path).open("rb") as f:
            f.seek(start)
            yield from pieces(f, end - start, path)

    def local_file(self, path: str) -> Path | None:
        return self._path(path)

    def appended(self, path: str) -> FileInfo | None:
        return self.stat(path)

    def appender(self, path: str, offset: int) -> BinaryIO:
        # Truncating to `offset` on a cut-off request is the plain file's own truncate.
        return self._path(path).open("ab")

    def read_appended(self, path: str) -> Iterator[bytes]:
        with self._path(path).open("rb") as f:
            while piece := f.read(READ_SIZE):
                yield piece

    def move_appended(self, source: str, target: str) -> None:
        data, final = self._path(source), self._path(target)
        with data.open("rb") as f:
            os.fsync(f.fileno())
        final.parent.mkdir(parents=True, exist_ok=True)
        # A link, not a rename: it never replaces, so when clients push the same blob at once the
        # first to finish puts it in place and the others find it there.
        with contextlib.suppress(FileExistsError):
            os.link(data, final)
            fsync_dir(final.parent)
