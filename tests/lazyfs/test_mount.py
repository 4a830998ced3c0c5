"""lazyctr pull (lazy) and lazyctr mount: the image tree through FUSE, fetched only as it is read."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from lazyfs.host import is_mounted
from storage.extract import extract_layer
from storage.store import Store
from storage.toc import LayerToc
from storage.tocindex import index_path, load_index
from storage.zstd_chunked import decompress_toc, position_from_annotations
from tests.lazyfs.conftest import BIG, Mounter, Published, pull_lazily, run_cli
from tests.tarfiles import info, make_tar

pytestmark = pytest.mark.privileged


def stats(root: Path, mountpoint: Path) -> dict[str, Any]:
    import json

    return dict(json.loads(run_cli(root, "mount", "--stats", str(mountpoint)).stdout))


def describe(top: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a reader sees of a tree, by path (inode numbers as hard-link groups)."""
    out: dict[str, tuple[Any, ...]] = {}
    groups: dict[int, str] = {}
    for path in sorted(top.rglob("*")):  # the top itself is the mount point or a test dir
        rel = str(path.relative_to(top))
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            content: Any = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        else:
            content = None
        group = groups.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) else None
        xattrs = (
            {}
            if stat.S_ISLNK(st.st_mode)
            else {name: os.getxattr(path, name) for name in os.listxattr(path) if name.startswith("user.")}
        )
        out[rel] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size if not stat.S_ISDIR(st.st_mode) else None,
            st.st_mtime_ns if not stat.S_ISLNK(st.st_mode) else None,
            st.st_rdev,
            content,
            group,
            sorted(xattrs.items()),
        )
    return out


def extracted(store: Store, name: str, dest: Path) -> Path:
    image = store.image(name)
    dest.mkdir()
    for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=True):
        with open(store.blob_path(layer.digest), "rb") as blob:
            extract_layer(blob, layer.media_type, dest, diff_id)
    return dest


def test_lazy_pull_fetches_metadata_only(published: Published, tmp_path: Path) -> None:
    root = tmp_path / "client"
    image = pull_lazily(root, published.ref)
    store = Store(root)
    assert not store.is_complete(image)
    assert image.source == f"{published.registry.address}/test/rich"
    blobs = {p.name for p in store.blobs.iterdir()}
    assert blobs.isdisjoint(layer.digest.hex for layer in image.manifest.layers)
    assert len(blobs) == 2 + len(image.manifest.layers)  # manifest, config, one TOC per layer
    assert image.descriptor.digest == published.image.descriptor.digest  # the image is unchanged
    assert published.ref.rsplit(":", 1)[0] in run_cli(root, "images").stdout


def test_lazy_pull_indexes_each_toc_so_a_mount_parses_no_json(published: Published, tmp_path: Path) -> None:
    root = tmp_path / "client"
    image = pull_lazily(root, published.ref)
    store = Store(root)
    for layer in image.manifest.layers:
        found = position_from_annotations(layer.annotations, layer.size)
        assert found is not None and found[1] is not None
        digest, position = found[0], found[1]
        indexed = load_index(index_path(store.root, digest), digest, position.frames_end)
        assert indexed is not None
        toc = LayerToc.parse(decompress_toc(store.read_blob(digest), position), position.frames_end)
        assert indexed.entries == toc.entries


def test_mounted_tree_equals_extracted_tree(published: Published, tmp_path: Path, mount: Mounter) -> None:
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    point = mount(root, published.ref)
    expected = describe(extracted(Store(published.publisher_root), "rich:1", tmp_path / "eager"))
    seen = describe(point)
    assert seen.keys() == expected.keys()
    for path in expected:
        assert seen[path] == expected[path], path
    assert (point / "etc/small.txt").read_text() == "second version\n"
    assert not (point / "gone").exists() and sorted(os.listdir(point / "opaque")) == ["new"]
    assert (point / "data/big.bin").stat().st_ino == (point / "data/big-link").stat().st_ino
    assert (point / "data/big.bin").stat().st_nlink == 2
    assert os.getxattr(point / "data/tagged", "user.origin") == b"lazyctr"
    with pytest.raises(OSError):
        (point / "etc/new").write_text("read-only")
    run_cli(root, "umount", str(point))
    assert not is_mounted(point)


