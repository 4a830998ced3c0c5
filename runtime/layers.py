"""Garbage collection of what containers and images no longer need: blobs, extracted layers, the
assembled roots of lazily pulled images (storage.layers) and the btrfs driver's image subvolumes.
Here, not in storage, because what a container still uses is in its state (`ContainerState.layers`)."""

from __future__ import annotations

from runtime.drivers import BtrfsDriver
from runtime.state import all_states, containers_dir
from storage.layers import LayerCache
from storage.store import Store


def collect_garbage(store: Store) -> tuple[int, int, int, int]:
    """Remove blobs no image refers to, layer directories no image or container uses, and the btrfs
    subvolumes of images that are gone.

    Returns the blobs removed, the bytes they freed, the layer directories and the subvolumes removed."""
    removed, freed = store.gc()
    images, _ = store.images()
    chains = [[str(diff_id) for diff_id in image.config.diff_ids] for image in images]
    chains += [state.layers for state in all_states(containers_dir(store.root))]
    layers = LayerCache(store).remove_unused(chains)
    return removed, freed, layers, BtrfsDriver(store).remove_unused(images)
