"""The local store: an OCI image layout under `<root>/store`, with image names in index.json.

Blobs are written atomically (temporary file under `<root>/tmp`, fsync, rename) and only under
their verified digest. Two locks in `<root>/locks` coordinate processes: writers of blobs hold
`gc.lock` shared while `gc` holds it exclusively (so a blob being imported is never collected
before its image is named), and read-modify-writes of index.json hold `index.lock`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from storage.digest import ALGORITHMS, CANONICAL, Digest, verify
from storage.errors import CorruptLayer, InvalidManifest, InvalidReference, NotFound, StorageError
from storage.files import atomic_write, file_lock, fsync_dir, publish
from storage.oci import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_MANIFEST,
    REF_NAME,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
)
from storage.reference import ImageRef

if TYPE_CHECKING:
    # Imported where used: the layer codec (TOCs, their index, zstd) is a third of what `run` of an
    # image whose layers are extracted would otherwise import, and it reads no layer.
    from storage.layer_reader import LayerReader
    from storage.toc import LayerToc
    from storage.zstd_chunked import TocPosition

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
# On a lazily pulled image's index entry: `registry/repository` its missing layer blobs come from.
SOURCE = "io.lazyctr.source"
# On an artifact's index entry (an access profile): the digest of the image manifest it refers to.
SUBJECT = "io.lazyctr.subject"


@dataclass
class Image:
    """A named image in the store, with its parsed manifest and config."""

    name: str  # `repository:tag`, as in the ref.name annotation
    descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig

    @property
    def id(self) -> Digest:
        """Like docker and podman, an image's ID is its config digest."""
        return self.manifest.config.digest

    @property
    def source(self) -> str | None:
        """`registry/repository` of a lazily pulled image, whose layers are fetched on demand."""
        return self.descriptor.annotations.get(SOURCE)


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root.absolute()  # a daemon (lazyfs) may run from another directory
        self.layout = self.root / "store"
        self.blobs = self.layout / "blobs" / CANONICAL  # where our own writers put blobs
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        for directory in (self.blobs, self.tmp, self.locks):
            directory.mkdir(parents=True, exist_ok=True)
        if not (self.layout / "index.json").exists():
            with file_lock(self.locks / "index.lock"):  # two first runs must not both create it
                if not (self.layout / "index.json").exists():
                    atomic_write(self.layout / "oci-layout", OCI_LAYOUT)
                    atomic_write(self.layout / "index.json", Index().to_bytes())

    # -- blobs -------------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        """`blobs/<algorithm>/<hex>`, as the OCI image layout has it for every algorithm."""
        return self.layout / "blobs" / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest) -> bool:
        return self.blob_path(digest).exists()

    def read_blob(self, digest: Digest) -> bytes:
        """A small blob (manifest, config), verified against its digest."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None
        verify(data, digest, f"blob {digest}")
        return data

    def put_blob(self, data: bytes, algorithm: str = CANONICAL) -> Digest:
        """Store `data` under its digest (of `algorithm`: sha256 unless a descriptor named another)."""
        digest = Digest.of(data, algorithm)
        if not self.has_blob(digest):
            with self.ingesting():
                self.blob_path(digest).parent.mkdir(exist_ok=True)
                atomic_write(self.blob_path(digest), data)
        return digest

    @contextlib.contextmanager
    def temp_file(self) -> Iterator[tuple[Path, BinaryIO]]:
        """A temporary file on the store's file system, removed afterwards unless adopted."""
        with self.ingesting():
            fd, name = tempfile.mkstemp(dir=self.tmp, prefix="blob-")
            path = Path(name)
            try:
                with os.fdopen(fd, "w+b") as f:
                    yield path, f
            finally:
                path.unlink(missing_ok=True)

    def adopt(self, tmp: Path, f: BinaryIO, digest: Digest) -> None:
        """Move a fully written temporary file into the store as blob `digest` (already verified)."""
        f.flush()
        os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if self.has_blob(digest):
            return
        self.blob_path(digest).parent.mkdir(exist_ok=True)
        publish(tmp, self.blob_path(digest))

    @contextlib.contextmanager
    def ingesting(self) -> Iterator[None]:
        """Hold while writing blobs that an image will name, so gc leaves them alone."""
        with file_lock(self.locks / "gc.lock", shared=True):
            yield

    # -- names ---------------------------------------------------------------------------------

    def _index(self) -> Index:
        return Index.parse((self.layout / "index.json").read_bytes())

    def _write_index(self, index: Index) -> None:
        atomic_write(self.layout / "index.json", index.to_bytes())

    def names(self) -> list[tuple[str, Descriptor]]:
        return [(d.annotations[REF_NAME], d) for d in self._index().manifests if REF_NAME in d.annotations]

    def tag(self, name: str, manifest: Descriptor) -> None:
        """Point `name` (`repository:tag`) at a manifest already in the store (keeping its source)."""
        annotations = {REF_NAME: name}
        if SOURCE in manifest.annotations:
            annotations[SOURCE] = manifest.annotations[SOURCE]
        entry = Descriptor(manifest.media_type, manifest.digest, manifest.size, annotations)
        with self.ingesting(), file_lock(self.locks / "index.lock"):  # gc must not run in between
            if not self.has_blob(manifest.digest):
                raise NotFound(f"manifest {manifest.digest} is not in the store (removed meanwhile?)")
            index = self._index()
            index.manifests = [d for d in index.manifests if d.annotations.get(REF_NAME) != name]
            index.manifests.append(entry)
            self._write_index(index)

    def untag(self, names: list[str]) -> None:
        with file_lock(self.locks / "index.lock"):
            index = self._index()
            index.manifests = [d for d in index.manifests if d.annotations.get(REF_NAME) not in names]
            self._write_index(index)

    def add_referrer(self, data: bytes) -> Descriptor:
        """Store the artifact manifest `data` that refers to an image manifest (its `subject`, the
        OCI referrers model); it lives as long as an image name points at its subject. Its blobs
        must be in the store already."""
        artifact = Manifest.parse(data)
        if artifact.subject is None:
            raise InvalidManifest("an artifact manifest without a subject")
        annotations = {SUBJECT: str(artifact.subject.digest)}
        entry = Descriptor(MEDIA_MANIFEST, self.put_blob(data), len(data), annotations)
        entry.artifact_type = artifact.artifact_type or artifact.config.media_type
        with self.ingesting(), file_lock(self.locks / "index.lock"):
            index = self._index()
            if all(d.digest != entry.digest for d in index.manifests):
                index.manifests.append(entry)
                self._write_index(index)
        return entry

    def referrers(self, subject: Digest, artifact_type: str | None = None) -> list[Descriptor]:
        """The artifacts referring to manifest `subject`, oldest first."""
        return [
            d
            for d in self._index().manifests
            if d.annotations.get(SUBJECT) == subject and artifact_type in (None, d.artifact_type)
        ]

    def put_image(self, name: str, manifest: Manifest) -> Descriptor:
        data = manifest.to_bytes()
        descriptor = Descriptor(MEDIA_MANIFEST, self.put_blob(data), len(data))
        self.tag(name, descriptor)
        return descriptor

    # -- images --------------------------------------------------------------------------------

    def load(self, name: str, descriptor: Descriptor) -> Image:
        manifest = Manifest.parse(self.read_blob(descriptor.digest))
        config = ImageConfig.parse(self.read_blob(manifest.config.digest))
        return Image(name, descriptor, manifest, config)

    def images(self) -> tuple[list[Image], list[str]]:
        """Every named image, and a line for each name whose manifest or config cannot be read."""
        images, broken = [], []
        for name, descriptor in self.names():
            try:
                images.append(self.load(name, descriptor))
            except StorageError as e:
                broken.append(f"{name}: {e}")
        return images, broken

    def resolve(self, text: str) -> list[Image]:
        """The images `text` names: `name[:tag]`, a manifest digest, or a prefix of an image ID.

        A name gives one image; an ID may be shared by several names (all are returned).
        """
        names = self.names()
        with contextlib.suppress(InvalidReference):
            ref = ImageRef.parse(text)
            for name, descriptor in names:
                repository, _, tag = name.rpartition(":")
                if (
                    repository == ref.name
                    and (ref.tag is None or ref.tag == tag)
                    and (ref.digest is None or ref.digest == descriptor.digest)
                ):
                    return [self.load(name, descriptor)]
        algorithm, _, hex_part = text.rpartition(":")
        if algorithm not in ("", *ALGORITHMS):
            raise NotFound(f"image not known: {text}")
        if len(hex_part) >= 4 and all(c in "0123456789abcdef" for c in hex_part):
            matches = [
                image
                for image in (self.load(n, d) for n, d in names)
                if image.id.hex.startswith(hex_part) or image.descriptor.digest.hex.startswith(hex_part)
            ]
            if len({image.id for image in matches}) == 1:
                return matches
            if matches:
                raise InvalidReference(f"{text!r} is ambiguous: it prefixes several image IDs")
        raise NotFound(f"image not known: {text}")

    def image(self, text: str) -> Image:
        return self.resolve(text)[0]

    @contextlib.contextmanager
    def open_layer(self, layer: Descriptor) -> Iterator[LayerReader]:
        """Random access to a zstd:chunked layer blob in the store."""
        from storage.layer_reader import FileRangeSource, LayerReader

        if not self.has_blob(layer.digest):
            raise NotFound(f"layer {layer.digest} is not in the store")
        with FileRangeSource(self.blob_path(layer.digest)) as source:
            yield LayerReader.open(source, layer.annotations)

    def layer_toc(self, layer: Descriptor) -> LayerToc:
        """The verified TOC of a zstd:chunked layer: from its blob, or for a lazily pulled layer
        from the TOC blob pulled beside it (checked against the digest the descriptor promises).
        The bytes are read and checked every time; their parse is done once and kept as an index
        (storage.tocindex)."""
        from storage.toc import LayerToc
        from storage.tocindex import cached_toc
        from storage.zstd_chunked import decompress_toc

        promised = self._promised_toc(layer)
        if promised is None:  # no position in the annotations: the blob's footer says where
            with self.open_layer(layer) as reader:
                return reader.toc
        toc_digest, position, compressed = promised
        return cached_toc(
            self.root,
            toc_digest,
            position.frames_end,
            lambda: LayerToc.parse(decompress_toc(compressed, position), position.frames_end),
        )

    def check_layer_toc(self, layer: Descriptor) -> None:
        """Raise what `layer_toc` would, without making the TOC's objects where it has an index
        (only a valid TOC gets one): for a process that only needs to know the layer mounts."""
        from storage.tocindex import is_indexed

        promised = self._promised_toc(layer)
        if promised is None or not is_indexed(self.root, promised[0], promised[1].frames_end):
            self.layer_toc(layer)

    def _promised_toc(self, layer: Descriptor) -> tuple[Digest, TocPosition, bytes] | None:
        """The digest, position and compressed bytes (checked against the digest) of the TOC the
        layer descriptor promises; None if the annotations give no position."""
        from storage.layer_reader import FileRangeSource
        from storage.zstd_chunked import position_from_annotations

        if self.has_blob(layer.digest):
            with FileRangeSource(self.blob_path(layer.digest)) as source:
                toc_digest, position = position_from_annotations(layer.annotations, source.size) or (
                    None,
                    None,
                )
                if toc_digest is None or position is None:
                    return None
                compressed = source.read_range(position.offset, position.length)
            verify(compressed, toc_digest, "layer TOC")
            return toc_digest, position, compressed
        toc_digest, position = position_from_annotations(layer.annotations, layer.size) or (None, None)
        if toc_digest is None or position is None:
            raise NotFound(f"layer {layer.digest} is not in the store")
        return toc_digest, position, self.read_blob(toc_digest)

    def is_complete(self, image: Image) -> bool:
        """Whether every layer blob is here (a lazily pulled image has only their TOCs)."""
        return all(self.has_blob(layer.digest) for layer in image.manifest.layers)

    @contextlib.contextmanager
    def open_layers(self, image: Image) -> Iterator[list[LayerReader]]:
        """Random access to every layer of an image, bottom layer first."""
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(self.open_layer(layer)) for layer in image.manifest.layers]

    # -- garbage collection --------------------------------------------------------------------

    def gc(self) -> tuple[int, int]:
        """Remove every blob no named image reaches; returns (blobs removed, bytes freed)."""
        from storage.tocindex import INDEX_DIR as TOC_INDEX_DIR

        with file_lock(self.locks / "gc.lock"):
            live: set[str] = set()  # digests
            index = self._index()
            named = {d.digest for d in index.manifests if REF_NAME in d.annotations}
            orphans = [d for d in index.manifests if d.annotations.get(SUBJECT, "") not in ("", *named)]
            if orphans:  # artifacts of images no longer named go with them
                with file_lock(self.locks / "index.lock"):
                    index = self._index()
                    index.manifests = [d for d in index.manifests if d not in orphans]
                    self._write_index(index)
            pending = list(index.manifests)
            while pending:
                descriptor = pending.pop()
                if descriptor.digest in live:
                    continue
                live.add(descriptor.digest)
                if descriptor.media_type in MANIFEST_TYPES:
                    with contextlib.suppress(NotFound, InvalidManifest, CorruptLayer):
                        manifest = Manifest.parse(self.read_blob(descriptor.digest))
                        pending += [manifest.config, *manifest.layers]
                        live.update(_toc_digest(layer) for layer in manifest.layers)
                elif descriptor.media_type in INDEX_TYPES:
                    with contextlib.suppress(NotFound, InvalidManifest):
                        pending += Index.parse(self.read_blob(descriptor.digest)).manifests
            removed = freed = 0
            for algorithm in (self.layout / "blobs").iterdir():
                for blob in algorithm.iterdir():
                    if f"{algorithm.name}:{blob.name}" not in live:
                        freed += blob.stat().st_size
                        blob.unlink()
                        removed += not blob.name.startswith(".")  # dot files: temporaries, not blobs
                fsync_dir(algorithm)
            live_hex = {digest.partition(":")[2] for digest in live}
            for toc_index in (self.root / TOC_INDEX_DIR).glob("*"):  # of TOCs gone with their images
                if toc_index.name not in live_hex:
                    toc_index.unlink()
            for leftover in self.layout.glob(".*.tmp"):  # of index.json writers that crashed
                leftover.unlink()
            shutil.rmtree(self.tmp, ignore_errors=True)  # leftovers of crashed writers
            self.tmp.mkdir(exist_ok=True)
            return removed, freed


def _toc_digest(layer: Descriptor) -> str:
    """The digest of the TOC blob a lazily pulled layer keeps in the store ('' for none)."""
    from storage.zstd_chunked import position_from_annotations

    with contextlib.suppress(StorageError):
        promised = position_from_annotations(layer.annotations, layer.size)
        if promised is not None:
            return promised[0]
    return ""
