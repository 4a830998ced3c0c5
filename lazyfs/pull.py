"""Lazy pull: fetch an image's manifest, config and layer TOCs, and none of the file contents.

A TOC is fetched by byte range at the position the layer descriptor's annotation gives, and kept
only if it hashes to the digest the annotation promises (the manifest digest vouches for the
annotation); it is then parsed and validated (no path escaping the root, no duplicate entries,
no chunk outside the blob, no absurd sizes) before anything is stored. The image is named in
the store with its source, so lazyfs knows where to fetch contents later; an access profile the
registry holds for it (a referrer) comes along.

An image with a layer that has no TOC (plain tar, gzip, zstd without the chunked annotations)
is pulled eagerly, as a whole: its layers must be converted, which changes the manifest anyway.
"""

from __future__ import annotations

import asyncio
import contextlib

from lazyfs.image import INSECURE_PREFIX
from lazyfs.profile import PROFILE_TYPE
from registry.client import (
    RegistryClient,
    RegistryClientError,
    fetch_manifest,
    local_name,
    pull_image,
    registry_ref,
)
from registry.referrers import pull_referrers
from storage.digest import verify
from storage.oci import MEDIA_LAYER_ZSTD, REF_NAME, Descriptor, Manifest
from storage.store import SOURCE, Image, Store
from storage.toc import LayerToc
from storage.zstd_chunked import TocPosition, decompress_toc, position_from_annotations


def _toc_position(layer: Descriptor) -> TocPosition | None:
    if layer.media_type != MEDIA_LAYER_ZSTD:
        return None
    promised = position_from_annotations(layer.annotations, layer.size)
    return promised[1] if promised is not None else None


async def pull_lazy(store: Store, text: str, insecure: bool = False) -> Image:
    """Pull `text` lazily (see the module docstring); returns the image as named in the store."""
    ref = registry_ref(text)
    assert ref.domain is not None
    name = local_name(ref)
    repo = ref.repository
    async with RegistryClient(ref.domain, insecure) as client:
        data, media_type, digest = await fetch_manifest(client, ref)
        manifest = Manifest.parse(data)
        if not all(_toc_position(layer) for layer in manifest.layers):
            return await pull_image(store, text, insecure)
        with store.ingesting():
            await asyncio.gather(
                _fetch_config(store, client, repo, manifest.config),
                *(_fetch_toc(store, client, repo, layer) for layer in manifest.layers),
            )
            store.put_blob(data)
            source = f"{INSECURE_PREFIX if insecure else ''}{ref.domain}/{repo}"
            store.tag(name, Descriptor(media_type, digest, len(data), {REF_NAME: name, SOURCE: source}))
            # An access profile is a bonus: a registry without one (or without the API) is fine.
            with contextlib.suppress(RegistryClientError):
                await pull_referrers(client, store, repo, digest, PROFILE_TYPE)
    return store.image(name)


async def _fetch_config(store: Store, client: RegistryClient, repo: str, config: Descriptor) -> None:
    if store.has_blob(config.digest):
        return
    with store.temp_file() as (tmp, f):
        await client.get_blob(repo, config.digest, f, config.size)
        store.adopt(tmp, f, config.digest)


async def _fetch_toc(store: Store, client: RegistryClient, repo: str, layer: Descriptor) -> None:
    toc_digest, position = position_from_annotations(layer.annotations, layer.size) or (None, None)
    assert toc_digest is not None and position is not None  # checked by pull_lazy
    if store.has_blob(layer.digest) or store.has_blob(toc_digest):
        return
    compressed = await client.read_range(repo, layer.digest, position.offset, position.length)
    verify(compressed, toc_digest, f"TOC of layer {layer.digest}")
    await asyncio.to_thread(LayerToc.parse, decompress_toc(compressed, position), position.frames_end)
    store.put_blob(compressed)
