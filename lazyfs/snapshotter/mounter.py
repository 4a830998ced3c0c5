"""The process that starts the snapshotter's mount daemons, forked before gRPC is loaded.

A lazyfs mount daemon is forked from the process that asks for the mount (lazyfs.mount), and a
process running gRPC must not fork: gRPC's fork handlers restart its pollers in the child, on
descriptors the daemon has closed. So the snapshotter forks this small process first, while it
is still single-threaded, and asks it for each mount over a socket pair, one JSON line each way.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from storage.errors import StorageError


class MountFailed(StorageError):
    """The mounter could not mount an image; the message is its one-line reason."""


class Mounter:
    def __init__(self, store_root: Path, timeout: float, fill: bool) -> None:
        ours, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # the mounter
            status = 1
            try:
                ours.close()
                _serve(theirs, store_root, timeout, fill)
                status = 0
            finally:
                os._exit(status)
        theirs.close()
        self._socket = ours
        self._replies = ours.makefile("r")
        self._lock = threading.Lock()

    def mount(self, image: str, mountpoint: Path) -> None:
        """Mount the store's `image` at `mountpoint` with its layers as overlay lower directories."""
        with self._lock:
            self._socket.sendall(json.dumps({"image": image, "mountpoint": str(mountpoint)}).encode() + b"\n")
            line = self._replies.readline()
        if not line:
            raise MountFailed("the mounter process has ended")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise MountFailed(reply["error"])

    def close(self) -> None:
        self._replies.close()
        self._socket.close()  # the mounter sees the end of its requests and exits
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(requests: socket.socket, store_root: Path, timeout: float, fill: bool) -> None:
    import signal

    from lazyfs.service import mount_here, preload
    from storage.store import Store

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the snapshotter, which closes our socket
    # Each daemon we fork finds what it runs already imported: a mount's 140 ms of imports (the
    # registry client's aiohttp, mostly) leave containerd's Prepare.
    preload()
    store = Store(store_root)
    with requests, requests.makefile("r") as lines:
        for line in lines:
            request = json.loads(line)
            try:
                image = store.image(request["image"])
                mountpoint = Path(request["mountpoint"])
                mount_here(store, image, mountpoint, timeout, fill=fill, lowers=True)
                reply: dict[str, str] = {}
            except (StorageError, OSError) as e:
                reply = {"error": str(e)}
            requests.sendall(json.dumps(reply).encode() + b"\n")
