"""Which files of a mounted image the kernel may read by itself (FUSE passthrough, lazyfs.kernel).

A file qualifies when a verified file on local disk holds exactly its bytes; anything else is read
through lazyfs, which fetches and verifies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from lazyfs.fetcher import Fetcher
from lazyfs.source import ImageSource


class LocalFiles:
    """Where the kernel may read a file of the image directly (FUSE passthrough): a verified file on
    local disk holding exactly its bytes, else None (the file is read through lazyfs, which fetches
    and verifies).
    - The image's plain root once there is one (assembled from verified chunks). A file of it that
      was changed on disk after the root was made has a ctime past the root's own (set when the
      finished root was renamed into place; nothing changes the root directory after that, and no
      one can set a ctime back), and is not passed through.
    - Before that, a file of one chunk is its chunk file, if that is still sealed or hashes right
      now (storage.chunks: a changed chunk file is removed and fetched again).

    An open passed through counts its file's pieces as read (the access profile's record of a file
    read from the plain root is then the whole file: the kernel does not say what it reads)."""

    def __init__(self, source: ImageSource, fetcher: Fetcher, root: Path | None) -> None:
        self.source = source
        self.fetcher = fetcher
        self.root: Path | None = None
        self._root_ctime = 0
        if root is not None:
            self.use_root(root)

    def use_root(self, root: Path) -> None:
        """Pass files through to the image's plain root `root` from now on."""
        with contextlib.suppress(OSError):
            self._root_ctime = os.stat(root).st_ctime_ns
            self.root = root

    def open(self, path: str) -> int | None:
        """A read-only descriptor of the local file holding `path`'s bytes, or None."""
        pieces = self.source.pieces(path)
        if pieces is None:
            return None
        fd = self._plain(path) if self.root is not None else None
        whole = len(pieces) == 1 and (pieces[0].file_offset, pieces[0].size) == (0, self.source.size(path))
        if fd is None and whole:  # a file of one chunk, no hole
            fd = self.fetcher.cache.open_verified(pieces[0].digest)
        return fd

    def opened(self, path: str) -> None:
        """The kernel reads `path` from its local file: its pieces count as read."""
        self.fetcher.served_locally(self.source.pieces(path) or [])

    def _plain(self, path: str) -> int | None:
        with contextlib.suppress(OSError):
            fd = os.open(f"{self.root}{path}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            status = os.fstat(fd)
            if stat.S_ISREG(status.st_mode) and status.st_ctime_ns <= self._root_ctime:
                return fd
            os.close(fd)
            logging.warning("%s%s was changed on disk: not passed through", self.root, path)
        return None
