"""`commit`: a new image of a container's image plus what the container changed (its upper directory,
without the mount points its set-up made)."""

from __future__ import annotations

from pathlib import Path

from runtime.mountpoints import mount_points
from runtime.process import ContainerError
from runtime.state import ContainerState, containers_dir
from storage.diff import upper_to_tar
from storage.importer import add_layer
from storage.store import Image, Store


def commit(store: Store, state: ContainerState, name: str) -> Image:
    """Store the image NAME[:TAG]: the container's image with one more layer, its changes."""
    upper: Path = containers_dir(store.root) / state.id / "upper"
    if not upper.is_dir():
        raise ContainerError(f"container {state.name} has no upper layer: commit needs the overlay driver")
    base = store.image(state.image)
    with store.temp_file() as (tar_path, _):
        upper_to_tar(upper, tar_path, exclude=mount_points(upper, [], []))
        return add_layer(
            store, base, tar_path, name, f"lazyctr commit {state.id[:12]}: {' '.join(state.command)}"
        )
