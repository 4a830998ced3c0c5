"""Storage drivers: how a container gets its root file system from an image.

One interface: `prepare` (in the lazyctr process: make the layers available) and `mount` (inside
the container's mount namespace: make `<container>/rootfs` the root to pivot into). The lazy
driver will implement the same two steps over a lazyfs mount.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from runtime import syscalls as sc
from runtime.layers import LayerCache, extract_verified
from storage.store import Image, Store


class Driver(Protocol):
    name: str

    def prepare(self, image: Image, container_dir: Path) -> None: ...

    def mount(self, container_dir: Path) -> Path: ...


class OverlayDriver:
    """Each layer extracted once into layers/<diff_id>, shared; overlayfs with a per-container upper."""

    name = "overlay"

    def __init__(self, store: Store) -> None:
        self.cache = LayerCache(store)
        self.lowers: list[Path] = []

    def prepare(self, image: Image, container_dir: Path) -> None:
        layers = zip(image.manifest.layers, image.config.diff_ids, strict=True)
        self.lowers = [self.cache.get(layer, diff_id) for layer, diff_id in layers]
        for part in ("upper", "work", "rootfs"):
            (container_dir / part).mkdir(parents=True, exist_ok=True)

    def mount(self, container_dir: Path) -> Path:
        rootfs = container_dir / "rootfs"
        lowerdir = ":".join(str(p) for p in reversed(self.lowers))  # overlayfs lists the top layer first
        options = f"lowerdir={lowerdir},upperdir={container_dir / 'upper'},workdir={container_dir / 'work'}"
        sc.mount("overlay", rootfs, "overlay", 0, options)
        return rootfs


class CopyDriver:
    """The vfs-style baseline: every layer extracted into one private directory per container."""

    name = "copy"

    def __init__(self, store: Store) -> None:
        self.store = store

    def prepare(self, image: Image, container_dir: Path) -> None:
        rootfs = container_dir / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True)
        for layer in image.manifest.layers:
            extract_verified(self.store, layer, rootfs, "apply")
        rootfs.chmod(0o755)

    def mount(self, container_dir: Path) -> Path:
        rootfs = container_dir / "rootfs"
        sc.mount(str(rootfs), rootfs, None, sc.MS_BIND | sc.MS_REC)  # pivot_root needs a mount point
        return rootfs


DRIVERS: dict[str, type[OverlayDriver] | type[CopyDriver]] = {"overlay": OverlayDriver, "copy": CopyDriver}
