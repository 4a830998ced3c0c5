"""When a mount's background fill is over, its daemon assembles the image's root as a plain directory:
the same tree, byte for byte and attribute for attribute, as the layers extracted from their blobs
and stacked by overlayfs; never from a damaged chunk, never half made."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.chunks import ChunkCache
from storage.layers import LayerCache
from storage.pieces import Piece, file_pieces
from storage.store import Image, Store
from tests.lazyfs.conftest import Mounter, Published, pull_lazily, run_cli
from tests.runtime.polling import wait_for
from tests.snapshots import assert_same_tree, snapshot

pytestmark = pytest.mark.privileged


def plain_root(root: Path, point: Path) -> str | None:
    """What the mount's daemon says of the image's plain root: where it is, why none, or None yet."""
    value: str | None = json.loads(run_cli(root, "mount", "--stats", str(point)).stdout)["plain_root"]
    return value


def filled(root: Path, ref: str, mount: Mounter) -> str:
    """Mount `ref` with a background fill and wait until the daemon has tried to assemble its root."""
    point = mount(root, ref, "--fill")
    wait_for(lambda: plain_root(root, point) is not None, what="the plain root")
    outcome = plain_root(root, point)
    assert outcome is not None
    run_cli(root, "umount", str(point))
    return outcome


def read_lazily(root: Path, ref: str, mount: Mounter, path: str, expected: bytes) -> Image:
    """Pull `ref` lazily and read one file through a mount of it (no fill): its pieces are cached."""
    image = pull_lazily(root, ref)
    point = mount(root, ref)
    assert (point / path).read_bytes() == expected
    run_cli(root, "umount", str(point))
    return image


def chunk_of(root: Path, image: Image, path: str) -> Path:
    """The chunk cache's file of `path`'s (only) piece in the image's bottom layer."""
    store = Store(root)
    [entry] = [e for e in store.layer_toc(image.manifest.layers[0]).entries if e.path == path]
    [piece] = file_pieces(entry)
    assert isinstance(piece, Piece)
    return ChunkCache(root).path(piece.digest)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "layers").iterdir()) if (root / "layers").is_dir() else []


@pytest.fixture
def eager_root(published: Published, tmp_path: Path) -> Iterator[Path]:
    """The publisher's image (its blobs are all there) as the overlay driver stacks it: its layers
    extracted from the blobs, under a read-only overlayfs."""
    store = Store(published.publisher_root)
    cache = LayerCache(store)
    image = published.image
    lowers = [
        cache.get(layer, diff)
        for layer, diff in zip(image.manifest.layers, image.config.diff_ids, strict=True)
    ]
    target = tmp_path / "eager"
    target.mkdir()
    lowerdir = ":".join(str(p) for p in reversed(lowers))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(target)], check=True
    )
    yield target
    subprocess.run(["umount", str(target)], check=True)


def test_a_filled_image_gets_a_root_identical_to_its_extracted_layers(
    published: Published, tmp_path: Path, mount: Mounter, eager_root: Path
) -> None:
    root = tmp_path / "client"
    image = pull_lazily(root, published.ref)
    assembled = filled(root, published.ref, mount)
    path = LayerCache(Store(root)).plain_root(image)
    assert path is not None and assembled == str(path)
    assert [name for name in leftovers(root) if name.startswith(".")] == []
    expected, found = snapshot(eager_root), snapshot(path)
    del expected.entries["/"], found.entries["/"]  # the root's own attributes are the upper dir's
    # overlayfs shows the lower inode's link count, which still counts the first etc/small.txt that
    # the upper layer replaced; the image has one link left there, as lazyfs says too.
    expected.entries["/etc/hard"] = dataclasses.replace(expected.entries["/etc/hard"], nlink=1)
    assert_same_tree(expected, found, "the assembled root", "the overlay of the extracted layers")
    assert (path / "etc/hard").read_bytes() == b"first version\n"
    assert not (path / "gone").exists() and [p.name for p in (path / "opaque").iterdir()] == ["new"]
    served = snapshot(mount(root, published.ref))
    del served.entries["/"]
    assert_same_tree(served, found, "the assembled root", "what lazyfs serves")


def test_a_half_fetched_image_gets_no_plain_root(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    root = tmp_path / "client"
    image = read_lazily(root, published.ref, mount, "etc/small.txt", b"second version\n")
    assert LayerCache(Store(root)).plain_root(image) is None and leftovers(root) == []


def test_a_chunk_changed_on_disk_is_never_assembled_and_leaves_nothing(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    root = tmp_path / "client"
    image = read_lazily(root, published.ref, mount, "data/tagged", b"with an xattr\n")
    chunk = chunk_of(root, image, "data/tagged")
    chunk.write_bytes(b"WITH AN XATTR\n")  # same size, other bytes

    outcome = filled(root, published.ref, mount)  # every other piece is fetched, that one is "cached"
    assert outcome.startswith("failed: ") and "changed on disk" in outcome
    assert LayerCache(Store(root)).plain_root(image) is None and leftovers(root) == []
    assert not chunk.exists()  # a miss from now on: the next fill fetches it again

    path = filled(root, published.ref, mount)
    assert LayerCache(Store(root)).plain_root(image) == Path(path)
    assert (Path(path) / "data/tagged").read_bytes() == b"with an xattr\n"


def test_gc_removes_the_root_with_the_last_image_that_has_it(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    run_cli(root, "tag", published.ref, "other:1")
    assert Path(filled(root, published.ref, mount)).is_dir()
    run_cli(root, "rmi", published.ref)
    assert [name for name in leftovers(root) if name.startswith("root-")]  # other:1 still has it
    run_cli(root, "rmi", "other:1")
    assert leftovers(root) == []
