"""Profiles that follow an image's history: a new version inherits the access profile of the last.

A start reads much the same files from one version of an image to the next, so a new version that
has no profile of its own gets one derived from its previous version's (its *ancestor*):
- each piece the ancestor's profile names is found by path (in the ancestor's layer TOCs);
- where the new image's merged tree serves that path from the same layer, the piece is kept as it
  is; where a new layer changed the file, the new file's pieces that hold the same bytes (by file
  offset) take its place, in the same order. Pieces of files that are gone are dropped.
The derived profile is an ordinary one (lazyfs.profile), annotated with the ancestor's digest: a
referrer of the image, stored and verified by digest, so the image digest does not change; a
profile recorded for the image itself is preferred to it.

The ancestor is, among the images that have a profile and were not created after the new version
(by their configs' `created`: a version inherits from an earlier one, never from a later one):
- in the store: the image's other tags (same repository) first, then the image sharing the most
  layers with it (ties go to the same repository, then to the same name); an image sharing nothing
  and of another repository is no ancestor. `pull` and a lazy mount look only here (no round trip
  is added to a start);
- at `push`, when the store has none of the same repository: the target repository's other tags in
  the registry (before a store image of another repository), the one sharing the most layers that
  has a profile there (referrers API); the TOCs of its layers the new image lacks come from the
  store, or by range from the registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lazyfs.profile import best_profile, load_profile, save_profile
from storage.digest import Digest
from storage.errors import StorageError
from storage.oci import PROFILE_TYPE, Descriptor, ImageConfig, Manifest
from storage.pieces import Piece, file_pieces, pieces_with_digests
from storage.reference import ImageRef
from storage.store import Image, Store
from storage.toc import LayerToc, parse_time_ns
from storage.tree import ImageTree
from storage.zstd_chunked import toc_position

if TYPE_CHECKING:
    from registry.client import RegistryClient

REGISTRY_CANDIDATES = 3  # tags of the target repository whose referrers a push asks for, best first
MAX_TAGS = 100  # a repository's tags whose manifests a push reads to find the closest


@dataclass
class Ancestor:
    """The previous version of an image: its name, manifest digest, layers and profile."""

    name: str
    digest: Digest
    layers: list[Descriptor]
    pieces: list[dict[str, Any]]


@dataclass
class Inherited:
    """What a derivation gave: the ancestor's name, and how many pieces were kept or mapped by path."""

    ancestor: str
    kept: int
    mapped: int

    @property
    def pieces(self) -> int:
        return self.kept + self.mapped

    def line(self) -> str:
        return (
            f"access profile inherited from {self.ancestor}: {self.pieces} pieces "
            f"({self.kept} kept, {self.mapped} mapped by path)"
        )


def repository_of(name: str) -> str:
    """`registry/repo` of a store name `registry/repo:tag`."""
    return name.rpartition(":")[0] if ":" in name.rpartition("/")[2] else name


# -- finding the ancestor ---------------------------------------------------------------------------


def later(created: str | None, than: str | None) -> bool:
    """Whether time `created` is after `than` (RFC 3339; an unknown time is after nothing)."""
    return 0 < parse_time_ns(than) < parse_time_ns(created)


def store_ancestor(store: Store, name: str, image: Image | None = None) -> Ancestor | None:
    """The closest image of the store that has a profile (see the module docstring) for `image`, or
    for an image to be called `name` (a build to come: then only its repository tells)."""
    mine = {layer.digest for layer in image.manifest.layers} if image is not None else set()
    ranked: list[tuple[tuple[bool, int, bool], Image]] = []
    for other in store.images()[0]:
        if image is not None and (
            other.descriptor.digest == image.descriptor.digest
            or later(other.config.created, image.config.created)
        ):
            continue
        same_repository = repository_of(other.name) == repository_of(name)
        shared = sum(layer.digest in mine for layer in other.manifest.layers)
        if same_repository or shared:
            ranked.append(((same_repository, shared, other.name == name), other))
    for _, other in sorted(ranked, key=lambda pair: pair[0], reverse=True):
        pieces = load_profile(store, other)
        if pieces:
            return Ancestor(other.name, other.descriptor.digest, other.manifest.layers, pieces)
    return None


