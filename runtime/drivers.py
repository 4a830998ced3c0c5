"""Storage drivers: how a container gets its root file system from an image.

One interface: `prepare` (in the lazyctr process: make the layers available), `mount` (inside
the container's mount namespace: make `<container>/rootfs` the root to pivot into) and `release`
(in the lazyctr process, once the container has ended: let go of what `prepare` took); and
`choose_driver`, which one a container gets when none is asked for.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from runtime import btrfs
from runtime import syscalls as sc
from runtime.process import ContainerError
from storage.errors import StorageError
from storage.files import file_lock
from storage.layers import LayerCache, extract_verified
from storage.store import Image, Store

if TYPE_CHECKING:
    from runtime.lazy import ProfileRecorder, Slot

DEFAULT_PROFILE_SECONDS = 10.0


class Driver(Protocol):
    name: str

    def prepare(self, image: Image, container_dir: Path) -> None: ...

    def mount(self, container_dir: Path) -> Path: ...

    def release(self, container_dir: Path) -> None: ...


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
        return mount_overlay(container_dir, self.lowers)

    def release(self, container_dir: Path) -> None:
        pass  # extracted layers stay for the next container; gc removes unused ones


def mount_overlay(container_dir: Path, lowers: list[Path]) -> Path:
    """overlayfs at `<container>/rootfs` over `lowers` (bottom first), with the container's upper dir."""
    rootfs = container_dir / "rootfs"
    lowerdir = ":".join(str(p) for p in reversed(lowers))  # overlayfs lists the top layer first
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

    def release(self, container_dir: Path) -> None:
        pass  # the private copy goes with the container's directory


