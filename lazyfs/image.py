"""An image made ready to mount: its merged tree from the stored TOCs, and where each layer's bytes come from.

A layer whose blob is in the store is read from the local file; a lazily pulled one (only its
TOC is here) from the registry the image came from (`Image.source`), with Range GETs. `serving`
hands out the image as an `ImageSource` whose reads go through a running fetch engine: what a
mount daemon serves and `lazyctr cat` prints.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from storage.errors import NotFound
from storage.reference import Origin
from storage.store import Image, Store

if TYPE_CHECKING:
    # Imported where an image is served: a process that only checks an image mounts (the caller of a
    # mount, which lives on as a container's supervisor) need not carry the fetch engine, asyncio
    # and the registry client (aiohttp: about 25 MB).
    from lazyfs.fetcher import Fetcher, FileLayerSource, LayerSource
    from lazyfs.source import ImageSource
    from registry.client import RegistryClient
    from storage.pieces import Piece
    from storage.toc import LayerToc
    from storage.tree import ImageTree


class RegistryLayerSource:
    """One layer blob in a registry; the client is opened on the fetch engine's loop."""

    def __init__(self, client: RegistryClient, repository: str, digest: str) -> None:
        self.client = client
        self.repository = repository
        self.digest = digest

    async def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        return await self.client.read_ranges(self.repository, self.digest, ranges)

    def stream(self, offset: int, length: int) -> AsyncIterator[bytes]:
        return self.client.stream_range(self.repository, self.digest, offset, length)


@dataclass
class MountableImage:
    """An image checked to be mountable; its tree is made on first use, which for a mount is in the
    daemon: the process that asked for the mount (a container's supervisor, which lives on, and
    forks the container's init) keeps none of it."""

    image: Image
    store: Store
    local: list[bool]  # per layer: is the blob in the store?
    registry: str | None = None
    repository: str | None = None
    insecure: bool = False
    lowers: list[int] | None = None  # the layers served as overlay lower directories, or None: merged
    _tocs: dict[int, LayerToc] | None = None
    _tree: ImageTree | None = None
    _files: list[FileLayerSource] = field(default_factory=list)

    @classmethod
    def load(cls, store: Store, image: Image, lowers: bool = False) -> MountableImage:
        """The image, once each layer's TOC is known to be valid (raises if one is not). With
        `lowers`, its layers with a TOC served side by side, one directory each, as overlayfs lower
        directories (containerd's snapshotter); the others are not served."""
        from storage.zstd_chunked import toc_position

        layers = image.manifest.layers
        served = [i for i, layer in enumerate(layers) if not lowers or toc_position(layer) is not None]
        for index in served:
            store.check_layer_toc(layers[index])  # a bad one fails the caller, not the daemon
        local = [store.has_blob(layer.digest) for layer in layers]
        registry = repository = None
        insecure = False
        if not all(local[i] for i in served):
            if image.source is None:
                raise NotFound(f"{image.name}: layers are missing from the store and the image has no source")
            origin = Origin.parse(image.source)
            registry, repository, insecure = origin.registry, origin.repository, origin.insecure
        return cls(image, store, local, registry, repository, insecure, served if lowers else None)

    @property
    def tocs(self) -> dict[int, LayerToc]:
        """The served layers' TOCs, by layer index (read from the store once)."""
        if self._tocs is None:
            layers = self.image.manifest.layers
            served = self.lowers if self.lowers is not None else range(len(layers))
            self._tocs = {i: self.store.layer_toc(layers[i]) for i in served}
        return self._tocs

    @property
    def tree(self) -> ImageTree:
        if self._tree is None:
            from storage.tree import ImageTree

            if self.lowers is not None:
                self._tree = ImageTree.overlay_lowers(self.tocs)
            else:
                self._tree = ImageTree.from_tocs(list(self.tocs.values()))
        return self._tree

    def profile_pieces(self, profile: Iterable[dict[str, Any]]) -> list[Piece]:
        """The pieces an access profile names (by layer digest and piece digest), in its order: found
        in the TOCs alone, so that a mount fetches them before its tree is made."""
        from storage.pieces import pieces_with_digests

        profile = list(profile)
        layers = [str(layer.digest) for layer in self.image.manifest.layers]
        found: dict[tuple[str, str], Piece] = {}
        for index, toc in self.tocs.items():
            wanted = {str(item["digest"]) for item in profile if item.get("layer") == layers[index]}
            if wanted:
                for digest, (_, piece) in pieces_with_digests(toc.entries, wanted, index).items():
                    found[(layers[index], digest)] = piece
        return [found[key] for item in profile if (key := (item.get("layer"), item.get("digest"))) in found]

    def sources(self, store: Store, client: RegistryClient | None) -> list[LayerSource]:
        """Where each layer's bytes come from (`client`: the registry's, opened by the caller)."""
        from lazyfs.fetcher import FileLayerSource

        out: list[LayerSource] = []
        for layer, local in zip(self.image.manifest.layers, self.local, strict=True):
            if local:
                source = FileLayerSource(store.blob_path(layer.digest))
                self._files.append(source)
                out.append(source)
            else:
                assert client is not None and self.repository is not None
                out.append(RegistryLayerSource(client, self.repository, layer.digest))
        return out

    def close(self) -> None:
        for source in self._files:
            source.close()
        self._files.clear()

    @contextlib.contextmanager
    def fetching(
        self, store: Store, timeout: float = 30.0, on_access: Callable[[Piece], None] | None = None
    ) -> Iterator[Fetcher]:
        """A running fetch engine for this image's layers (a registry client on its loop if needed)."""
        from lazyfs.fetcher import Fetcher
        from storage.chunks import ChunkCache

        fetcher = Fetcher([], ChunkCache(store.root), timeout, on_access)
        fetcher.start()
        client: RegistryClient | None = None
        try:
            if self.registry is not None:
                from registry.client import RegistryClient

                client = RegistryClient(self.registry, self.insecure)
                fetcher.call(client.__aenter__())
            fetcher.sources = self.sources(store, client)
            yield fetcher
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    fetcher.call(client.__aexit__(None, None, None))
            fetcher.stop()
            self.close()

    @contextlib.contextmanager
    def serving(
        self, store: Store, timeout: float = 30.0, on_access: Callable[[Piece], None] | None = None
    ) -> Iterator[ImageSource]:
        """The image as a file system whose file contents come from a running fetch engine."""
        from lazyfs.source import ImageSource

        with self.fetching(store, timeout, on_access) as fetcher:
            yield ImageSource(self.tree, fetcher, self.image.name)