async def registry_ancestor(
    store: Store, image: Image, ref: ImageRef, client: RegistryClient
) -> Ancestor | None:
    """The closest other tag of `ref`'s repository with a profile in the registry (`client`'s), its
    profile's and TOCs' blobs put in the store; None if there is none (or the registry cannot tell)."""
    # Imported here: a lazy mount uses this module's store half, and aiohttp costs a start ~25 ms.
    from asyncio import gather
    from io import BytesIO

    from registry.client.errors import RegistryClientError
    from registry.transfer import fetch_manifest, fetch_referrers, fetch_toc

    assert ref.domain is not None
    repo, mine = ref.repository, {layer.digest for layer in image.manifest.layers}
    try:
        tags = [tag for tag in await client.tags(repo) if tag != ref.tag][:MAX_TAGS]
        found = await gather(
            *(fetch_manifest(client, ImageRef(ref.name, tag)) for tag in tags), return_exceptions=True
        )
        versions: dict[Digest, tuple[str, Manifest]] = {}
        for tag, got in zip(tags, found, strict=True):
            if isinstance(got, BaseException):
                continue  # a tag that went meanwhile, or an index without our platform
            data, _, digest = got
            if digest != image.descriptor.digest:
                versions.setdefault(digest, (f"{ref.domain}/{repo}:{tag}", Manifest.parse(data)))
        ranked = sorted(
            versions.items(), key=lambda item: sum(layer.digest in mine for layer in item[1][1].layers)
        )
        candidates = list(reversed(ranked[-REGISTRY_CANDIDATES:]))

        async def profile_and_config(
            digest: Digest, manifest: Manifest
        ) -> tuple[list[dict[str, Any]], bytes]:
            config = BytesIO()
            artifacts, _ = await gather(
                fetch_referrers(client, store, repo, digest, {PROFILE_TYPE}),
                client.get_blob(repo, manifest.config.digest, config, manifest.config.size),
            )
            return best_profile(store, artifacts), config.getvalue()

        # The candidates' profiles and configs at once: one round trip for all, not one each.
        looked = await gather(*(profile_and_config(digest, manifest) for digest, (_, manifest) in candidates))
        for (digest, (name, manifest)), (pieces, config) in zip(candidates, looked, strict=True):
            if pieces and not later(ImageConfig.parse(config).created, image.config.created):
                missing = [layer for layer in manifest.layers if layer.digest not in mine]
                await gather(
                    *(fetch_toc(store, client, repo, layer) for layer in missing if toc_position(layer))
                )
                return Ancestor(name, digest, manifest.layers, pieces)
    except (RegistryClientError, StorageError):
        return None  # a bonus: a push goes on without it
    return None


# -- deriving -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """Where a piece's bytes are in a file: its path and byte range."""

    path: str
    start: int
    end: int


