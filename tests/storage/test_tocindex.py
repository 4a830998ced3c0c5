"""The TOC index: what a parse gives, kept beside the store; never loaded unless it checks out."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.digest import Digest
from storage.errors import CorruptLayer, DigestMismatch
from storage.oci import Descriptor
from storage.store import Store
from storage.toc import LayerToc, TocEntry
from storage.tocindex import forget_recent, index_path, is_indexed, load_index, remember
from storage.zstd_chunked import position_from_annotations
from tests.lazyfs.conftest import make_image


def promised(layer: Descriptor) -> tuple[Digest, int]:
    found = position_from_annotations(layer.annotations, layer.size)
    assert found is not None and found[1] is not None
    return found[0], found[1].frames_end


def parsed(store: Store, layer: Descriptor) -> LayerToc:
    with store.open_layer(layer) as reader:
        return reader.toc


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "root")
    make_image(store, tmp_path)  # two layers: xattrs, hard links, holes, chunks, devices, whiteouts
    return store


def test_the_first_use_of_a_toc_indexes_it_and_the_index_holds_what_the_parse_gives(store: Store) -> None:
    for layer in store.image("rich:1").manifest.layers:
        digest, frames_end = promised(layer)
        assert not is_indexed(store.root, digest, frames_end)
        first = store.layer_toc(layer)
        assert is_indexed(store.root, digest, frames_end)
        loaded = load_index(index_path(store.root, digest), digest, frames_end)
        assert loaded is not None
        assert loaded.entries == parsed(store, layer).entries == first.entries
        assert loaded.to_bytes() == parsed(store, layer).to_bytes()
        assert store.layer_toc(layer).entries == loaded.entries  # from the index now


def test_a_damaged_or_foreign_index_is_never_loaded_and_is_rewritten(store: Store) -> None:
    lower, upper = store.image("rich:1").manifest.layers
    for layer in (lower, upper):
        store.layer_toc(layer)
    digest, frames_end = promised(lower)
    path = index_path(store.root, digest)
    assert load_index(path, digest, frames_end + 1) is None  # validated for a layer laid out otherwise
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(data)
    assert load_index(path, digest, frames_end) is None  # the body no longer hashes to its header
    other = promised(upper)[0]
    path.write_bytes(index_path(store.root, other).read_bytes())  # another TOC's index by this name
    assert load_index(path, digest, frames_end) is None
    assert store.layer_toc(lower) is store.layer_toc(lower)  # as this process had it: no disk read
    forget_recent()  # as a process that has not loaded it yet
    assert store.layer_toc(lower).entries == parsed(store, lower).entries  # parsed again
    assert load_index(path, digest, frames_end) is not None  # and indexed again


def test_a_toc_whose_hard_link_points_nowhere_is_never_indexed(tmp_path: Path) -> None:
    toc = LayerToc([TocEntry(type="hardlink", name="./a", link_name="./missing")])
    digest = Digest.of(b"a TOC")
    remember(tmp_path, digest, 100, toc)
    assert not index_path(tmp_path, digest).exists()  # each use parses it, and fails, as before


def test_a_toc_that_does_not_check_out_is_not_indexed(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    image = make_image(store, tmp_path)
    layer = image.manifest.layers[0]
    digest, frames_end = promised(layer)
    blob = store.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF  # inside the TOC frame or the footer
    blob.write_bytes(data)
    with pytest.raises((CorruptLayer, DigestMismatch)):
        store.layer_toc(layer)
    assert not is_indexed(store.root, digest, frames_end)


def test_gc_drops_the_index_with_its_toc(store: Store, tmp_path: Path) -> None:
    image = store.image("rich:1")
    for layer in image.manifest.layers:
        store.layer_toc(layer)
    store.untag(["rich:1"])
    kept = store.image("rich-base:1").manifest.layers[0]
    store.gc()
    assert is_indexed(store.root, *promised(kept))  # the base image still has it
    assert not is_indexed(store.root, *promised(image.manifest.layers[1]))


def test_an_indexed_toc_is_still_read_and_checked_at_every_use(store: Store) -> None:
    layer = store.image("rich:1").manifest.layers[0]
    store.layer_toc(layer)
    digest, frames_end = promised(layer)
    assert is_indexed(store.root, digest, frames_end)
    found = position_from_annotations(layer.annotations, layer.size)
    assert found is not None and found[1] is not None
    blob = store.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[found[1].offset + 10] ^= 0xFF  # a byte of the TOC in the layer blob
    blob.write_bytes(data)
    for use in (store.layer_toc, store.check_layer_toc):
        with pytest.raises(DigestMismatch):
            use(layer)
