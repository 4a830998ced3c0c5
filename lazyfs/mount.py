"""Mounting and unmounting: a lazyfs mount is a daemon process serving one image at one directory.

`mount` prepares everything that can fail because of the user (the image, its TOCs, the
directory) in the calling process, then forks the daemon and returns once the kernel has
mounted the file system. The daemon keeps its state in `<root>/mounts/<key>/` (key: a hash of
the mount point): `mount.json` (pid, mount point, image), `stats.json` (refreshed while it runs
and written last when it stops; `first_read` says when the first read of a file's contents came, in
CLOCK_BOOTTIME, and what had been fetched by then), `accesses.json` (the pieces read so far, in
first-read order, written on SIGUSR1 and at the end: what an access profile is made of) and `log`.
When a background fill (`fill=True`) is over, the daemon assembles the image's root as a plain
directory from the chunk cache (storage.materialise) for the containers started after it; stats.json's
`plain_root` says where it is, or why there is none (null until then).

A mount made for `run --timings` marks `mount up` on the timeline, and adds the daemon's first read
and fetches to it when the command has ended (storage/timeline.py).

`umount` always succeeds on a live mount: a busy file system is detached lazily, and the daemon
ends when its last user lets go.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lazyfs.host import is_mounted, process_alive
from lazyfs.image import MountableImage
from storage import timeline
from storage.errors import StorageError
from storage.files import atomic_write
from storage.layers import LayerCache
from storage.materialise import materialise_root
from storage.pieces import Piece
from storage.store import Image, Store

if TYPE_CHECKING:
    from lazyfs.fetcher import Fetcher
    from lazyfs.source import ImageSource

STATS_INTERVAL = 0.5
READ_AHEAD_KB = 4096  # the kernel's read-ahead in a mounted file: a few of lazyfs's 1 MiB reads in flight
READY_TIMEOUT = 30.0


class MountError(StorageError):
    """A mount that cannot be made or found."""


@dataclass
class MountState:
    directory: Path  # <root>/mounts/<key>

    @classmethod
    def of(cls, root: Path, mountpoint: Path) -> MountState:
        key = hashlib.sha256(str(mountpoint.resolve()).encode()).hexdigest()[:16]
        return cls(root / "mounts" / key)

    @property
    def info(self) -> dict[str, Any] | None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data: dict[str, Any] = json.loads((self.directory / "mount.json").read_text())
            return data
        return None

    def stats(self) -> dict[str, Any]:
        """The daemon's statistics, as of now if it runs (else as it last wrote them)."""
        self._snapshot()
        try:
            data: dict[str, Any] = json.loads((self.directory / "stats.json").read_text())
        except (FileNotFoundError, ValueError):
            raise MountError(f"no statistics in {self.directory}") from None
        return data

    def accesses(self) -> list[dict[str, Any]]:
        """The pieces read so far, in first-read order."""
        self._snapshot()
        try:
            data: list[dict[str, Any]] = json.loads((self.directory / "accesses.json").read_text())
        except (FileNotFoundError, ValueError):
            return []
        return data

    def _snapshot(self) -> None:
        """Have a running daemon write its stats and accesses now (SIGUSR1), and wait until it did."""
        info = self.info
        done = self.directory / "accesses.json"  # written last
        if info is None or not process_alive(int(info["pid"])):
            return
        before = done.stat().st_mtime_ns if done.exists() else 0
        os.kill(int(info["pid"]), signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not done.exists() or done.stat().st_mtime_ns == before):
            time.sleep(0.005)


def mount(
    store: Store,
    image: Image,
    mountpoint: Path,
    timeout: float = 30.0,
    prefetch: Sequence[dict[str, Any]] = (),
    fill: bool = False,
    lowers: bool = False,
) -> MountState:
    """Mount `image` read-only at `mountpoint`; returns once the mount is up. `lowers`: its layers
    side by side, as overlayfs lower directories (see MountableImage.load), not merged."""
    if not mountpoint.is_dir():
        raise MountError(f"{mountpoint}: not a directory")
    if is_mounted(mountpoint):
        raise MountError(f"{mountpoint}: something is already mounted there")
    if image.source is not None:  # lazily pulled: its bytes come from a registry, and only if trusted
        from registry.policy import check_stored

        check_stored(store, image)
    mountable = MountableImage.load(store, image, lowers)
    state = MountState.of(store.root, mountpoint)
    state.directory.mkdir(parents=True, exist_ok=True)
    for stale in ("stats.json", "accesses.json"):
        (state.directory / stale).unlink(missing_ok=True)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    # Forked twice: the daemon is init's child, never a zombie of a long-lived caller (a
    # container's supervisor), and keeps none of the caller's descriptors (its locks, say).
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.setsid()
            if os.fork() == 0:
                _close_descriptors_but(write_end)
                status = _daemon(store, mountable, mountpoint, state, timeout, prefetch, fill, write_end)
            else:
                status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    os.waitpid(child, 0)
    try:
        answer = _read_with_timeout(read_end, READY_TIMEOUT)
    finally:
        os.close(read_end)
    words = answer.split()  # the daemon's pid as soon as it runs, then "ok" once mounted
    pid = int(words[0]) if words and words[0].isdigit() else 0
    if words[1:] != [b"ok"]:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        why = _tail(state.directory / "log") or "the daemon ended"
        raise MountError(f"{mountpoint}: the file system did not come up: {why}")
    info = {"pid": pid, "mountpoint": str(mountpoint.resolve()), "image": image.name}
    info["manifest"] = str(image.descriptor.digest)
    atomic_write(state.directory / "mount.json", json.dumps(info).encode())
    on_timeline(state)
    return state


