"""Images as one tar file, as `docker save`/`podman save` write them and `docker load`/`podman load`
read them: a docker-archive (manifest.json, repositories, `<config>.json`, `<diff_id>/layer.tar`
with uncompressed layers) or an oci-archive (an OCI image layout in a tar, gzip layers).

Saving writes the archive to a temporary name and renames it into place once complete. Loading
checks the whole archive (every member a manifest names is there) before it stores anything, and
names an image only once all its layers are stored and match their diff_ids: a truncated or
corrupt archive leaves no image behind (blobs it stored before the error are garbage that gc frees).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from storage.digest import Digest, HashingWriter
from storage.errors import BadArchive, DigestMismatch, NotFound, StorageError
from storage.extract import open_layer_stream
from storage.files import atomic_path
from storage.importer import (
    COPY_BUFSIZE,
    OciLayout,
    OciSource,
    export_oci,
    image_name,
    import_layer,
    import_oci,
)
from storage.oci import MEDIA_CONFIG, REF_NAME, Descriptor, ImageConfig, Index, Manifest
from storage.store import Image, Store

FORMATS = ("docker-archive", "oci-archive")


# -- save ------------------------------------------------------------------------------------------


def save(store: Store, images: list[Image], output: Path, fmt: str = "docker-archive") -> None:
    """Write `images` (all their layers must be here) to the archive `output`."""
    if fmt not in FORMATS:
        raise BadArchive(f"unknown archive format {fmt!r}: expected one of {', '.join(FORMATS)}")
    for image in images:
        if not store.is_complete(image):
            raise NotFound(
                f"{image.name} was pulled lazily: its layers are not all here (pull it eagerly first)"
            )
    with (
        store.ingesting(),
        atomic_path(output) as tmp,
        tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar,
    ):
        if fmt == "docker-archive":
            _save_docker(store, images, tar)
        else:
            _save_oci(store, images, tar)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _save_docker(store: Store, images: list[Image], tar: tarfile.TarFile) -> None:
    entries: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for image in images:
        config = f"{image.manifest.config.digest.hex}.json"
        if config not in written:
            _add_bytes(tar, config, store.read_blob(image.manifest.config.digest))
            written.add(config)
        layers = []
        for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=True):
            name = f"{diff_id.hex}/layer.tar"
            if name not in written:
                _add_layer_tar(store, layer, diff_id, name, tar)
                written.add(name)
            layers.append(name)
        entries.append({"Config": config, "RepoTags": [image.name], "Layers": layers})
        repository, _, tag = image.name.rpartition(":")
        if layers:
            repositories.setdefault(repository, {})[tag] = layers[-1].split("/")[0]
    _add_bytes(tar, "manifest.json", json.dumps(entries).encode())
    _add_bytes(tar, "repositories", json.dumps(repositories).encode())


def _add_layer_tar(store: Store, layer: Descriptor, diff_id: Digest, name: str, tar: tarfile.TarFile) -> None:
    """The layer uncompressed (a tar header needs its size first: spooled), checked against diff_id."""
    with store.temp_file() as (_, spool), open(store.blob_path(layer.digest), "rb") as blob:
        hashed = HashingWriter(spool, diff_id.algorithm)
        shutil.copyfileobj(open_layer_stream(blob, f"layer {layer.digest}"), hashed, COPY_BUFSIZE)
        if hashed.digest != diff_id:
            raise DigestMismatch(
                f"layer {layer.digest} is corrupted in the store: it unpacks to {hashed.digest}"
            )
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = spool.tell(), 0o644, 0
        spool.seek(0)
        tar.addfile(info, spool)


def _save_oci(store: Store, images: list[Image], tar: tarfile.TarFile) -> None:
    with _scratch(store) as layout:
        for image in images:
            # gzip, not zstd:chunked: what every reader of archives takes (docker load; podman saves an
            # image loaded with zstd layers again only as an oci-archive). The image ID stays the same.
            export_oci(store, image, OciSource(layout, image.name), compression="gzip")
        for path in sorted(layout.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)


@contextlib.contextmanager
def _scratch(store: Store) -> Iterator[Path]:
    """A directory in the store's tmp/, which gc (it empties tmp/) leaves alone while it is used."""
    with store.ingesting():
        store.tmp.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=store.tmp, prefix="archive-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


# -- load ------------------------------------------------------------------------------------------