class BtrfsDriver:
    """Slacker's and docker's btrfs driver: the image's layers applied once into a subvolume,
    `btrfs/<manifest hex>` under the root, and each container's root a writable snapshot of it, which
    shares every extent (a write copies only the blocks it touches, not the whole file).

    Needs --root on a btrfs file system. The snapshot is destroyed when the container ends (like
    the copy driver, it has no upper directory to commit).
    """

    name = "btrfs"

    def __init__(self, store: Store) -> None:
        self.store = store

    def prepare(self, image: Image, container_dir: Path) -> None:
        container_dir.mkdir(parents=True, exist_ok=True)
        try:
            btrfs.snapshot(self.image_subvolume(image), container_dir / "rootfs")
        except OSError as e:
            hint = ": --root must be on one" if e.errno == errno.ENOTTY else ""
            raise ContainerError(f"btrfs driver: {e.strerror}{hint}") from None

    def image_subvolume(self, image: Image) -> Path:
        """The image's subvolume; made if missing, under a lock, in a temporary one renamed into place."""
        base = self.store.root / "btrfs"
        target = base / image.descriptor.digest.hex
        if target.is_dir():
            return target
        base.mkdir(parents=True, exist_ok=True)
        with file_lock(base / f".{target.name}.lock"):
            if target.is_dir():
                return target
            staging = base / f".{target.name}.{os.getpid()}"
            btrfs.create_subvolume(staging)
            try:
                for layer in image.manifest.layers:
                    extract_verified(self.store, layer, staging, "apply")
                staging.chmod(0o755)
                os.rename(staging, target)
            except BaseException:
                btrfs.delete_subvolume(staging)
                raise
        return target

    def mount(self, container_dir: Path) -> Path:
        rootfs = container_dir / "rootfs"
        sc.mount(str(rootfs), rootfs, None, sc.MS_BIND | sc.MS_REC)  # pivot_root needs a mount point
        return rootfs

    def release(self, container_dir: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            btrfs.delete_subvolume(container_dir / "rootfs")

    def remove_unused(self, images: list[Image]) -> int:
        """Destroy the subvolumes of images that are gone (a container's snapshot does not need its
        source: it shares extents, not the subvolume); how many."""
        base = self.store.root / "btrfs"
        kept = {image.descriptor.digest.hex for image in images}
        removed = 0
        for subvolume in sorted(base.iterdir()) if base.is_dir() else []:
            if subvolume.name.startswith(".") or subvolume.name in kept:
                continue  # a lock, or one being made, or an image's
            lock = base / f".{subvolume.name}.lock"
            with file_lock(lock):  # not while it is being made for a container
                images, _ = self.store.images()  # again, under the lock: pulled again meanwhile?
                if subvolume.name in {image.descriptor.digest.hex for image in images}:
                    continue
                btrfs.delete_subvolume(subvolume)
            lock.unlink(missing_ok=True)
            removed += 1
        return removed


class LazyDriver:
    """overlayfs over the image's lazyfs mount: the container starts before the image is downloaded.

    The lazyfs mount (one per image, shared by its containers, see runtime/lazy.py) is made in the
    host's mount namespace by `prepare`, so the container's namespace inherits it as the lower dir.
    With `record_seconds`, the container gets a private mount of its own and what it reads in its
    first `record_seconds` (or until it ends) is stored as the image's access profile.

    Once a mount's background fill has fetched the whole image, its daemon assembles the image's root
    as a plain directory (storage.materialise): a container started after that gets overlayfs over it
    and reads at the local disk's speed, with no FUSE mount at all. Containers already running on the
    lazyfs mount keep it until they end. Recording a profile always goes through lazyfs.
    """

    name = "lazy"

    def __init__(self, store: Store, record_seconds: float | None = None) -> None:
        self.store = store
        self.record_seconds = record_seconds
        self.image: Image | None = None
        self.slot: Slot | None = None
        self.recorder: ProfileRecorder | None = None
        self.recorded: tuple[int, int] | None = None  # (pieces, bytes) of the profile stored, (0, 0): none
        self.plain_root: Path | None = None  # the image's assembled root, when the container got it

    def prepare(self, image: Image, container_dir: Path) -> None:
        self.image = image
        for part in ("upper", "work", "rootfs"):
            (container_dir / part).mkdir(parents=True, exist_ok=True)
        recording = self.record_seconds is not None
        if not recording:
            self.plain_root = LayerCache(self.store).plain_root(image)
            if self.plain_root is not None:
                return
        from runtime import lazy  # imports FUSE: only containers that use it pay for it

        try:
            self.slot = lazy.acquire(self.store, image, container_dir.name, private=recording)
        except StorageError as e:  # no FUSE, a corrupt TOC, an image without a source...
            raise ContainerError(f"lazy mount of {image.name}: {e}") from None
        if self.record_seconds is not None:
            self.recorder = lazy.ProfileRecorder(self.slot, self.record_seconds)

    def mount(self, container_dir: Path) -> Path:
        if self.plain_root is not None:
            return mount_overlay(container_dir, [self.plain_root])
        assert self.slot is not None, "prepare first"
        return mount_overlay(container_dir, [self.slot.mountpoint])

    def release(self, container_dir: Path) -> None:
        from runtime import lazy

        if self.slot is None:
            return
        slot, self.slot = self.slot, None
        try:
            if self.recorder is not None and self.image is not None:
                accesses = self.recorder.finish()  # before the mount, and what it served, goes
                # Nothing read (the command failed at once): an empty profile would only hide an older one.
                self.recorded = lazy.store_profile(self.store, self.image, accesses) if accesses else (0, 0)
        finally:
            try:
                lazy.release(slot, container_dir.name)
            except (StorageError, OSError) as e:  # the container's own status matters more
                print(f"lazyctr: warning: lazy mount {slot.mountpoint}: {e}", file=sys.stderr)


DRIVERS: dict[str, type[OverlayDriver] | type[CopyDriver] | type[LazyDriver] | type[BtrfsDriver]] = {
    "overlay": OverlayDriver,
    "copy": CopyDriver,
    "lazy": LazyDriver,
    "btrfs": BtrfsDriver,
}


def choose_driver(
    store: Store, image: Image, name: str | None, record_seconds: float | None = None
) -> Driver:
    """The driver `name`, or the default: lazy for an image whose layers are not all here (or to record
    a profile, which reads through lazyfs), overlay otherwise."""
    complete = store.is_complete(image)
    if name is None:
        name = "lazy" if record_seconds is not None or not complete else "overlay"
    if record_seconds is not None and name != "lazy":
        raise ContainerError(
            f"--record-profile records reads through lazyfs: it needs --driver lazy, not {name}"
        )
    if name != "lazy" and not complete:
        raise ContainerError(
            f"{image.name} was pulled lazily (its layers are not all here): the {name} driver needs them,"
            " use --driver lazy"
        )
    if name == "lazy":
        return LazyDriver(store, record_seconds)
    return DRIVERS[name](store)