def on_timeline(state: MountState) -> None:
    """Mark the mount up on this process's timeline; the daemon's part is added at its end."""
    timeline.mark("mount up")
    timeline.at_end(lambda: _add_to_timeline(state))


def _add_to_timeline(state: MountState) -> None:
    """The daemon's part of the timeline: its first read and what it fetched before and after."""
    try:
        stats = state.stats()
    except (MountError, OSError):
        return  # it left no statistics: no phase of its own, and its fetches are not known
    if (first := stats.get("first_read")) is not None:
        at, requests, fetched = first["boottime_ns"], first["requests"], first["bytes_fetched"]
        timeline.other("lazyfs", "first read", at, requests, fetched)
    timeline.other("lazyfs", None, timeline.now_ns(), stats["requests"], stats["bytes_fetched"])


def umount(root: Path, mountpoint: Path, wait: float = 10.0) -> None:
    """Unmount a lazyfs mount; a busy one is detached and goes away when its last user does."""
    state = MountState.of(root, mountpoint)
    info = state.info
    if not is_mounted(mountpoint):
        if info is None:
            raise MountError(f"{mountpoint}: not mounted")
        _forget(state)
        return
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:  # busy: detach now, the kernel finishes when it is no longer used
        result = subprocess.run(["fusermount3", "-uz", str(mountpoint)], capture_output=True, text=True)
        if result.returncode != 0:
            raise MountError(f"{mountpoint}: {result.stderr.strip() or 'cannot unmount'}")
        return
    if info is not None:
        deadline = time.monotonic() + wait
        while process_alive(int(info["pid"])) and time.monotonic() < deadline:
            time.sleep(0.01)
    _forget(state)


def _forget(state: MountState) -> None:
    (state.directory / "mount.json").unlink(missing_ok=True)


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    """What the daemon writes to its end of the pipe until it closes it (or the time is up)."""
    import select

    out = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        piece = os.read(fd, 64)
        if not piece:
            break
        out += piece
    return out


def _close_descriptors_but(keep: int) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _tail(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else ""
    return ""


def _read_ahead_widely(mountpoint: Path) -> None:
    """Have the kernel read ahead READ_AHEAD_KB in the mount's files, not its default 128 KiB.

    A FUSE file system can only lower the read-ahead at init (max_readahead), never raise it; with
    128 KiB a sequential reader waits for one 128 KiB round trip after another. Its backing device's
    read_ahead_kb can be raised once it is mounted, by root (without root, the default stays).
    """
    with contextlib.suppress(OSError):
        device = os.stat(mountpoint).st_dev
        Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb").write_text(
            f"{READ_AHEAD_KB}\n"
        )


# -- the daemon -----------------------------------------------------------------------------------


# What a daemon imports beyond what its caller had to (the fetch engine, FUSE, the registry client).
DAEMON_MODULES = ("lazyfs.fetcher", "lazyfs.kernel", "lazyfs.local_files", "lazyfs.source", "registry.client")


def preload_daemon() -> None:
    """Import what a mount daemon runs, for a long-lived process that forks many of them (the
    snapshotter's mounter): each then starts with it imported. A one-off caller (a container's
    supervisor, which forks the container's init) does not, and keeps none of it."""
    import importlib

    for module in DAEMON_MODULES:
        importlib.import_module(module)


