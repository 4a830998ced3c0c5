"""Plain directories for overlayfs lowers under `<root>/layers/`, each made once and put in place whole.

Two kinds live here, both built in a temporary directory and renamed into place under a per-name lock,
so no container ever sees half of one:
- `<diff_id hex>`: one layer extracted from its blob (the overlay driver stacks these), whiteouts in
  overlayfs's form (0:0 character devices and the opaque xattr);
- `root-<diff_ids chain>-<TOCs chain>`: the whole merged root of a lazily pulled image, assembled from
  the chunk cache once every piece is there (storage.materialise), which the lazy driver gives new
  containers instead of the FUSE mount. Its name starts with the chain of the image's diff_ids, which
  is what garbage collection knows of every image and container (`ContainerState.layers`), and ends
  with the chain of its TOC digests, which is what the contents were verified against: two images
  that claim the same diff_ids (unverifiable without the layer blobs) but have other TOCs never share
  a root.

The lazyfs daemon makes roots (when its background fill completes), the runtime uses and collects
them: this room is the one both may import.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from storage.digest import Digest
from storage.errors import DigestMismatch, StorageError
from storage.files import file_lock, fsync_dir
from storage.oci import Descriptor
from storage.store import Image, Store
from storage.zstd_chunked import position_from_annotations

if TYPE_CHECKING:
    from storage.extract import Readable, Whiteouts

LAYERS_DIR = "layers"
ROOT_PREFIX = "root-"


class LayerCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.root / LAYERS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, diff_id: Digest) -> Path:
        return self.dir / diff_id.hex

    def get(self, layer: Descriptor, diff_id: Digest, blob: Readable | None = None) -> Path:
        """The directory holding `layer` extracted for overlayfs, extracting it if needed: from the
        store's blob, or from `blob` (a download in progress; not read at all if the layer is here)."""

        def extract(staging: Path) -> None:
            if blob is None:
                extract_verified(self.store, layer, staging, "overlay")
            else:
                extract_checked(blob, layer, staging, "overlay")
            os.chmod(staging, 0o755)

        return self.place(diff_id.hex, extract)

    def plain_root(self, image: Image) -> Path | None:
        """The image's merged root as a plain directory, if it has been assembled (None otherwise)."""
        name = root_name(image)
        path = self.dir / name if name else None
        return path if path is not None and path.is_dir() else None

    def place(self, name: str, build: Callable[[Path], object]) -> Path:
        """`layers/<name>`, made by `build(staging)` in a temporary directory unless it is there."""
        target = self.dir / name
        if target.is_dir():
            return target
        with file_lock(self._lock(name)):
            if target.is_dir():  # another process finished it while we waited
                return target
            # Named after its target, so garbage collection knows whose lock says it is still being built.
            staging = Path(tempfile.mkdtemp(dir=self.dir, prefix=f".{name}."))
            try:
                build(staging)
                os.rename(staging, target)
                fsync_dir(self.dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return target

    def remove_unused(self, chains: Iterable[Sequence[str]]) -> int:
        """Delete what no chain of diff_ids (an image's, a container's) uses, and what crashed builds
        left; returns how many directories went."""
        keep: set[str] = set()
        for chain in chains:
            with contextlib.suppress(StorageError):  # a container state with nonsense in it keeps nothing
                digests = [Digest(text) for text in chain]
                keep.update(digest.hex for digest in digests)
                keep.add(_chain_part(digests))
        removed = 0
        for directory in sorted(self.dir.iterdir()):
            name = directory.name.split(".")[1] if directory.name.startswith(".") else directory.name
            if not directory.name.startswith(".") and (name in keep or name.rpartition("-")[0] in keep):
                continue
            with file_lock(self._lock(name)):  # a build in progress finishes (or fails) first
                if directory.is_dir():
                    shutil.rmtree(directory, ignore_errors=True)
                    removed += not directory.name.startswith(".")
        return removed

    def _lock(self, name: str) -> Path:
        return self.store.locks / f"layer-{name}.lock"


def root_name(image: Image) -> str | None:
    """The name of the image's assembled root in `layers/`; None when a layer's TOC digest is not
    known from its descriptor (such an image is only ever served by lazyfs)."""
    tocs: list[Digest] = []
    for layer in image.manifest.layers:
        try:
            promised = position_from_annotations(layer.annotations, layer.size)
        except StorageError:
            return None
        if promised is None:
            return None
        tocs.append(promised[0])
    return f"{_chain_part(image.config.diff_ids)}-{_chain(tocs)}"


def _chain_part(diff_ids: Sequence[Digest]) -> str:
    return ROOT_PREFIX + _chain(diff_ids)


def _chain(digests: Sequence[Digest]) -> str:
    return hashlib.sha256("\n".join(str(d) for d in digests).encode()).hexdigest()


def extract_verified(store: Store, layer: Descriptor, dest: Path, whiteouts: Whiteouts) -> None:
    """Extract a stored layer onto `dest`, checking the blob against its digest as it streams.

    The blob digest, not the diff_id, is the check: podman 4 records diff_ids its own zstd:chunked
    layers do not match.
    """
    with open(store.blob_path(layer.digest), "rb") as f:
        extract_checked(f, layer, dest, whiteouts)


def extract_checked(source: Readable, layer: Descriptor, dest: Path, whiteouts: Whiteouts) -> None:
    """Extract the blob of `layer` that `source` streams onto `dest`, checking it against its digest
    (see `extract_verified`): DigestMismatch after the last byte if it does not match."""
    # Here, not at import: a container of layers already extracted should not load the tar codec.
    from storage.extract import HashingReader, extract_layer

    blob = HashingReader(source, layer.digest.algorithm)
    extract_layer(blob, layer.media_type, dest, whiteouts=whiteouts)
    blob.read()  # the digest covers the whole blob, TOC and footer included
    if blob.digest != layer.digest:
        raise DigestMismatch(f"layer {layer.digest} is corrupted: its content hashes to {blob.digest}")
