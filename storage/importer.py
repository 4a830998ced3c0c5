"""Bringing images into the store and taking them out: rootfs tarballs and OCI image layouts.

Every layer that enters the store is zstd:chunked: plain, gzip and zstd layers are converted (the
uncompressed tar, and so the diff_id, stays the same); layers that already carry a TOC are kept as
they are once their TOC checks out.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import platform
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage.digest import CANONICAL, Digest, HashingWriter
from storage.errors import BadArchive, DigestMismatch, InvalidReference, NotFound
from storage.extract import HashingReader, Readable, open_layer_stream
from storage.files import atomic_path, atomic_write, content_addressed_file
from storage.layer_reader import FileRangeSource, LayerReader
from storage.layer_writer import WrittenLayer, write_chunked_layer
from storage.oci import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    MEDIA_CONFIG,
    MEDIA_LAYER_GZIP,
    MEDIA_LAYER_ZSTD,
    REF_NAME,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
)
from storage.reference import ImageRef
from storage.store import OCI_LAYOUT, Image, Store
from storage.zstd_chunked import position_from_annotations

COPY_BUFSIZE = 1 << 20
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_architecture() -> str:
    return _ARCH.get(platform.machine(), platform.machine())


def now_rfc3339() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def image_name(text: str) -> str:
    """The store's key for a user-given name: `repository:tag` (tag defaults to latest)."""
    ref = ImageRef.parse(text)
    if ref.digest is not None:
        raise InvalidReference(f"cannot name an image with a digest: {text!r}")
    return f"{ref.name}:{ref.tag}"


@dataclass
class OciSource:
    """`oci:DIR[:REF]`, as skopeo spells it: the reference is everything after the first colon."""

    path: Path
    ref: str | None

    @classmethod
    def parse(cls, text: str) -> OciSource:
        body = text.removeprefix("oci:")
        path, colon, ref = body.partition(":")
        if not path:
            raise InvalidReference(f"invalid OCI layout reference {text!r}: expected oci:DIR[:REF]")
        return cls(Path(path), ref if colon and ref else None)


# -- rootfs tarballs -----------------------------------------------------------------------------


@contextlib.contextmanager
def _spooled_tar(
    store: Store, source: Readable, what: str, algorithm: str = CANONICAL
) -> Iterator[tuple[Path, Digest]]:
    """The uncompressed tar of `source` (plain, gzip or zstd) in a temporary file, and its digest."""
    with store.temp_file() as (path, f):
        stream = open_layer_stream(source, what, algorithm)
        shutil.copyfileobj(stream, f, COPY_BUFSIZE)
        f.flush()
        yield path, stream.digest


def _store_layer(store: Store, tar_path: Path) -> WrittenLayer:
    with store.temp_file() as (blob_path, blob):
        written = write_chunked_layer(tar_path, blob)
        store.adopt(blob_path, blob, written.digest)
    return written


def import_layer(store: Store, source: Readable, what: str, diff_id: Digest) -> Descriptor:
    """A layer (plain, gzip or zstd tar) stored as zstd:chunked, once its uncompressed tar hashes to
    `diff_id`; returns its descriptor."""
    with _spooled_tar(store, source, what, diff_id.algorithm) as (tar_path, found):
        if found != diff_id:
            raise DigestMismatch(f"{what}: diff_id mismatch: expected {diff_id}, found {found}")
        return _store_layer(store, tar_path).descriptor()


def import_tarball(store: Store, source: BinaryIO, name: str) -> Image:
    """A root file system tarball becomes a one-layer image named `name`."""
    name = image_name(name)
    with store.ingesting(), _spooled_tar(store, source, "tarball") as (tar_path, _):
        layer = _store_layer(store, tar_path)
        created = now_rfc3339()
        config = ImageConfig(
            architecture=host_architecture(),
            os="linux",
            created=created,
            config={"Env": [DEFAULT_PATH_ENV]},
            diff_ids=[layer.diff_id],
            history=[{"created": created, "created_by": "lazyctr import", "comment": "imported rootfs"}],
        )
        config_bytes = config.to_bytes()
        config_descriptor = Descriptor(MEDIA_CONFIG, store.put_blob(config_bytes), len(config_bytes))
        manifest = Manifest(config_descriptor, [layer.descriptor()])
        store.put_image(name, manifest)
    return store.image(name)


def add_layer(store: Store, base: Image, tar_path: Path, name: str, created_by: str) -> Image:
    """A new image `name`: `base` plus the layer tar at `tar_path`, recorded in the history."""
    name = image_name(name)
    with store.ingesting():
        layer = _store_layer(store, tar_path)
        created = now_rfc3339()
        config = ImageConfig.parse(store.read_blob(base.manifest.config.digest))
        config.created = created
        config.diff_ids.append(layer.diff_id)
        config.history.append({"created": created, "created_by": created_by})
        config_bytes = config.to_bytes()
        config_descriptor = Descriptor(MEDIA_CONFIG, store.put_blob(config_bytes), len(config_bytes))
        manifest = Manifest(config_descriptor, [*base.manifest.layers, layer.descriptor()])
        store.put_image(name, manifest)
    return store.image(name)


