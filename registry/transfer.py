"""Images between a registry and the store: push, eager pull, lazy pull, and their referrers.

A push sends every blob at once (config, layers, and those of the store's referrers of the image:
access profiles, signatures), then the manifest, then the referrers' manifests by digest. A
layer of a lazily pulled image is not in the store: it is fine where the target has it already, or
can mount it from the repository it came from.

An eager pull fetches every blob, verified, into a temporary OCI layout next to the store, which
the importer then reads like any other layout (layers without a zstd:chunked TOC are converted
there). Nothing is named in the store unless every blob checked out.

A lazy pull fetches the manifest, the config and each layer's TOC, and none of the file contents.
A TOC is fetched by byte range at the position the layer descriptor's annotation gives, and kept
only if it hashes to the digest the annotation promises (the manifest digest vouches for the
annotation); it is then parsed and validated (no path escaping the root, no duplicate entries, no
chunk outside the blob, no absurd sizes) before anything is stored. The image is named in the
store with its origin, so lazyfs knows where to fetch contents later; an access profile the
registry holds for it (a referrer) comes along. An image with a layer that has no TOC (plain tar,
gzip, zstd without the chunked annotations) is pulled eagerly: its layers must be converted, which
changes the manifest anyway.

A non-distributable layer (`storage.oci.NON_DISTRIBUTABLE_TYPES`: licensed content a registry may
not hand out, fetched from its descriptor's `urls` by whoever may) is never pushed, and an image
that needs one is not pulled: NonDistributableLayer, before a byte of it reaches the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from registry.blob_locations import BlobLocations
from registry.client import NonDistributableLayer, RegistryClient, RegistryClientError, RegistryNotFound
from registry.policy import enforce, load_policy
from registry.progress import TransferProgress, human_size
from registry.signatures import (
    SIGNATURE_ARTIFACT,
    keep_signatures,
    push_signature_tag,
    stored_signature_layers,
)
from storage import timeline
from storage.digest import CANONICAL, Digest, verify
from storage.errors import InvalidReference, NotFound, StorageError
from storage.extract import Readable
from storage.files import publish
from storage.growing import GrowingFile
from storage.importer import OciSource, host_architecture, import_oci, kept_as_is
from storage.layers import LayerCache
from storage.oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    PROFILE_TYPE,
    REF_NAME,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
)
from storage.reference import ImageRef, Origin, registry_ref
from storage.store import OCI_LAYOUT, SOURCE, Image, Store
from storage.toc import LayerToc
from storage.tocindex import remember
from storage.zstd_chunked import TocPosition, decompress_toc, position_from_annotations, toc_position

T = TypeVar("T")
PARALLEL_LAYERS = 4  # layers downloaded (and extracted) at once in an eager pull


def local_name(ref: ImageRef) -> str:
    """The store names images `repository:tag`; one pulled by digest alone is tagged with it (cut to
    the 128 characters a tag may have: `sha512-` and 121 of its hex digits)."""
    if ref.tag is not None or ref.digest is None:
        return f"{ref.name}:{ref.tag or 'latest'}"
    tag = f"{ref.digest.algorithm}-{ref.digest.hex}"[:128]
    return f"{ref.name}:{tag}"


# -- push --------------------------------------------------------------------------------------------


@dataclass
class BlobResult:
    digest: Digest
    size: int
    outcome: str  # "pushed", "exists", "mounted", "skipped" (non-distributable)

    def line(self) -> str:
        return f"{self.outcome} {self.digest} {human_size(self.size)}"


async def push_image(
    store: Store,
    image: Image,
    ref: ImageRef,
    insecure: bool = False,
    report: Callable[[BlobResult], None] = lambda _: None,
    progress: TransferProgress | None = None,
    client: RegistryClient | None = None,
    referrers_made: Awaitable[object] | None = None,
) -> Digest:
    """Push `image` to `ref` with the store's artifacts that refer to it; the manifest digest.

    Every blob goes at once: config and layers, and the referrers' (access profiles, signatures).
    Then the image's manifest, then the referrers' manifests by digest (after their subject: a
    registry may check it), and signatures also on their `.sig` tag. Only what the target repository
    lacks goes up, and of that only what no repository of the same registry can lend (`_send_blob`);
    the blobs' new home is recorded once the push is done. `client`: a session already open to
    `ref`'s registry, else one is opened here. `referrers_made`: work that may still add referrers
    to the store (a profile being derived); the image's blobs go up meanwhile, theirs after it.
    """
    progress = progress or TransferProgress()
    assert ref.domain is not None
    if ref.digest is not None:
        raise InvalidReference(f"cannot push to a digest: {ref}")
    if client is None:
        async with RegistryClient(ref.domain, insecure) as client:
            return await push_image(store, image, ref, insecure, report, progress, client, referrers_made)
    repo, tag = ref.repository, ref.tag or "latest"
    locations = BlobLocations(store.root)
    blobs = [image.manifest.config, *image.manifest.layers]
    with store.ingesting():  # gc must not remove the blobs while they are sent
        manifest_bytes = store.read_blob(image.descriptor.digest)

        async def push_one(descriptor: Descriptor) -> None:
            progress.start(descriptor.digest, descriptor.size)
            if not descriptor.distributable:  # its blob lives at its `urls`, never in a registry
                outcome = "skipped"
            else:
                outcome = await _send_blob(client, repo, descriptor, store, image, locations, progress)
            progress.done(descriptor.digest, outcome)
            report(BlobResult(descriptor.digest, descriptor.size, outcome))

        async def push_referrers_blobs() -> list[tuple[Descriptor, bytes]]:
            if referrers_made is not None:
                await referrers_made
            referrers = [(d, store.read_blob(d.digest)) for d in store.referrers(image.descriptor.digest)]
            mine = {d.digest for d in blobs}
            theirs = dict.fromkeys(
                d for _, data in referrers for d in _blobs_of(Manifest.parse(data)) if d not in mine
            )
            await asyncio.gather(*(client.push_blob(repo, d, store.blob_path(d)) for d in theirs))
            return referrers

        await client.ping()
        try:
            async with asyncio.TaskGroup() as wave:  # the first failure cancels the others
                for descriptor in blobs:
                    wave.create_task(push_one(descriptor))
                referrers_sent = wave.create_task(push_referrers_blobs())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        referrers = referrers_sent.result()
        manifest = image.descriptor
        if manifest.digest.algorithm == CANONICAL:
            pushed = await client.put_manifest(repo, tag, manifest_bytes, manifest.media_type)
        else:  # by tag, a registry names a manifest by its sha256; by digest, it keeps the one it has
            pushed = await client.put_manifest(
                repo, manifest.digest, manifest_bytes, manifest.media_type, tag
            )
        locations.record(ref.domain, repo, (d.digest for d in blobs if d.distributable))
        await asyncio.gather(
            *(client.put_manifest(repo, str(d.digest), data, d.media_type) for d, data in referrers),
            # also where cosign and podman look for signatures
            push_signature_tag(store, client, repo, manifest.digest, stored_signature_layers(store, image)),
        )
    return pushed


def _blobs_of(artifact: Manifest) -> list[Digest]:
    return [artifact.config.digest, *(layer.digest for layer in artifact.layers)]


async def _send_blob(
    client: RegistryClient,
    repo: str,
    blob: Descriptor,
    store: Store,
    image: Image,
    locations: BlobLocations,
    progress: TransferProgress,
) -> str:
    """Blob `blob` of `image` into `repo`: "exists" when it is there, "mounted" when a repository of
    the registry lends it, else "pushed" (uploaded in the session the last refused mount started).

    The mounts tried: from each repository the record names (then from the lazily pulled image's
    origin), and then OCI 1.1's mount without `from`, from anywhere the pusher may read. A layer of
    a lazily pulled image is not in the store: it cannot go up where none of these lend it.
    """
    if await client.head_blob(repo, blob.digest) is not None:
        return "exists"
    sources = locations.repositories(client.registry, blob.digest)
    origin = Origin.parse(image.source) if image.source else None
    if origin is not None and origin.registry == client.registry and origin.repository not in sources:
        sources.append(origin.repository)
    session = None
    for source in [*(s for s in sources if s != repo), None]:
        if session is not None:
            await client.cancel_upload(session)
        session = await client.start_upload(repo, blob.digest, source)
        if session is None:
            return "mounted"
        if source is not None:  # a stale record: the blob has gone from there
            locations.forget(client.registry, source, blob.digest)
    assert session is not None
    path = store.blob_path(blob.digest)
    if not path.exists():
        await client.cancel_upload(session)
        raise NotFound(
            f"blob {blob.digest} of {image.name} is not in the store (the image was pulled lazily): "
            "pull it with --eager to push it to another registry"
        )
    await client.upload(repo, session, blob.digest, path, progress=lambda n: progress.advance(blob.digest, n))
    return "pushed"


# -- pull --------------------------------------------------------------------------------------------


def layout_blob(layout: Path, digest: Digest) -> Path:
    """Where an OCI layout keeps blob `digest` (`blobs/<algorithm>/<hex>`), its directory made."""
    path = layout / "blobs" / digest.algorithm / digest.hex
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def check_distributable(layers: list[Descriptor]) -> None:
    """NonDistributableLayer for the first layer whose blob no registry may hand out."""
    for layer in layers:
        if not layer.distributable:
            urls = ", ".join(layer.urls or []) or "none"
            raise NonDistributableLayer(
                f"layer {layer.digest} is non-distributable (urls: {urls}) and cannot be fetched"
            )


def _pick_platform(index: Index, what: str) -> Descriptor:
    found = index.for_platform(host_architecture())
    if found is None:
        raise RegistryNotFound(f"{what}: no image for linux/{host_architecture()} in the index")
    return found


async def fetch_manifest(client: RegistryClient, ref: ImageRef) -> tuple[bytes, str, Digest]:
    """The image manifest `ref` names (by digest, tag or `latest`): its bytes, media type and digest.

    When `ref` names an index, the manifest for linux on this machine's architecture is fetched
    from it. The bytes are checked against the digest (see `RegistryClient.get_manifest`).
    """
    repo = ref.repository
    data, media_type, digest = await client.get_manifest(repo, ref.digest or ref.tag or "latest")
    if media_type in INDEX_TYPES:
        chosen = _pick_platform(Index.parse(data), f"{client.registry}/{repo}")
        data, media_type, digest = await client.get_manifest(repo, chosen.digest)
    if media_type not in MANIFEST_TYPES:
        raise RegistryClientError(f"{client.registry}/{repo}: not an image manifest: {media_type!r}")
    return data, media_type, digest


async def pull_image(
    store: Store, text: str, insecure: bool = False, progress: TransferProgress | None = None
) -> Image:
    """Fetch the image `text` names (eagerly: every layer) and store it under `repo:tag`.

    The config comes first; then the layers, a few at a time, each streamed into the store and, as
    root, into its extracted directory under `layers/` at the same time (`_fetch_into_store`). The
    image is named only once every blob has checked out; the record of where its blobs live
    (registry.blob_locations) learns the repository then.
    """
    ref = registry_ref(text)
    assert ref.domain is not None
    shown = progress or TransferProgress()
    name = local_name(ref)
    repo = ref.repository
    with store.ingesting(), tempfile.TemporaryDirectory(dir=store.tmp, prefix="pull-") as tmp:
        layout = Path(tmp)
        async with RegistryClient(ref.domain, insecure) as client:
            pinned, signatures = await enforce(client, ref, load_policy())
            data, media_type, digest = await fetch_manifest(client, pinned)
            manifest = Manifest.parse(data)
            check_distributable(manifest.layers)
            await _fetch_into_store(store, client, repo, manifest.config, shown)
            diff_ids = _diff_ids(store, manifest)
            # The overlay driver's layers need root (whiteouts are devices); a user's pull downloads only.
            cache = LayerCache(store) if os.geteuid() == 0 and diff_ids is not None else None
            in_flight = asyncio.Semaphore(PARALLEL_LAYERS)

            async def fetch(index: int, layer: Descriptor) -> None:
                extract = None
                if cache is not None and diff_ids is not None:
                    extract = functools.partial(cache.get, layer, diff_ids[index])
                # A layer the import converts is not kept: it waits in the temporary layout.
                dest = None if kept_as_is(layer) else layout_blob(layout, layer.digest)
                async with in_flight:
                    await _fetch_into_store(store, client, repo, layer, shown, extract, dest)

            try:
                async with asyncio.TaskGroup() as group:  # the first failure cancels the others
                    for index, layer in enumerate(manifest.layers):
                        group.create_task(fetch(index, layer))
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
        layout_blob(layout, digest).write_bytes(data)
        for blob in [manifest.config, *manifest.layers]:
            if not layout_blob(layout, blob.digest).exists():
                os.link(store.blob_path(blob.digest), layout_blob(layout, blob.digest))
        (layout / "oci-layout").write_bytes(OCI_LAYOUT)
        entry = Descriptor(media_type, digest, len(data), {REF_NAME: name})
        (layout / "index.json").write_bytes(Index([entry]).to_bytes())
        image = await asyncio.to_thread(import_oci, store, OciSource(layout, None), name)
        if image.descriptor.digest == digest:  # not converted: the signatures still name it
            keep_signatures(store, image, signatures)
    BlobLocations(store.root).record(
        ref.domain, repo, (b.digest for b in [manifest.config, *manifest.layers])
    )
    return image


def _diff_ids(store: Store, manifest: Manifest) -> list[Digest] | None:
    """The config's diff_ids, which name the extracted layers; None when they cannot (the import
    refuses such an image after the download)."""
    with contextlib.suppress(StorageError):
        diff_ids = ImageConfig.parse(store.read_blob(manifest.config.digest)).diff_ids
        if len(diff_ids) == len(manifest.layers):
            return diff_ids
    return None


async def _fetch_into_store(
    store: Store,
    client: RegistryClient,
    repo: str,
    blob: Descriptor,
    shown: TransferProgress,
    extract: Callable[[Readable], object] | None = None,
    dest: Path | None = None,
) -> None:
    """Blob `blob` of `repo` into the store (or at `dest`), verified, unless the store has it; with
    `extract`, that reads the blob in a thread while it downloads (extracting it: see
    storage.layers), and the blob counts as fetched only once both are done.

    The extraction checks what it read against the digest itself and is put in place only then;
    a download that fails or is cancelled makes it fail too, so no half of a layer is ever seen.
    """
    if store.has_blob(blob.digest):
        shown.done(blob.digest, "exists")
        if extract is not None:
            with open(store.blob_path(blob.digest), "rb") as f:
                await asyncio.to_thread(extract, f)
        return
    shown.start(blob.digest, blob.size)
    with store.temp_file() as (tmp, f):
        growing = GrowingFile(f, f"blob {blob.digest}")
        with contextlib.closing(growing.reader()) as reader:
            extraction = asyncio.ensure_future(asyncio.to_thread(extract, reader)) if extract else None
            try:
                await client.get_blob(
                    repo, blob.digest, growing, blob.size, progress=lambda n: shown.advance(blob.digest, n)
                )
                growing.finish()
            except BaseException:
                growing.abandon()  # the extraction's next read raises: its thread ends
                raise
            finally:
                if extraction is not None:
                    await asyncio.wait([extraction])
                    if not extraction.cancelled():  # seen: the download's error, if any, is the one to tell
                        extraction.exception()
            if extraction is not None:
                extraction.result()  # the extraction's own error, when the download went well
        if dest is None:
            store.adopt(tmp, f, blob.digest)
        else:
            publish(tmp, dest)
    shown.done(blob.digest, "pulled")


async def pull_lazy(store: Store, text: str, insecure: bool = False, partial: bool = False) -> Image:
    """Pull `text` lazily (see the module docstring); returns the image as named in the store.
    An image with a layer that has no TOC is pulled eagerly, unless `partial`: then only the TOCs
    there are come (containerd's snapshotter unpacks the other layers itself)."""
    ref = registry_ref(text)
    assert ref.domain is not None
    name = local_name(ref)
    repo = ref.repository
    async with RegistryClient(ref.domain, insecure) as client:
        pinned, signatures = await enforce(client, ref, load_policy())  # before any layer byte
        data, media_type, digest = await fetch_manifest(client, pinned)
        timeline.mark("manifest")
        manifest = Manifest.parse(data)
        if not partial:  # containerd fetches a non-distributable layer from its urls itself
            check_distributable(manifest.layers)
        with_toc = [layer for layer in manifest.layers if layer.distributable and toc_position(layer)]
        if len(with_toc) < len(manifest.layers) and not partial:
            return await pull_image(store, text, insecure)
        with store.ingesting():
            # One round trip for all of them: the profile needs only the manifest's digest. Each
            # marks the timeline when it is done, in whatever order that is.
            _, _, profiles = await asyncio.gather(
                _marked("config", _fetch_blob(store, client, repo, manifest.config)),
                _marked(
                    "TOCs",
                    asyncio.gather(*(fetch_toc(store, client, repo, layer) for layer in with_toc)),
                ),
                _marked("profile", _fetch_profiles(client, store, repo, digest)),  # found or not
            )
            store.put_blob(data, digest.algorithm)
            origin = Origin(ref.domain, repo, insecure)
            store.tag(name, Descriptor(media_type, digest, len(data), {REF_NAME: name, SOURCE: str(origin)}))
            for profile in profiles:  # named only with the image: a failed pull leaves no referrer
                store.add_referrer(profile)
            image = store.image(name)
            keep_signatures(store, image, signatures)
    held = [manifest.config, *(layer for layer in manifest.layers if layer.distributable)]
    BlobLocations(store.root).record(ref.domain, repo, (blob.digest for blob in held))
    return image


async def _marked(phase: str, work: Awaitable[T]) -> T:
    """`work`'s result, the timeline marked with `phase` when it is done."""
    result = await work
    timeline.mark(phase)
    return result


async def _fetch_profiles(client: RegistryClient, store: Store, repo: str, subject: Digest) -> list[bytes]:
    """The access profiles and signatures referring to `subject`, their blobs stored; they are a
    bonus: a registry without them (or without the referrers API) gives none."""
    try:
        return await fetch_referrers(client, store, repo, subject, {PROFILE_TYPE, SIGNATURE_ARTIFACT})
    except RegistryClientError:
        return []


async def _fetch_blob(store: Store, client: RegistryClient, repo: str, blob: Descriptor) -> None:
    """Blob `blob` of `repo` into the store (verified), unless it is there already."""
    await _fetch_into_store(store, client, repo, blob, TransferProgress())


async def fetch_toc(store: Store, client: RegistryClient, repo: str, layer: Descriptor) -> None:
    toc_digest, position = position_from_annotations(layer.annotations, layer.size) or (None, None)
    assert toc_digest is not None and position is not None  # pull_lazy fetches only TOCs there are
    if store.has_blob(layer.digest) or store.has_blob(toc_digest):
        return
    compressed = await client.read_range(repo, layer.digest, position.offset, position.length)
    # Off the event loop: hashing, decompressing, parsing and two synced writes, which for an image's
    # layers then run side by side (and beside the other fetches) instead of one after the other.
    await asyncio.to_thread(_keep_toc, store, layer, toc_digest, position, compressed)


def _keep_toc(
    store: Store, layer: Descriptor, toc_digest: Digest, position: TocPosition, compressed: bytes
) -> None:
    """A layer's TOC, fetched: verified, parsed, stored, and indexed so a mount need not parse it again."""
    verify(compressed, toc_digest, f"TOC of layer {layer.digest}")
    toc = LayerToc.parse(decompress_toc(compressed, position), position.frames_end)
    store.put_blob(compressed, toc_digest.algorithm)
    remember(store.root, toc_digest, position.frames_end, toc)


async def fetch_referrers(
    client: RegistryClient, store: Store, repo: str, subject: Digest, artifact_types: set[str]
) -> list[bytes]:
    """The manifests of the artifacts referring to `subject` (of `artifact_types`), each checked to
    refer to it, with their blobs fetched into the store; naming them is the caller's."""

    async def fetch(descriptor: Descriptor) -> bytes:
        data, _, _ = await client.get_manifest(repo, descriptor.digest)
        artifact = Manifest.parse(data)
        if artifact.subject is None or artifact.subject.digest != subject:
            what = f"{client.registry}/{repo}@{descriptor.digest}"
            raise RegistryClientError(f"{what} is listed as a referrer of {subject} but does not refer to it")
        await asyncio.gather(
            *(_fetch_blob(store, client, repo, blob) for blob in [artifact.config, *artifact.layers])
        )
        return data

    return list(
        await asyncio.gather(
            *(fetch(d) for d in await client.referrers(repo, subject) if d.artifact_type in artifact_types)
        )
    )


__all__ = [
    "BlobResult",
    "check_distributable",
    "fetch_manifest",
    "fetch_referrers",
    "fetch_toc",
    "local_name",
    "pull_image",
    "pull_lazy",
    "push_image",
]
