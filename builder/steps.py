"""The step executor: a file system step taken from the build cache or run into a scratch upper
directory and stored as a layer, a config step recorded, each with its history entry and its
progress line.

A step's cache key is the sha256 of its parent's key, its definition and the platform; a config
step's history time comes from the cache too, so a fully cached rebuild gives the very same config
and manifest and writes nothing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from builder.cache import BuildCache, CacheEntry, LayerRef, cache_key
from builder.errors import BuildError
from builder.progress import PlainProgress
from builder.state import State
from storage.diff import upper_to_tar
from storage.layer_writer import write_chunked_layer
from storage.store import Store

HISTORY_COMMENT = "buildkit.dockerfile.v0"

# What a file step does in its upper directory (a path that does not exist yet), given its number.
Work = Callable[[Path, int], None]


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


class Steps:
    def __init__(
        self,
        store: Store,
        cache: BuildCache,
        progress: PlainProgress,
        platform: str,
        source_date_epoch: int | None,
        first_files: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.first_files = first_files  # files a layer written now places first (build --profile-order)
        self.cache = cache
        self.progress = progress
        self.platform = platform
        self.source_date_epoch = source_date_epoch
        self.clamp_ns = None if source_date_epoch is None else source_date_epoch * 1_000_000_000

    def now(self) -> str:
        """A history time: SOURCE_DATE_EPOCH if given, else the clock."""
        return rfc3339(time.time() if self.source_date_epoch is None else self.source_date_epoch)

    def record(self, state: State, created_by: str, created: str, empty: bool) -> None:
        entry: dict[str, Any] = {"created": created, "created_by": created_by, "comment": HISTORY_COMMENT}
        if empty:
            entry["empty_layer"] = True
        state.history.append(entry)

    def config_step(self, state: State, created_by: str) -> None:
        """A step that only changes the config: its history time comes from the cache, so a rebuild
        gives the same config."""
        key = cache_key(state.key, "META", created_by, len(state.history))
        entry = self.cache.get(key)
        if entry is None:
            entry = CacheEntry(self.now(), None)
            self.cache.put(key, entry)
        self.record(state, created_by, entry.created, empty=True)

    def file_step(
        self,
        state: State,
        label: str,
        where: str,
        key_parts: list[Any] | Callable[[], list[Any]],
        created_by: str,
        work: Work,
    ) -> None:
        """Run a file-changing step, or take it from the cache; its layer (if any) joins the state.

        `key_parts` may be a function: what reads the step's sources (a COPY's digest) then fails
        under the step's own progress line. A BuildError is raised again prefixed with `where`.
        """
        number = self.progress.start(label)
        cached = False
        try:
            parts = key_parts() if callable(key_parts) else key_parts
            key = cache_key(state.key, *parts, self.platform)
            found = self.cache.get(key)
            if found is not None:
                entry, cached = found, True
            else:
                with self._scratch_dir() as scratch:
                    upper = scratch / "upper"
                    work(upper, number)
                    layer = self._store_upper(upper)
                entry = CacheEntry(self.now(), layer)
                self.cache.put(key, entry)
        except BuildError as e:
            self.progress.error(number, str(e))
            raise BuildError(f"{where}: {e}") from None
        except BaseException as e:
            self.progress.error(number, str(e) or type(e).__name__)
            raise
        if cached:
            self.progress.cached(number)
        else:
            self.progress.done(number)
        state.key = key
        if entry.layer is not None:
            state.layers.append(entry.layer)
        self.record(state, created_by, entry.created, empty=entry.layer is None)

    @contextlib.contextmanager
    def _scratch_dir(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(dir=self.store.tmp, prefix="build-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _store_upper(self, upper: Path) -> LayerRef | None:
        """The step's upper directory as a zstd:chunked layer in the store; None if it is empty."""
        if not upper.is_dir() or not any(upper.iterdir()):
            return None
        with self.store.temp_file() as (tar_path, _):
            upper_to_tar(upper, tar_path, self.clamp_ns, first=self.first_files)
            with self.store.temp_file() as (blob_path, blob):
                written = write_chunked_layer(tar_path, blob)
                self.store.adopt(blob_path, blob, written.digest)
        return LayerRef(written.descriptor(), written.diff_id)
