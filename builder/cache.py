"""The build cache under `<root>/cache/`: what each step produced, by the step's cache key.

A key is the sha256 of the parent step's key and the step's definition (the instruction with its
variables resolved, the env and args it sees, the platform, and for COPY/ADD the digest of the
files it reads). An entry records the step's layer (or none) and when the step ran, so that a fully
cached rebuild gives the very same config and manifest and so writes nothing. Entries only point at
layer blobs: gc may remove a blob no image names, and an entry whose blob is gone is a miss.

`cache/mounts/<id>` holds the directories of `RUN --mount=type=cache`, kept between builds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.digest import Digest
from storage.errors import StorageError
from storage.files import atomic_write
from storage.oci import Descriptor
from storage.store import Store


def cache_key(*parts: Any) -> str:
    """sha256 (hex) of the parts, in a canonical JSON form: the same definition, the same key."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class LayerRef:
    """A layer of a build state: its blob's descriptor and the digest of its uncompressed tar."""

    descriptor: Descriptor
    diff_id: Digest


@dataclass(frozen=True)
class CacheEntry:
    created: str  # RFC 3339, as in the image history
    layer: LayerRef | None  # None: the step changed no file

    def to_bytes(self) -> bytes:
        obj: dict[str, Any] = {"created": self.created}
        if self.layer is not None:
            obj["layer"] = self.layer.descriptor.to_json()
            obj["diff_id"] = str(self.layer.diff_id)
        return json.dumps(obj, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> CacheEntry:
        obj = json.loads(data)
        layer = None
        if "layer" in obj:
            layer = LayerRef(Descriptor.from_json(obj["layer"], "cache entry"), Digest(obj["diff_id"]))
        return cls(str(obj["created"]), layer)


class BuildCache:
    def __init__(self, store: Store, enabled: bool = True) -> None:
        self.store = store
        self.enabled = enabled  # --no-cache: never read, still written for the next build
        self.dir = store.root / "cache"
        self.index = self.dir / "index"
        self.mounts = self.dir / "mounts"

    def _path(self, key: str) -> Path:
        return self.index / key[:2] / f"{key}.json"

    def get(self, key: str) -> CacheEntry | None:
        """The entry for `key`, or None (no entry, unreadable, or its layer blob was collected)."""
        if not self.enabled:
            return None
        try:
            entry = CacheEntry.parse(self._path(key).read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, StorageError):
            return None  # a damaged entry is only a miss: the step runs again and rewrites it
        if entry.layer is not None and not self.store.has_blob(entry.layer.descriptor.digest):
            return None
        return entry

    def put(self, key: str, entry: CacheEntry) -> None:
        path = self._path(key)
        data = entry.to_bytes()
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)

    def entries(self) -> list[CacheEntry]:
        """Every readable entry (for tests and for telling cached blobs from stray ones)."""
        out = []
        for path in sorted(self.index.glob("*/*.json")):
            with contextlib.suppress(ValueError, KeyError, TypeError, StorageError, OSError):
                out.append(CacheEntry.parse(path.read_bytes()))
        return out

    def mount_dir(self, mount_id: str) -> Path:
        """The directory of `RUN --mount=type=cache,id=ID` (the id is any string: hashed for the path)."""
        path = self.mounts / hashlib.sha256(mount_id.encode()).hexdigest()[:32]
        path.mkdir(parents=True, exist_ok=True)
        return path
