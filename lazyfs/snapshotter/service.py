"""containerd's Snapshots gRPC service over `Snapshots`: messages in and out, errors as status codes.

containerd reaches a snapshotter it does not contain through a `proxy_plugins` entry naming a
unix socket; every call names the snapshotter, which we ignore (one socket, one snapshotter).
Our errors become the status codes containerd's errdefs understand (NOT_FOUND, ALREADY_EXISTS,
FAILED_PRECONDITION, INVALID_ARGUMENT), so `ctr` and the CRI plugin react as they do to their
own snapshotters; anything else is INTERNAL with one line, and the server goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

from lazyfs.snapshotter.api import Api, load
from lazyfs.snapshotter.metadata import Kind, Snapshot, SnapshotError
from lazyfs.snapshotter.remote import RemoteImages
from lazyfs.snapshotter.snapshots import Mount, Snapshots

log = logging.getLogger("lazyfs.snapshotter")
WORKERS = 8  # containerd unpacks layers and starts containers concurrently
Handler = TypeVar("Handler", bound=Callable[..., Any])


def _answering(method: Handler) -> Handler:
    """Our errors as gRPC status codes, with their one-line message."""

    @functools.wraps(method)
    def wrapper(self: SnapshotsService, request: Any, context: Any) -> Any:
        import grpc

        try:
            return method(self, request, context)
        except SnapshotError as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        except OSError as e:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__}: {e}")

    return wrapper  # type: ignore[return-value]


class SnapshotsService:
    """The servicer: one method per rpc of containerd.services.snapshots.v1.Snapshots."""

    def __init__(self, snapshots: Snapshots, api: Api) -> None:
        self.snapshots = snapshots
        self.api = api

    def _mounts(self, mounts: list[Mount]) -> list[Any]:
        return [self.api.mount.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]

    def _info(self, snapshot: Snapshot) -> Any:
        info = self.api.snapshots.Info(
            name=snapshot.key, parent=snapshot.parent, kind=int(snapshot.kind), labels=snapshot.labels
        )
        info.created_at.FromNanoseconds(int(snapshot.created * 1e9))
        info.updated_at.FromNanoseconds(int(snapshot.updated * 1e9))
        return info

    @_answering
    def Prepare(self, request: Any, context: Any) -> Any:
        mounts = self.snapshots.prepare(request.key, request.parent, dict(request.labels))
        return self.api.snapshots.PrepareSnapshotResponse(mounts=self._mounts(mounts))

    @_answering
    def View(self, request: Any, context: Any) -> Any:
        mounts = self.snapshots.prepare(request.key, request.parent, dict(request.labels), Kind.VIEW)
        return self.api.snapshots.ViewSnapshotResponse(mounts=self._mounts(mounts))

    @_answering
    def Mounts(self, request: Any, context: Any) -> Any:
        return self.api.snapshots.MountsResponse(mounts=self._mounts(self.snapshots.mounts(request.key)))

    @_answering
    def Commit(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        self.snapshots.commit(request.name, request.key, dict(request.labels) or None)
        return empty_pb2.Empty()

    @_answering
    def Remove(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        self.snapshots.remove(request.key)
        return empty_pb2.Empty()

    @_answering
    def Stat(self, request: Any, context: Any) -> Any:
        info = self._info(self.snapshots.metadata.get(request.key))
        return self.api.snapshots.StatSnapshotResponse(info=info)

    @_answering
    def Update(self, request: Any, context: Any) -> Any:
        paths = list(request.update_mask.paths)
        updated = self.snapshots.metadata.update_labels(request.info.name, dict(request.info.labels), paths)
        return self.api.snapshots.UpdateSnapshotResponse(info=self._info(updated))

    @_answering
    def List(self, request: Any, context: Any) -> Iterator[Any]:
        # containerd filters what we send by the request's filters itself (its metadata store
        # sits in front of every snapshotter), so all of them are listed, a hundred per message.
        infos = [self._info(s) for s in self.snapshots.metadata.all()]
        for start in range(0, len(infos), 100):
            yield self.api.snapshots.ListSnapshotsResponse(info=infos[start : start + 100])

    @_answering
    def Usage(self, request: Any, context: Any) -> Any:
        usage = self.snapshots.usage(request.key)
        return self.api.snapshots.UsageResponse(size=usage.size, inodes=usage.inodes)

    @_answering
    def Cleanup(self, request: Any, context: Any) -> Any:
        from google.protobuf import empty_pb2

        self.snapshots.cleanup()
        return empty_pb2.Empty()


def serve(address: Path, root: Path, remote: RemoteImages, ready: Callable[[], None] = lambda: None) -> None:
    """Answer containerd on the unix socket `address` until SIGTERM or SIGINT, with the snapshots
    under `root` and the remote layers of `remote` (made first: it forks, and gRPC must not be
    loaded in a process that forks)."""
    import grpc

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api = load()
    snapshots = Snapshots(root, remote)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="snapshots"))
    api.services.add_SnapshotsServicer_to_server(SnapshotsService(snapshots, api), server)
    address.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        address.unlink()  # a socket left by a snapshotter that ended without cleaning up
    umask = os.umask(0o077)  # the socket: its owner's alone, as containerd's own
    try:
        server.add_insecure_port(f"unix://{address}")
        server.start()
    finally:
        os.umask(umask)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        ready()
        stopping.wait()
    finally:
        server.stop(grace=5).wait()
        snapshots.close()
        with contextlib.suppress(FileNotFoundError):
            address.unlink()
