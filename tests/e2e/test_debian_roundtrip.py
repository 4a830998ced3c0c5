"""A real Debian root file system through the layer codec and the store, compared with GNU tar.

debootstrap makes a bookworm minbase tarball (~7000 entries: setuid programs, hard links, device
nodes, hundreds of symlinks). It goes tar -> our zstd:chunked blob -> tar, into the store and out
again through `lazyctr cat`, and through our extractor; every path must come out as GNU tar makes
it from the original.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.rootfs import debian_tarball
from storage.digest import Digest
from storage.extract import extract_layer
from storage.layer_writer import WrittenLayer, write_chunked_layer
from storage.oci import MEDIA_LAYER_ZSTD
from storage.store import Store
from storage.tree import ImageTree
from tests.conftest import CliRunner, require_tools
from tests.snapshots import Snapshot, assert_same_tree, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

BLOCK = 1 << 20
# Files `lazyctr cat` must read through the real command line, besides a random sample.
CLI_PATHS = ("/usr/bin/dpkg", "/etc/os-release")
CLI_SAMPLE = 16


def gnu_extract(archive: Path, dest: Path, *options: str) -> Path:
    dest.mkdir()
    subprocess.run(
        [
            "tar", *options, "--extract", f"--file={archive}", f"--directory={dest}",
            "--same-owner", "--numeric-owner", "--same-permissions",
            "--xattrs", "--xattrs-include=*",  # without an include pattern GNU tar restores only user.*
        ],
        check=True,
    )  # fmt: skip
    return dest


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def debian_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("debootstrap", "zstd", "tar")
    path = tmp_path_factory.mktemp("debian") / "debian.tar"
    debian_tarball(path)
    return path


@dataclass
class Blob:
    path: Path
    written: WrittenLayer


@pytest.fixture(scope="module")
def blob(debian_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Blob:
    path = tmp_path_factory.mktemp("blob") / "layer.tar.zst"
    with open(path, "wb") as out:
        written = write_chunked_layer(debian_tar, out)
    return Blob(path, written)


@pytest.fixture(scope="module")
def original(debian_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """What GNU tar extracts from the debootstrap tarball: the reference for every comparison."""
    return snapshot(gnu_extract(debian_tar, tmp_path_factory.mktemp("gnu") / "original"))


@pytest.fixture(scope="module")
def tar_files(debian_tar: Path) -> dict[str, str]:
    """sha256 of every regular file of the tar (hard links included), by absolute path."""
    out: dict[str, str] = {}
    with tarfile.open(debian_tar) as tar:
        for member in tar:
            if member.isreg() or member.islnk():
                source = tar.extractfile(member)  # a hard link reads its target
                assert source is not None
                out[abspath(member.name)] = hashlib.sha256(source.read()).hexdigest()
    return out


# -- tests ---------------------------------------------------------------------------------------


def test_the_rootfs_has_what_the_comparisons_are_about(original: Snapshot) -> None:
    kinds = [meta.kind for meta in original.entries.values()]
    assert len(kinds) > 5000
    assert kinds.count("symlink") > 500 and kinds.count("char") >= 5
    assert any(meta.mode & stat.S_ISUID for meta in original.entries.values())
    assert any(meta.mode & stat.S_ISGID for meta in original.entries.values())
    assert original.links, "no hard links in the rootfs"
    assert original.entries["/etc/os-release"].link == "../usr/lib/os-release"
    assert original.entries["/usr/bin/passwd"].mode & stat.S_ISUID


def test_blob_decompresses_to_the_tar_byte_for_byte(debian_tar: Path, blob: Blob) -> None:
    proc = subprocess.Popen(["zstd", "-dc", str(blob.path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    offset = 0
    with proc.stdout, open(debian_tar, "rb") as tar:
        while True:
            want, got = tar.read(BLOCK), proc.stdout.read(BLOCK)
            if want != got:
                common = min(len(want), len(got))
                first = next((i for i in range(common) if want[i] != got[i]), common)
                proc.kill()
                pytest.fail(f"decompressed blob differs from the tar at byte {offset + first}")
            if not want:
                break
            offset += len(want)
    assert proc.wait() == 0
    assert offset == debian_tar.stat().st_size


def test_diff_id_is_the_sha256_of_the_tar(debian_tar: Path, blob: Blob) -> None:
    assert blob.written.diff_id == Digest.of_file(str(debian_tar))
    assert blob.written.digest == Digest.of_file(str(blob.path))
    assert blob.written.size == blob.path.stat().st_size


def test_gnu_tar_extracts_the_blob_as_the_original(blob: Blob, original: Snapshot, tmp_path: Path) -> None:
    extracted = gnu_extract(blob.path, tmp_path / "from-blob", "--zstd")
    assert_same_tree(original, snapshot(extracted), "GNU tar's extraction of the blob")


def test_extract_layer_gives_what_gnu_tar_gives(blob: Blob, original: Snapshot, tmp_path: Path) -> None:
    dest = tmp_path / "ours"
    with open(blob.path, "rb") as f:
        stats = extract_layer(f, MEDIA_LAYER_ZSTD, dest, diff_id=blob.written.diff_id)
    assert stats.entries == len(blob.written.toc.entries)
    assert_same_tree(original, snapshot(dest), "extract_layer of the blob")


def test_every_file_reads_back_from_the_store(
    lazyctr: CliRunner, root: Path, debian_tar: Path, tar_files: dict[str, str]
) -> None:
    lazyctr("import", str(debian_tar), "debian")

    # All files in-process, the way `lazyctr cat` reads them (a subprocess each would take minutes).
    store = Store(root)
    image = store.image("debian")
    assert image.config.diff_ids == [Digest.of_file(str(debian_tar))]
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(store.open_layer(layer)) for layer in image.manifest.layers]
        tree = ImageTree.from_tocs([reader.toc for reader in readers])
        in_image = {"/" + path for path, node in tree.walk() if node.kind == "reg"}
        assert in_image == tar_files.keys()
        for path, expected in tar_files.items():
            node = tree.lookup(path)
            assert node.kind == "reg", path
            hasher = hashlib.sha256()
            for data in readers[node.layer].iter_file(node.content):
                hasher.update(data)
            assert hasher.hexdigest() == expected, path

    # A sample through the real command line: named files, hard links, the largest, random others.
    hard_links = sorted({path for member in hard_link_members(debian_tar) for path in member})
    largest = max(tar_files, key=lambda path: tree.lookup(path).content.size)
    assert len(tree.lookup(largest).content.chunks) > 1, "no file spans several chunks"
    named = sorted({*CLI_PATHS, *hard_links, largest})
    sample = named + random.Random(0).sample(sorted(tar_files.keys() - set(named)), CLI_SAMPLE)
    with tarfile.open(debian_tar) as tar:
        for path in sample:
            # The tar member the path ends at, symlinks followed (/etc/os-release: /usr/lib/os-release).
            source = tar.extractfile("./" + tree.lookup(path).entry.path)
            assert source is not None
            assert lazyctr("cat", "debian", path).stdout == source.read(), path


def hard_link_members(tar_path: Path) -> list[tuple[str, str]]:
    """(link, target) of every hard link in the tar, as absolute paths."""
    with tarfile.open(tar_path) as tar:
        return [(abspath(m.name), abspath(m.linkname)) for m in tar if m.islnk()]


def abspath(name: str) -> str:
    return "/" + os.path.normpath(name)