# -- OCI layouts ---------------------------------------------------------------------------------


class OciLayout:
    """A read-only view of an OCI image layout on disk (made by skopeo, podman, umoci, us)."""

    def __init__(self, path: Path) -> None:
        if not (path / "oci-layout").is_file() or not (path / "index.json").is_file():
            raise NotFound(f"{path} is not an OCI image layout (no oci-layout or index.json)")
        self.path = path

    def blob_path(self, digest: Digest) -> Path:
        return self.path / "blobs" / digest.algorithm / digest.hex

    def read_blob(self, descriptor: Descriptor) -> bytes:
        try:
            data = self.blob_path(descriptor.digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"{self.path}: blob {descriptor.digest} is missing") from None
        if Digest.of(data, descriptor.digest.algorithm) != descriptor.digest:
            raise DigestMismatch(f"{self.path}: blob {descriptor.digest} does not match its digest")
        return data

    def manifest_for(self, ref: str | None) -> tuple[str | None, Descriptor]:
        """The image manifest `ref` names (or the only image), with the ref name it is listed under."""
        entries = Index.parse((self.path / "index.json").read_bytes()).manifests
        if ref is not None:
            entries = [d for d in entries if d.annotations.get(REF_NAME) == ref]
            if not entries:
                raise NotFound(f"{self.path}: no image named {ref!r} in the layout")
        elif len(entries) != 1:
            raise InvalidReference(f"{self.path} holds {len(entries)} images: name one as oci:DIR:REF")
        descriptor = entries[0]
        ref_name = descriptor.annotations.get(REF_NAME)
        while descriptor.media_type in INDEX_TYPES:
            descriptor = _pick_platform(Index.parse(self.read_blob(descriptor)), self.path)
        if descriptor.media_type not in MANIFEST_TYPES:
            raise BadArchive(f"{self.path}: unsupported manifest type {descriptor.media_type}")
        return ref_name, descriptor


def _pick_platform(index: Index, where: Path) -> Descriptor:
    found = index.for_platform(host_architecture())
    if found is None:
        raise NotFound(f"{where}: no image for linux/{host_architecture()} in the index")
    return found


def import_oci(store: Store, source: OciSource, name: str | None) -> Image:
    """Copy one image of an OCI layout into the store, converting layers to zstd:chunked."""
    layout = OciLayout(source.path)
    ref_name, descriptor = layout.manifest_for(source.ref)
    if not (name or ref_name):
        raise InvalidReference(f"{source.path}: the image has no ref name there: give it a NAME[:TAG]")
    name = image_name(name or ref_name or "")
    manifest = Manifest.parse(layout.read_blob(descriptor))
    config_bytes = layout.read_blob(manifest.config)
    config = ImageConfig.parse(config_bytes)
    if len(config.diff_ids) != len(manifest.layers):
        raise BadArchive(f"{source.path}: {len(manifest.layers)} layers but {len(config.diff_ids)} diff_ids")
    with store.ingesting():
        layers = [
            _import_layer(store, layout, layer, diff_id)
            for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
        ]
        config_descriptor = Descriptor(MEDIA_CONFIG, store.put_blob(config_bytes), len(config_bytes))
        if manifest.config.media_type not in (MEDIA_CONFIG, DOCKER_CONFIG):
            raise BadArchive(f"{source.path}: not an image config: {manifest.config.media_type}")
        store.put_image(name, Manifest(config_descriptor, layers, annotations=manifest.annotations))
    return store.image(name)


def kept_as_is(layer: Descriptor) -> bool:
    """Whether an imported layer is stored as it is (zstd:chunked already), not converted."""
    return (
        layer.media_type == MEDIA_LAYER_ZSTD
        and position_from_annotations(layer.annotations, layer.size) is not None
    )


