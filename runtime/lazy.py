"""Lazy image mounts for the lazy storage driver: one lazyfs mount per image, shared by its containers.

A slot `<root>/lazy/<key>/` holds the mount point `root/` and `users/`, one file per container
using the mount (named by container ID, holding the PID that supervises it). The key is the hex
digest of the image manifest; a recording container gets a private slot (`<hex>-<container ID>`)
so that no other container's reads end up in its profile. Joining, leaving, mounting and
unmounting happen under a per-slot lock, so any number of lazyctr processes agree on who mounts
and who unmounts: the first user mounts, the last one out unmounts.

A user is stale when its container's state says it is gone (removed, or exited: that includes a
container whose supervisor was killed), or when it is still being created by a process that no
longer exists. Stale users are dropped whenever a slot is touched, and `prune` drops them from
every slot (`lazyctr rm` calls it), so a killed supervisor does not keep a mount forever.

A pull may mount the image before any container asks (`hold_for_a_start`, what `lazyctr service`
does after a lazy pull): its profile then comes while `run` is still starting. That hold is a user
of its own (`pull-<pid>`, stale once its process is gone), which the first container to join
removes, and which lets go by itself after a lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lazyfs.host import is_mounted, process_alive
from lazyfs.mount import MountState, umount
from lazyfs.profile import save_profile
from lazyfs.service import mount_lazily
from runtime.state import ContainerState, containers_dir
from storage.errors import NotFound, StorageError
from storage.files import atomic_write
from storage.pieces import Piece, file_pieces
from storage.store import Image, Store

LAZY_DIR = "lazy"
DEFAULT_TIMEOUT = 30.0  # seconds a read waits for the registry before EIO
HOLD_LEASE = 60.0  # seconds a pull's mount waits for its container before it lets go
HOLDER = "pull-"  # the name of a pull's hold on a slot: pull-<pid>


@dataclass(frozen=True)
class Slot:
    root: Path  # the lazyctr root
    key: str

    @property
    def dir(self) -> Path:
        return self.root / LAZY_DIR / self.key

    @property
    def mountpoint(self) -> Path:
        return self.dir / "root"

    @property
    def users(self) -> Path:
        return self.dir / "users"

    @property
    def state(self) -> MountState:
        return MountState.of(self.root, self.mountpoint)

    @classmethod
    def shared(cls, root: Path, image: Image) -> Slot:
        return cls(root, image.descriptor.digest.hex)

    @classmethod
    def private(cls, root: Path, image: Image, container_id: str) -> Slot:
        return cls(root, f"{image.descriptor.digest.hex}-{container_id}")

    @property
    def private_to_a_container(self) -> bool:
        return "-" in self.key

    def user_ids(self) -> list[str]:
        return sorted(p.name for p in self.users.iterdir()) if self.users.is_dir() else []


@contextlib.contextmanager
def _locked(slot: Slot) -> Iterator[None]:
    """An exclusive POSIX record lock on the slot's lock file.

    Not flock (storage.files.file_lock): mounting forks the lazyfs daemon, which would inherit an
    flock along with the open file and hold it for as long as the mount lives. A POSIX lock
    belongs to the process that took it and is not inherited by a fork.
    """
    path = slot.root / "locks" / f"lazy-{slot.key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def acquire(store: Store, image: Image, container_id: str, private: bool = False) -> Slot:
    """Make `image`'s lazyfs mount available to the container, mounting it if nobody has yet.

    A shared mount prefetches the image's access profile, if the store has one (else one inherited
    from its previous version in the store, lazyfs.lineage); a private one (for recording a
    profile) does not, so it records what a cold start reads.
    """
    slot = Slot.private(store.root, image, container_id) if private else Slot.shared(store.root, image)
    with _locked(slot):
        _drop_stale_users(slot)
        if is_mounted(slot.mountpoint) and not _daemon_alive(slot):
            _unmount(slot)  # its daemon died: the mount only answers ENOTCONN now
        if not is_mounted(slot.mountpoint):
            slot.mountpoint.mkdir(parents=True, exist_ok=True)
            try:
                mount_lazily(store, image, slot.mountpoint, DEFAULT_TIMEOUT, profiled=not private)
            except BaseException:
                _remove_slot_if_unused(slot)
                raise
        slot.users.mkdir(exist_ok=True)
        users = slot.user_ids()
        if not container_id.startswith(HOLDER):  # a container came: a pull's hold has done its job
            for holder in (user for user in users if user.startswith(HOLDER)):
                (slot.users / holder).unlink(missing_ok=True)
        elif any(not user.startswith(HOLDER) for user in users):
            return slot  # a container was first: the mount lives as long as it does, no hold needed
        atomic_write(slot.users / container_id, json.dumps({"pid": os.getpid()}).encode())
    return slot


def hold_for_a_start(
    store: Store, image: Image, asker: int, lease: float = HOLD_LEASE, poll: float = 0.05
) -> None:
    """Mount `image`'s shared slot now (its profile prefetched from this moment on) and hold it
    until a container joins (which takes the hold over: the mount then lives as long as its
    containers), `lease` seconds have passed, or the process `asker` (the service that asked for
    the hold, this process's parent) has ended; then it lets go, and the mount ends unless a
    container joined meanwhile. Blocks for as long as it holds."""
    if os.getppid() != asker:  # it ended already
        return
    holder = f"{HOLDER}{os.getpid()}"
    slot = acquire(store, image, holder)
    held = slot.users / holder  # removed by the first container that joins (`acquire`)
    deadline = time.monotonic() + lease
    try:
        # An orphan's parent is another process: polled, since a signal could come mid-`acquire`.
        while time.monotonic() < deadline and held.exists() and os.getppid() == asker:
            time.sleep(poll)
    finally:
        if held.exists():  # no container came: let go (the mount ends unless one joined just now)
            release(slot, holder)


def release(slot: Slot, container_id: str) -> None:
    """The container no longer uses the mount; the last user out unmounts it."""
    with _locked(slot):
        (slot.users / container_id).unlink(missing_ok=True)
        _drop_stale_users(slot)
        if not slot.user_ids():
            _unmount(slot)


def prune(root: Path) -> int:
    """Drop stale users from every slot and unmount the mounts nobody uses; returns how many went."""
    unmounted = 0
    base = root / LAZY_DIR
    for directory in sorted(base.iterdir()) if base.is_dir() else []:
        slot = Slot(root, directory.name)
        with _locked(slot):
            _drop_stale_users(slot)
            if not slot.user_ids():
                unmounted += is_mounted(slot.mountpoint)
                _unmount(slot)
    return unmounted


def _drop_stale_users(slot: Slot) -> None:
    for container_id in slot.user_ids():
        if _stale(containers_dir(slot.root) / container_id, slot.users / container_id):
            (slot.users / container_id).unlink(missing_ok=True)


def _stale(container_dir: Path, user_file: Path) -> bool:
    if user_file.name.startswith(HOLDER):  # a pull's hold: no container, only its process
        return not process_alive(_user_pid(user_file))
    try:
        state = ContainerState.load(container_dir)  # `exited` too when its supervisor died
    except NotFound:
        return True
    if state.status == "exited":
        return True
    if state.status == "created":  # between create and run: its preparing process must still be there
        return not process_alive(_user_pid(user_file))
    return False


def _user_pid(user_file: Path) -> int:
    """The PID a user file names, or 0 (no process) if it cannot be read."""
    try:
        return int(json.loads(user_file.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _daemon_alive(slot: Slot) -> bool:
    info = slot.state.info
    return info is not None and process_alive(int(info["pid"]))


def _unmount(slot: Slot) -> None:
    """Unmount (a busy mount is detached and ends with its last user) and tidy the slot away."""
    if is_mounted(slot.mountpoint):
        umount(slot.root, slot.mountpoint)
    _remove_slot_if_unused(slot)


def _remove_slot_if_unused(slot: Slot) -> None:
    if slot.user_ids() or is_mounted(slot.mountpoint):
        return
    # Nobody can name a private mount again: once its daemon is gone, its state directory is litter.
    if slot.private_to_a_container and slot.state.info is None:
        shutil.rmtree(slot.state.directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        slot.users.rmdir()
        slot.mountpoint.rmdir()
        slot.dir.rmdir()


# -- recording access profiles ---------------------------------------------------------------------


class ProfileRecorder:
    """Takes the pieces a mount has served after `seconds`, or at `finish` if that comes first."""

    def __init__(self, slot: Slot, seconds: float) -> None:
        self.slot = slot
        self.accesses: list[dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._snapshot)
        self._timer.daemon = True
        self._timer.start()

    def _snapshot(self) -> None:
        with self._lock:
            if self.accesses is None:
                self.accesses = self.slot.state.accesses()

    def finish(self) -> list[dict[str, Any]]:
        """The recorded pieces; call it before the mount goes away."""
        self._timer.cancel()
        self._snapshot()
        assert self.accesses is not None
        return self.accesses


def store_profile(store: Store, image: Image, accesses: list[dict[str, Any]]) -> tuple[int, int]:
    """Save `accesses` as the image's access profile; returns (pieces, uncompressed bytes)."""
    save_profile(store, image, accesses)
    sizes = piece_sizes(store, image)
    return len(accesses), sum(sizes.get((a["layer"], a["digest"]), 0) for a in accesses)


def piece_sizes(store: Store, image: Image) -> dict[tuple[str, str], int]:
    """The uncompressed size of every piece of the image, by (layer digest, piece digest)."""
    out: dict[tuple[str, str], int] = {}
    for index, layer in enumerate(image.manifest.layers):
        try:
            toc = store.layer_toc(layer)
        except StorageError:
            continue  # a layer without a TOC has no pieces to name
        for entry in toc.entries:
            if entry.type != "reg" or not entry.size:
                continue
            with contextlib.suppress(StorageError):
                for piece in file_pieces(entry, index):
                    if isinstance(piece, Piece):
                        out[(str(layer.digest), str(piece.digest))] = piece.size
    return out
