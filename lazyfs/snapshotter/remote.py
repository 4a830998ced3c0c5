"""Remote layers: a layer containerd is about to unpack that we can serve lazily instead.

containerd's unpacker prepares each layer's snapshot with the layer's descriptor annotations as
labels, and clients that enable remote snapshotters add the image's reference and digests to
them: containerd's own AppendInfoHandlerWrapper (the CRI plugin with snapshot annotations on,
`ctr`-based clients) sets `cri.image-ref`, `cri.manifest-digest` and `cri.layer-digest`;
stargz's `ctr-remote image rpull` sets `remote/stargz.reference` and `remote/stargz.digest`.

An image is pulled lazily into the snapshotter's own store (its manifest, by digest where a
label names it, and the TOCs of its zstd:chunked layers; the layers without one are left to
containerd) and mounted once by the lazy engine, the same mount daemon `lazyctr run` uses, with
its layers side by side as overlayfs lower directories (`<mount>/<layer index>`): one daemon,
one chunk cache, one profile prefetch and background fill per image, whichever of its layers
containerd asks for. The daemons outlive a restart of the snapshotter, which finds them again
(or mounts anew where one is gone) from the records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lazyfs.host import is_mounted
from lazyfs.mount import MountState, umount
from lazyfs.snapshotter.mounter import Mounter
from registry.transfer import local_name, pull_lazy
from storage.digest import Digest
from storage.errors import StorageError
from storage.reference import registry_ref
from storage.store import Image, Store
from storage.zstd_chunked import toc_position

log = logging.getLogger("lazyfs.snapshotter")

TARGET_LABEL = "containerd.io/snapshot.ref"  # the name containerd will look the snapshot up by
MANIFEST_LABEL = "containerd.io/snapshot/cri.manifest-digest"
REF_LABELS = ("containerd.io/snapshot/cri.image-ref", "containerd.io/snapshot/remote/stargz.reference")
LAYERS_LABELS = ("containerd.io/snapshot/cri.image-layers", "containerd.io/snapshot/remote/stargz.layers")
LAYER_LABELS = ("containerd.io/snapshot/cri.layer-digest", "containerd.io/snapshot/remote/stargz.digest")
HOSTS_DIR = Path("/etc/containerd/certs.d")  # containerd's per-registry configuration (hosts.toml)
READ_TIMEOUT = 30.0  # seconds a read waits for the registry before EIO, as for `lazyctr run`


@dataclass(frozen=True)
class LayerRequest:
    """Which layer of which image a Prepare is about, from its labels."""

    reference: str  # the image as the client named it (HOST/REPO[:TAG][@DIGEST])
    layer: Digest
    manifest: Digest | None  # None: the client did not say; the reference's manifest is asked for
    layers: tuple[Digest, ...] = ()  # this layer and those above it, as far as the label could hold

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> LayerRequest | None:
        reference = next((labels[k] for k in REF_LABELS if labels.get(k)), None)
        layer = next((labels[k] for k in LAYER_LABELS if labels.get(k)), None)
        if reference is None or layer is None:
            return None
        listed = next((labels[k] for k in LAYERS_LABELS if labels.get(k)), "")
        try:
            manifest = Digest(labels[MANIFEST_LABEL]) if labels.get(MANIFEST_LABEL) else None
            layers = tuple(Digest(d) for d in listed.split(",") if d)
            return cls(reference, Digest(layer), manifest, layers)
        except StorageError:
            return None

    @property
    def pinned(self) -> str:
        """The reference, pinned to the manifest digest when the labels give it."""
        if self.manifest is None:
            return self.reference
        ref = registry_ref(self.reference)
        return f"{ref.domain}/{ref.repository}@{self.manifest}"


@dataclass(frozen=True)
class RemoteLayer:
    image: str  # the image's name in the snapshotter's store (pinned to its digest)
    index: int  # the layer's place in the manifest: its directory in the image's mount


class RemoteImages:
    """The lazily mounted images under `<root>/images/<manifest hex>/`, from the store `<root>/store`."""

    def __init__(
        self,
        root: Path,
        insecure: frozenset[str] = frozenset(),
        fill: bool = False,
        timeout: float = READ_TIMEOUT,
        hosts_dir: Path = HOSTS_DIR,
    ) -> None:
        """Forks the mounter (mounter.py): to be made before gRPC is loaded."""
        self.store = Store(root / "store")
        self.mounts = root / "images"
        self.insecure = insecure
        self.hosts_dir = hosts_dir
        self.mounter = Mounter(self.store.root, timeout, fill)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, image: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(image, threading.Lock())

    def mountpoint(self, image: Image) -> Path:
        return self.mounts / image.descriptor.digest.hex / "root"

    def path(self, layer: RemoteLayer) -> Path:
        """The directory overlayfs stacks for this layer."""
        return self.mountpoint(self.store.image(layer.image)) / str(layer.index)

    def plain_http(self, host: str) -> bool:
        """Whether `host` is reached over plain HTTP: named with --insecure-registry, or so configured
        for containerd (`<hosts dir>/<host>/hosts.toml` naming an http:// server or host)."""
        if host in self.insecure:
            return True
        try:
            with open(self.hosts_dir / host / "hosts.toml", "rb") as f:
                config = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError):
            return False
        hosts = config.get("host")
        servers = [str(config.get("server", "")), *(hosts if isinstance(hosts, dict) else {})]
        return any(server.startswith("http://") for server in servers)

    def prepare(self, request: LayerRequest) -> RemoteLayer | None:
        """The layer served lazily, its image mounted if it was not; None where it cannot be (no
        TOC, or the registry does not answer): containerd then unpacks it as usual."""
        ref = registry_ref(request.pinned)
        assert ref.domain is not None
        with self._lock(local_name(ref)):  # the image's name in the store, once pulled
            try:
                image = self._image(request, self.plain_http(ref.domain))
                digests = [layer.digest for layer in image.manifest.layers]
                index = digests.index(request.layer) if request.layer in digests else None
                if index is None:
                    log.warning("%s has no layer %s: unpacked by containerd", request.pinned, request.layer)
                    return None
                if toc_position(image.manifest.layers[index]) is None:
                    return None  # not zstd:chunked: containerd fetches and unpacks it
                self._mount(image)
            except (StorageError, OSError) as e:
                log.warning("cannot serve layer %s of %s lazily: %s", request.layer, request.reference, e)
                return None
        return RemoteLayer(image.name, index)

    def _image(self, request: LayerRequest, insecure: bool) -> Image:
        """The image, from the store if it was pulled before: the same digest, or (named by a tag
        alone, as ctr-remote does) the same layers from this one up, as containerd resolved them for
        this pull, whose layers are prepared one after the other; otherwise pulled now."""
        ref = registry_ref(request.pinned)
        with contextlib.suppress(StorageError):
            known = self.store.image(local_name(ref))
            digests = [layer.digest for layer in known.manifest.layers]
            above = tuple(digests[digests.index(request.layer) :]) if request.layer in digests else ()
            # A long list is cut where the label's size limit is: what it holds must match.
            if ref.digest is not None or (request.layers and above[: len(request.layers)] == request.layers):
                return known
        return asyncio.run(pull_lazy(self.store, request.pinned, insecure, partial=True))

    def _mount(self, image: Image) -> None:
        point = self.mountpoint(image)
        if is_mounted(point):
            return
        with contextlib.suppress(StorageError):
            umount(self.store.root, point)  # a daemon that died leaves ENOTCONN behind
        point.mkdir(parents=True, exist_ok=True)
        self.mounter.mount(image.name, point)

    def close(self) -> None:
        self.mounter.close()

    def restore(self, images: set[str]) -> None:
        """After a restart: each image some snapshot stands on is mounted (again, if its daemon died)."""
        for name in images:
            try:
                with self._lock(name):
                    self._mount(self.store.image(name))
            except (StorageError, OSError) as e:
                log.error("cannot mount %s again: %s", name, e)

    def release(self, name: str) -> None:
        """No snapshot stands on the image any more: unmount it (its chunks stay cached)."""
        with self._lock(name), contextlib.suppress(StorageError):
            point = self.mountpoint(self.store.image(name))
            if is_mounted(point) or MountState.of(self.store.root, point).info is not None:
                umount(self.store.root, point)
            shutil.rmtree(point.parent, ignore_errors=True)