def test_reads_fetch_only_what_is_read(published: Published, tmp_path: Path, mount: Mounter) -> None:
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    point = mount(root, published.ref)
    os.listdir(point / "data")  # metadata comes from the TOCs: nothing is fetched
    assert stats(root, point)["bytes_fetched"] == 0
    assert (point / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    after_one = stats(root, point)
    assert after_one["pieces_fetched"] == 1 and after_one["requests"] == 1
    assert 0 < after_one["bytes_fetched"] < 4096
    assert (point / "data/big.bin").read_bytes() == BIG
    after_big = stats(root, point)
    assert after_big["pieces_fetched"] == 1 + 6
    assert after_big["requests"] < 1 + 6  # six chunks, coalesced into fewer requests
    assert (point / "data/sparse.bin").read_bytes() == bytes(1 << 20) + b"tail"  # holes are not fetched
    assert stats(root, point)["pieces_fetched"] == 1 + 6 + 1
    cached = {p.name for p in (root / "chunks").rglob("*") if p.is_file()}
    assert hashlib.sha256(b"#!/bin/sh\necho tool\n").hexdigest() in cached


def test_concurrent_readers_cause_one_fetch(published: Published, tmp_path: Path, mount: Mounter) -> None:
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    point = mount(root, published.ref)
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        fd = os.open(point / "data/big.bin", os.O_RDONLY)
        try:
            results.append(b"".join(iter(lambda: os.read(fd, 1 << 16), b"")))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [BIG] * 8
    assert stats(root, point)["pieces_fetched"] == 6


def test_a_file_in_two_images_is_fetched_once(published: Published, tmp_path: Path, mount: Mounter) -> None:
    shared = b"the same bytes in two images\n" * 100
    other_tar = make_tar(tmp_path / "other.tar", [(info("shared.txt"), shared)])
    run_cli(published.publisher_root, "import", str(other_tar), "other:1")
    other_ref = f"{published.registry.address}/test/other:1"
    run_cli(published.publisher_root, "push", "other:1", other_ref)
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    pull_lazily(root, other_ref)
    first, second = mount(root, published.ref), mount(root, other_ref)
    assert (first / "shared.txt").read_bytes() == (second / "shared.txt").read_bytes()
    assert stats(root, first)["pieces_fetched"] == 1
    second_stats = stats(root, second)
    assert second_stats["bytes_fetched"] == 0 and second_stats["cache_hits"] >= 1


def test_a_local_image_mounts_from_its_blobs(published: Published, tmp_path: Path, mount: Mounter) -> None:
    point = mount(published.publisher_root, "rich:1")
    assert (point / "data/big.bin").read_bytes() == BIG
    assert stats(published.publisher_root, point)["pieces_fetched"] == 6


def test_umount_of_a_busy_mount_detaches_it(published: Published, tmp_path: Path, mount: Mounter) -> None:
    point = mount(published.publisher_root, "rich:1")
    with open(point / "data/big.bin", "rb") as busy:
        run_cli(published.publisher_root, "umount", str(point))
        assert not is_mounted(point)
        assert busy.read() == BIG  # the open file keeps working until closed


def test_mount_bad_input(published: Published, tmp_path: Path, mount: Mounter) -> None:
    root = published.publisher_root
    point = tmp_path / "mnt"
    point.mkdir()
    cases = [
        (("mount", "rich:1", str(tmp_path / "missing")), "not a directory"),
        (("mount", "nope:1", str(point)), "image not known"),
        (("mount", "rich:1"), "expected IMAGE DIR"),
        (("mount", "--stats", str(point)), "not a lazyfs mount"),
        (("umount", str(point)), "not mounted"),
    ]
    for args, message in cases:
        proc = run_cli(root, *args, ok=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        assert message in proc.stderr, (args, proc.stderr)
    point = mount(root, "rich:1")
    proc = run_cli(root, "mount", "rich:1", str(point), ok=False)
    assert proc.returncode == 1 and "already mounted" in proc.stderr