def _daemon(
    store: Store,
    mountable: MountableImage,
    mountpoint: Path,
    state: MountState,
    timeout: float,
    prefetch: Sequence[dict[str, Any]],
    fill: bool,
    ready_fd: int,
) -> int:
    os.write(ready_fd, f"{os.getpid()} ".encode())
    # The serving side is imported here, in the daemon: the caller (a container's supervisor, which
    # forks the container's init) need not carry FUSE, the fetch engine and the registry client.
    from lazyfs.source import ImageSource

    log_fd = os.open(state.directory / "log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", force=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal that mounted us is not for us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # whatever the caller had (a pull's hold ignores it)

    reads = Reads()
    with mountable.fetching(store, timeout, reads.record) as fetcher:
        reads.fetcher = fetcher
        with _lasting_objects():
            if prefetch:  # found in the TOCs alone: the profile's bytes come while the tree is made
                fetcher.prefetch(mountable.profile_pieces(prefetch))
            source = ImageSource(mountable.tree, fetcher, mountable.image.name, warm=fetcher.cache.advise)
        return _serve(source, fetcher, mountable, mountpoint, state, fill, ready_fd, reads)


@contextlib.contextmanager
def _lasting_objects() -> Iterator[None]:
    """Objects made in the block live as long as the daemon (an image's tree: an entry, a node and
    their attributes per path): no collection runs while they are made (the collector would scan the
    growing heap again and again: 80 ms of a 50 ms tree for a Debian image), and they are frozen
    after, out of every later collection's scan. Nothing made in the block is a cycle of garbage."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


class Reads:
    """The pieces read so far, in first-read order, and when the first read came (for the timeline)."""

    def __init__(self) -> None:
        self.pieces: dict[Piece, None] = {}  # dicts keep insertion order: the first-read order
        self.first: dict[str, int] | None = None
        self.fetcher: Fetcher | None = None

    def record(self, piece: Piece) -> None:
        self.start(timeline.now_ns())
        if piece not in self.pieces:
            self.pieces[piece] = None

    def start(self, at_ns: int) -> None:
        """A file's contents were first read at `at_ns` (CLOCK_BOOTTIME), unless a read was recorded
        already."""
        if self.first is None and self.fetcher is not None:
            stats = self.fetcher.stats
            self.first = {
                "boottime_ns": at_ns,
                "requests": stats.requests,
                "bytes_fetched": stats.bytes_fetched,
            }


def _serve(
    source: ImageSource,
    fetcher: Fetcher,
    mountable: MountableImage,
    mountpoint: Path,
    state: MountState,
    fill: bool,
    ready_fd: int,
    reads: Reads,
) -> int:
    from lazyfs.kernel import Kernel
    from lazyfs.local_files import LocalFiles

    layers = [str(layer.digest) for layer in mountable.image.manifest.layers]
    plain_root: dict[str, str | None] = {"plain_root": None}
    assembled = LayerCache(mountable.store).plain_root(mountable.image)
    local = LocalFiles(source, fetcher, assembled)
    assembling = threading.Lock()  # held while the plain root is made: the daemon ends only after

    written = {"stats": ""}

    def count_passed() -> None:
        """Count the opens the kernel served itself since the last call."""
        first, paths = kernel.take_passed()
        if paths:
            reads.start(first)
        for path in paths:
            local.opened(path)

    def write_stats_now() -> None:
        """stats.json, unless it would say what it says: an idle daemon (a fleet holds many) writes
        and syncs nothing twice a second. The opens the kernel served itself are counted first."""
        count_passed()
        stats = json.dumps(
            {
                **fetcher.stats.to_json(),
                "first_read": reads.first,
                "fuse_transport": kernel.transport,
                **plain_root,
            },
            sort_keys=True,
        )
        if stats != written["stats"]:
            atomic_write(state.directory / "stats.json", stats.encode())
            written["stats"] = stats

    def write_accesses(*_: Any) -> None:
        write_stats_now()
        out = [{"layer": layers[p.layer], "digest": str(p.digest)} for p in list(reads.pieces)]
        atomic_write(state.directory / "accesses.json", json.dumps(out).encode())

    def on_ready() -> None:
        os.write(ready_fd, b"ok")
        os.close(ready_fd)
        threading.Thread(target=plan, name="lazyfs-plan", daemon=True).start()

    def plan() -> None:  # off the FUSE threads: a big image has many pieces to list
        _read_ahead_widely(mountpoint)
        pieces = source.all_pieces()
        fetcher.know_layout(pieces)
        # Every piece already here (an earlier mount fetched them): the fill is done, so assemble the
        # plain root now, and files are passed through to it from then on.
        if fill or (local.root is None and all(fetcher.cache.contains(p.digest) for p in pieces)):
            fetcher.fill(pieces).result()
            with assembling:
                made = plain_root["plain_root"] = _assemble_plain_root(mountable)
                if not made.startswith("failed"):
                    local.use_root(Path(made))
        elif local.root is not None:
            plain_root["plain_root"] = str(local.root)
        if local.root is not None:  # every file is on local disk: opens need not wait to register it
            kernel.register(source.regular_files())

    kernel = Kernel(source, local.open, on_ready)
    fetcher.count_opens = count_passed
    signal.signal(signal.SIGUSR1, write_accesses)
    kernel.mount(mountpoint, f"lazyctr:{mountable.image.name}")

    # FUSE runs on threads of its own: Python runs signal handlers (SIGUSR1: write a snapshot)
    # only on the main thread, which would otherwise wait for the file system's end.
    fuse = threading.Thread(target=kernel.serve, name="lazyfs-fuse")
    fuse.start()
    try:
        while fuse.is_alive():
            fuse.join(STATS_INTERVAL)
            write_stats_now()
    finally:
        with assembling:  # a root being assembled is finished, not left half made
            write_accesses()
    return 0


def _assemble_plain_root(mountable: MountableImage) -> str:
    """The image's root assembled from the filled chunk cache, or why there is none."""
    try:
        root = materialise_root(mountable.store, mountable.image, mountable.tree)
    except (StorageError, OSError) as e:
        logging.warning("%s: no plain root: %s", mountable.image.name, e)
        return f"failed: {e}"
    return str(root) if root is not None else "failed: its layers do not name their TOCs"
