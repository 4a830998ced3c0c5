"""Extracted layers are shared, extracted once, complete, and checked against the blob digest."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from storage.errors import DigestMismatch
from storage.importer import import_tarball
from storage.layers import LayerCache
from storage.store import Image, Store
from tests.tarfiles import info, make_tar


def import_image(store: Store, tar: Path, name: str) -> Image:
    with open(tar, "rb") as f:
        return import_tarball(store, f, name)


@pytest.mark.privileged
def test_a_layer_is_extracted_once_for_overlayfs(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    tar = make_tar(
        tmp_path / "l.tar",
        [
            (info("bin", tarfile.DIRTYPE), None),
            (info("bin/tool", mode=0o755), b"tool"),
            (info(".wh.gone"), b""),
        ],
    )
    image = import_image(store, tar, "img")
    cache = LayerCache(store)
    layer, diff_id = image.manifest.layers[0], image.config.diff_ids[0]
    path = cache.get(layer, diff_id)
    assert path == tmp_path / "root/layers" / diff_id.hex
    assert (path / "bin/tool").read_bytes() == b"tool"
    whiteout = os.lstat(path / "gone")  # overlayfs's whiteout: a 0:0 character device
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    marker = path / "bin/tool"
    before = marker.stat().st_ino
    assert cache.get(layer, diff_id) == path and marker.stat().st_ino == before  # not extracted again
    assert not [p for p in (tmp_path / "root/layers").iterdir() if p.name.startswith(".")]


def test_a_corrupted_blob_leaves_no_layer_behind(tmp_path: Path, busybox_tar: Path) -> None:
    store = Store(tmp_path / "root")
    image = import_image(store, busybox_tar, "busybox")
    layer = image.manifest.layers[0]
    blob = store.blob_path(layer.digest)
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF  # in the TOC frame: the tar still extracts, only the blob digest can tell
    blob.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match="corrupted"):
        LayerCache(store).get(layer, image.config.diff_ids[0])
    assert list((tmp_path / "root/layers").iterdir()) == []
