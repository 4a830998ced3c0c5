"""Extracted layers shared by containers: `<root>/layers/<diff_id hex>`, each extracted once.

The overlay driver stacks these directories as overlayfs lower dirs, so a layer is extracted once
however many containers use it. Whiteouts are kept in overlayfs's form (0:0 character devices and
the opaque xattr). Extraction goes to a temporary directory, renamed into place once complete and
checked against the blob's digest, under a per-layer lock: no container ever sees half a layer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.state import all_states, containers_dir
from storage.digest import Digest
from storage.errors import DigestMismatch
from storage.files import file_lock, fsync_dir
from storage.oci import Descriptor
from storage.store import Store

if TYPE_CHECKING:
    from storage.extract import Whiteouts


class LayerCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.dir = store.root / "layers"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, diff_id: Digest) -> Path:
        return self.dir / diff_id.hex

    def get(self, layer: Descriptor, diff_id: Digest) -> Path:
        """The directory holding `layer` extracted for overlayfs, extracting it if needed."""
        target = self.path(diff_id)
        if target.is_dir():
            return target
        with file_lock(self.store.locks / f"layer-{diff_id.hex}.lock"):
            if target.is_dir():  # another process finished it while we waited
                return target
            staging = Path(tempfile.mkdtemp(dir=self.dir, prefix=".extracting-"))
            try:
                extract_verified(self.store, layer, staging, "overlay")
                os.chmod(staging, 0o755)
                os.rename(staging, target)
                fsync_dir(self.dir)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return target

    def remove_unused(self, keep: set[str]) -> int:
        """Delete extracted layers whose diff_id is not in `keep`; returns how many went."""
        removed = 0
        kept = {diff_id.partition(":")[2] for diff_id in keep}  # the directories are named by hex
        for directory in self.dir.iterdir():
            if directory.name.startswith(".") or directory.name in kept:
                continue  # dot dirs: extractions in progress
            with file_lock(self.store.locks / f"layer-{directory.name}.lock"):
                shutil.rmtree(directory, ignore_errors=True)
            removed += 1
        return removed


def collect_garbage(store: Store) -> tuple[int, int, int]:
    """Remove blobs no image refers to, and extracted layers no image or container uses.

    Returns the blobs removed, the bytes they freed, and the extracted layers removed."""
    removed, freed = store.gc()
    images, _ = store.images()
    keep = {str(diff_id) for image in images for diff_id in image.config.diff_ids}
    keep |= {layer for state in all_states(containers_dir(store.root)) for layer in state.layers}
    return removed, freed, LayerCache(store).remove_unused(keep)


def extract_verified(store: Store, layer: Descriptor, dest: Path, whiteouts: Whiteouts) -> None:
    """Extract a stored layer onto `dest`, checking the blob against its digest as it streams.

    The blob digest, not the diff_id, is the check: podman 4 records diff_ids its own zstd:chunked
    layers do not match.
    """
    # Here, not at import: a container of layers already extracted should not load the tar codec.
    from storage.extract import HashingReader, extract_layer

    with open(store.blob_path(layer.digest), "rb") as f:
        blob = HashingReader(f, layer.digest.algorithm)
        extract_layer(blob, layer.media_type, dest, whiteouts=whiteouts)
        blob.read()  # the digest covers the whole blob, TOC and footer included
    if blob.digest != layer.digest:
        raise DigestMismatch(f"layer {layer.digest} is corrupted: its content hashes to {blob.digest}")
