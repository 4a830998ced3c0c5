"""Garbage collection of what containers and images no longer need: blobs, extracted layers and the
assembled roots of lazily pulled images (storage.layers). Here, not in storage, because what a
container still uses is in its state (`ContainerState.layers`)."""

from __future__ import annotations

from runtime.state import all_states, containers_dir
from storage.layers import LayerCache
from storage.store import Store


def collect_garbage(store: Store) -> tuple[int, int, int]:
    """Remove blobs no image refers to, and layer directories no image or container uses.

    Returns the blobs removed, the bytes they freed, and the layer directories removed."""
    removed, freed = store.gc()
    images, _ = store.images()
    chains = [[str(diff_id) for diff_id in image.config.diff_ids] for image in images]
    chains += [state.layers for state in all_states(containers_dir(store.root))]
    return removed, freed, LayerCache(store).remove_unused(chains)