def _import_layer(store: Store, layout: OciLayout, layer: Descriptor, diff_id: Digest) -> Descriptor:
    if layer.media_type not in LAYER_TYPES:
        raise BadArchive(f"unsupported layer media type {layer.media_type}")
    blob_path = layout.blob_path(layer.digest)
    if not blob_path.is_file():
        raise NotFound(f"{layout.path}: layer blob {layer.digest} is missing")
    if kept_as_is(layer) and store.has_blob(layer.digest):  # verified when it was stored (a pull's)
        with store.open_layer(layer):  # the TOC must check out all the same
            return Descriptor(MEDIA_LAYER_ZSTD, layer.digest, layer.size, dict(layer.annotations))
    with open(blob_path, "rb") as src:
        blob = HashingReader(src, layer.digest.algorithm)
        if kept_as_is(layer):
            # Already zstd:chunked: kept as it is once its digest and TOC check out. Its diff_id is
            # not checked: podman 4 records the diff_id of the padded input tar but drops the padding.
            with store.temp_file() as (tmp, f):
                shutil.copyfileobj(blob, f, COPY_BUFSIZE)
                f.flush()
                _check_blob_digest(blob, layer)
                with FileRangeSource(tmp) as range_source:
                    LayerReader.open(range_source, layer.annotations)
                store.adopt(tmp, f, layer.digest)
            return Descriptor(MEDIA_LAYER_ZSTD, layer.digest, layer.size, dict(layer.annotations))
        with _spooled_tar(store, blob, f"layer {layer.digest}", diff_id.algorithm) as (
            tar_path,
            found_diff_id,
        ):
            blob.read()  # whatever follows the compressed stream still counts for the digest
            _check_blob_digest(blob, layer)
            if found_diff_id != diff_id:
                raise DigestMismatch(
                    f"layer {layer.digest}: diff_id mismatch: expected {diff_id}, found {found_diff_id}"
                )
            return _store_layer(store, tar_path).descriptor()


def _check_blob_digest(blob: HashingReader, layer: Descriptor) -> None:
    if blob.size != layer.size:
        raise DigestMismatch(
            f"layer blob {layer.digest} is {blob.size} bytes, its descriptor says {layer.size}"
        )
    if blob.digest != layer.digest:
        raise DigestMismatch(f"layer blob {layer.digest} does not match its digest (found {blob.digest})")


EXPORT_COMPRESSIONS = ("zstd:chunked", "gzip")


def export_oci(store: Store, image: Image, dest: OciSource, compression: str = "zstd:chunked") -> str:
    """Write `image` into the OCI layout at dest.path (created or added to); returns its ref name.

    `gzip` re-compresses the layers for tools that cannot read zstd (umoci 0.4, old docker); the
    uncompressed tars, and so the config and image ID, stay the same.
    """
    if compression not in EXPORT_COMPRESSIONS:
        raise InvalidReference(f"unknown compression {compression!r}: expected one of {EXPORT_COMPRESSIONS}")
    ref = dest.ref or image.name
    with store.ingesting():  # gc must not remove blobs while they are copied out
        blobs = dest.path / "blobs" / CANONICAL  # what is written here; copies keep their algorithm
        blobs.mkdir(parents=True, exist_ok=True)
        manifest = image.descriptor
        _copy_blob(store, image.manifest.config.digest, dest.path)
        if compression == "gzip":
            layers = [_export_gzip_layer(store, layer, blobs) for layer in image.manifest.layers]
            data = Manifest(image.manifest.config, layers, annotations=image.manifest.annotations).to_bytes()
            manifest = Descriptor(image.descriptor.media_type, Digest.of(data), len(data))
            atomic_write(blobs / manifest.digest.hex, data)
        else:
            for descriptor in [image.descriptor, *image.manifest.layers]:
                _copy_blob(store, descriptor.digest, dest.path)
        atomic_write(dest.path / "oci-layout", OCI_LAYOUT)
        index_path = dest.path / "index.json"
        index = Index.parse(index_path.read_bytes()) if index_path.exists() else Index()
        index.manifests = [d for d in index.manifests if d.annotations.get(REF_NAME) != ref]
        index.manifests.append(
            Descriptor(manifest.media_type, manifest.digest, manifest.size, {REF_NAME: ref})
        )
        atomic_write(index_path, index.to_bytes())
    return ref


def _copy_blob(store: Store, digest: Digest, layout: Path) -> None:
    """Copy a blob out of the store into an OCI layout, checking it on the way: a corrupted blob is
    never exported."""
    target = layout / "blobs" / digest.algorithm / digest.hex
    if target.exists():
        return
    target.parent.mkdir(exist_ok=True)
    with atomic_path(target) as tmp, open(store.blob_path(digest), "rb") as src, open(tmp, "wb") as out:
        copied = HashingWriter(out, digest.algorithm)
        shutil.copyfileobj(src, copied, COPY_BUFSIZE)
        if copied.digest != digest:
            raise DigestMismatch(
                f"blob {digest} is corrupted in the store: its content hashes to {copied.digest}"
            )


def _export_gzip_layer(store: Store, layer: Descriptor, blobs: Path) -> Descriptor:
    # mtime=0 and no file name: the same layer always gives the same gzip blob.
    with (
        open(store.blob_path(layer.digest), "rb") as src,
        content_addressed_file(blobs) as out,
        gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as compressed,
    ):
        shutil.copyfileobj(open_layer_stream(src, f"layer {layer.digest}"), compressed, COPY_BUFSIZE)
    return Descriptor(MEDIA_LAYER_GZIP, out.digest, out.size)