def load(store: Store, archive: Path) -> list[str]:
    """Store every image of the archive (either format, found by what it holds); returns their names."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            names = set(tar.getnames())
            if "manifest.json" in names:
                return _load_docker(store, tar, archive)
            if "index.json" in names and "oci-layout" in names:
                return _load_oci(store, tar, archive)
            raise BadArchive(
                f"{archive}: neither a docker-archive (manifest.json) nor an oci-archive (index.json)"
            )
    except (tarfile.TarError, EOFError, zlib.error) as e:
        why = str(e).splitlines()[0].rstrip(":")  # tarfile lists every method it tried, one a line
        raise BadArchive(f"{archive}: not a readable tar archive: {why}") from None


def _member(tar: tarfile.TarFile, name: str, archive: Path) -> tarfile.TarInfo:
    name = os.path.normpath(name)
    try:
        return tar.getmember(name)
    except KeyError:
        raise BadArchive(f"{archive}: {name} is missing from the archive") from None


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> bytes:
    f = tar.extractfile(member)
    if f is None:
        raise BadArchive(f"{archive}: {member.name} is not a file")
    return f.read()


def _load_docker(store: Store, tar: tarfile.TarFile, archive: Path) -> list[str]:
    try:
        entries = json.loads(_read(tar, _member(tar, "manifest.json", archive), archive))
        plans = [(str(e["Config"]), [str(n) for n in e.get("RepoTags") or []], [str(n) for n in e["Layers"]])
                 for e in entries]  # fmt: skip
    except (ValueError, KeyError, TypeError):
        raise BadArchive(f"{archive}: manifest.json is not a docker-archive manifest") from None
    # Everything the manifest names must be there before anything is stored.
    checked = []
    for config_name, tags, layer_names in plans:
        if not tags:
            raise BadArchive(
                f"{archive}: the image of {config_name} has no RepoTags: lazyctr names every image"
            )
        names = [image_name(tag) for tag in tags]
        config_bytes = _read(tar, _member(tar, config_name, archive), archive)
        stem = os.path.basename(config_name).removesuffix(".json")
        if len(stem) == 64 and Digest.of(config_bytes).hex != stem:
            raise DigestMismatch(f"{archive}: {config_name} does not match its digest")
        config = ImageConfig.parse(config_bytes)
        if len(config.diff_ids) != len(layer_names):
            raise BadArchive(
                f"{archive}: {len(layer_names)} layers but {len(config.diff_ids)} diff_ids in {config_name}"
            )
        layers = [_member(tar, name, archive) for name in layer_names]
        checked.append((names, config_bytes, config, layers))
    loaded = []
    with store.ingesting():
        for names, config_bytes, config, layers in checked:
            descriptors = []
            for member, diff_id in zip(layers, config.diff_ids, strict=True):
                source = tar.extractfile(member)
                if source is None:
                    raise BadArchive(f"{archive}: {member.name} is not a file")
                descriptors.append(import_layer(store, source, f"{archive}: layer {member.name}", diff_id))
            config_descriptor = Descriptor(MEDIA_CONFIG, store.put_blob(config_bytes), len(config_bytes))
            for name in names:
                store.put_image(name, Manifest(config_descriptor, descriptors))
                loaded.append(name)
    return loaded


def _load_oci(store: Store, tar: tarfile.TarFile, archive: Path) -> list[str]:
    with _scratch(store) as layout_dir:
        try:
            tar.extractall(layout_dir, filter="data")  # no absolute names, nothing linked out of it
        except tarfile.FilterError as e:
            raise BadArchive(f"{archive}: {e}") from None
        layout = OciLayout(layout_dir)
        index = Index.parse((layout_dir / "index.json").read_bytes())
        refs = [d.annotations.get(REF_NAME) for d in index.manifests]
        if None in refs and len(refs) > 1:
            raise BadArchive(f"{archive}: an image of the archive has no name ({REF_NAME})")
        for ref in refs:  # every blob each image names must be there before anything is stored
            _check_blobs(layout, ref, archive)
        images = [import_oci(store, OciSource(layout_dir, ref), None) for ref in refs]
    return [image.name for image in images]


def _check_blobs(layout: OciLayout, ref: str | None, archive: Path) -> None:
    try:
        _, descriptor = layout.manifest_for(ref)
        manifest = Manifest.parse(layout.read_blob(descriptor))
        layout.read_blob(manifest.config)
    except StorageError as e:
        raise BadArchive(f"{archive}: {str(e).replace(str(layout.path), 'the archive')}") from None
    for layer in manifest.layers:
        if not layout.blob_path(layer.digest).is_file():
            raise BadArchive(f"{archive}: layer blob {layer.digest} is missing from the archive")