class _Tocs:
    """The TOCs of a derivation's layers, each read once ({} where a layer's TOC is not here)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.known: dict[Digest, LayerToc | None] = {}

    def __call__(self, layer: Descriptor) -> LayerToc | None:
        if layer.digest not in self.known:
            try:
                self.known[layer.digest] = self.store.layer_toc(layer)
            except StorageError:
                self.known[layer.digest] = None
        return self.known[layer.digest]


def _places(toc: LayerToc | None, wanted: set[str]) -> dict[str, _Place]:
    """Piece digest -> where it lies, for the pieces of `toc` whose digests are `wanted`."""
    found = pieces_with_digests(toc.entries, wanted) if toc is not None else {}
    return {
        digest: _Place(entry.path, piece.file_offset, piece.file_offset + piece.size)
        for digest, (entry, piece) in found.items()
    }


def _placed(
    tocs: _Tocs, layers: list[Descriptor], pieces: list[dict[str, Any]]
) -> Iterator[tuple[str, str, _Place | None]]:
    """Each piece of a profile of the image of `layers`, in order: (layer, digest, where it lies or None)."""
    by_digest = {str(layer.digest): layer for layer in layers}
    wanted: dict[str, set[str]] = {}
    for item in pieces:
        wanted.setdefault(item["layer"], set()).add(item["digest"])
    places = {
        layer: _places(tocs(by_digest[layer]) if layer in by_digest else None, digests)
        for layer, digests in wanted.items()
    }
    for item in pieces:
        layer, digest = item["layer"], item["digest"]
        yield layer, digest, places[layer].get(digest)


def derive(store: Store, ancestor: Ancestor, image: Image) -> tuple[list[dict[str, str]], int]:
    """The ancestor's profile as pieces of `image` (see the module docstring), and how many of
    them were kept as they were."""
    new_layers = [str(layer.digest) for layer in image.manifest.layers]
    tocs = _Tocs(store)
    layer_tocs = [toc for layer in image.manifest.layers if (toc := tocs(layer)) is not None]
    if len(layer_tocs) < len(new_layers):  # a layer without a TOC (pulled eagerly): no lazy mount
        return [], 0
    try:
        tree = ImageTree.from_tocs(layer_tocs)
    except StorageError:
        return [], 0
    out: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    kept = 0
    for layer, digest, place in _placed(tocs, ancestor.layers, ancestor.pieces):
        if place is None:  # no TOC to find it by: kept only where its layer is the same
            found = [(layer, digest)] if layer in new_layers else []
        else:
            found = _pieces_at(tree, new_layers, place)
        for key in found:
            if key not in seen:
                seen.add(key)
                out.append({"layer": key[0], "digest": key[1]})
                kept += key == (layer, digest)
    return out, kept


def _pieces_at(tree: ImageTree, layers: list[str], place: _Place) -> list[tuple[str, str]]:
    """The pieces of the file at `place.path` in the new tree that hold its bytes [start, end)."""
    node = tree.node(place.path)
    if node is None or node.kind != "reg":
        return []
    try:
        pieces = file_pieces(node.content, node.layer)
    except StorageError:
        return []
    return [
        (layers[p.layer], str(p.digest))
        for p in pieces
        if isinstance(p, Piece) and p.file_offset < place.end and place.start < p.file_offset + p.size
    ]


def profiled_paths(store: Store, layers: list[Descriptor], pieces: list[dict[str, Any]]) -> list[str]:
    """The files a profile (`pieces`) of the image of `layers` reads, in its order, each once: what
    `build --profile-order` places first in a layer."""
    paths = (place.path for _, _, place in _placed(_Tocs(store), layers, pieces) if place is not None)
    return list(dict.fromkeys(paths))


def record_inherited(store: Store, image: Image, ancestor: Ancestor) -> Inherited | None:
    """Derive `image`'s profile from `ancestor` and store it as a referrer; None if nothing is left."""
    pieces, kept = derive(store, ancestor, image)
    if not pieces:
        return None
    save_profile(store, image, pieces, derived_from=ancestor.digest)
    return Inherited(ancestor.name, kept, len(pieces) - kept)


def inherit_profile(store: Store, image: Image) -> Inherited | None:
    """Give `image`, if it has no profile, one derived from its ancestor in the store (no network)."""
    if load_profile(store, image):
        return None
    ancestor = store_ancestor(store, image.name, image)
    return record_inherited(store, image, ancestor) if ancestor is not None else None


def profile_for_mount(store: Store, image: Image) -> list[dict[str, Any]]:
    """The profile a lazy mount of `image` prefetches: its own, else one inherited now (from the store)."""
    found = load_profile(store, image)
    if not found and inherit_profile(store, image) is not None:
        found = load_profile(store, image)
    return found


async def inherit_at_push(
    store: Store, image: Image, ref: ImageRef, client: RegistryClient
) -> Inherited | None:
    """The store's ancestor if it is of the image's own repository; else the target repository's
    tags in the registry; else the store's relative (another repository sharing layers). A version's
    own history beats a relative's: gcc:2 inherits from gcc:1 in the registry, not from a flask image
    of the store that shares only the base layers."""
    if load_profile(store, image):
        return None
    ancestor = store_ancestor(store, image.name, image)
    if ancestor is None or repository_of(ancestor.name) != repository_of(image.name):
        ancestor = await registry_ancestor(store, image, ref, client) or ancestor
    return record_inherited(store, image, ancestor) if ancestor is not None else None
