"""A real Debian root file system through the layer codec and the store, compared with GNU tar.

debootstrap makes a bookworm minbase tarball (~7000 entries: setuid programs, hard links, device
nodes, hundreds of symlinks). It goes tar -> our zstd:chunked blob -> tar, into the store and out
again through `lazyctr cat`, and through our extractor; every path must come out as GNU tar makes
it from the original.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import stat
import subprocess
import tarfile
from collections import defaultdict
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

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

BLOCK = 1 << 20
# Files `lazyctr cat` must read through the real command line, besides a random sample.
CLI_PATHS = ("/usr/bin/dpkg", "/etc/os-release")
CLI_SAMPLE = 16


@dataclass(frozen=True)
class Meta:
    """What a path is on disk, as far as a layer decides it (not atime, inode numbers, dir sizes)."""

    kind: str
    mode: int  # permission bits incl. setuid, setgid and sticky
    uid: int
    gid: int
    size: int | None  # of regular files and symlinks; a directory's size is the file system's business
    mtime_ns: int
    nlink: int | None  # of everything but directories
    link: str | None  # symlink target
    rdev: tuple[int, int] | None  # device numbers of char and block devices
    xattrs: tuple[tuple[str, bytes], ...]
    sha256: str | None  # contents of regular files


@dataclass
class Snapshot:
    entries: dict[str, Meta]
    links: set[frozenset[str]]  # paths sharing an inode (hard links), in groups of two or more


KINDS = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "reg",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def snapshot(root: Path) -> Snapshot:
    entries: dict[str, Meta] = {}
    inodes: dict[int, list[str]] = defaultdict(list)
    pending = [""]
    while pending:
        rel = pending.pop()
        path = os.path.join(root, rel) if rel else str(root)
        st = os.lstat(path)
        kind = KINDS[stat.S_IFMT(st.st_mode)]
        digest = None
        if kind == "reg":
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        xattrs = tuple(
            sorted(
                (name, os.getxattr(path, name, follow_symlinks=False))
                for name in os.listxattr(path, follow_symlinks=False)
            )
        )
        entries["/" + rel] = Meta(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind in ("reg", "symlink") else None,
            mtime_ns=st.st_mtime_ns,
            nlink=None if kind == "dir" else st.st_nlink,
            link=os.readlink(path) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("char", "block") else None,
            xattrs=xattrs,
            sha256=digest,
        )
        if kind == "dir":
            pending.extend(os.path.join(rel, name) for name in os.listdir(path))
        else:
            inodes[st.st_ino].append("/" + rel)
    return Snapshot(entries, {frozenset(paths) for paths in inodes.values() if len(paths) > 1})


def assert_same_tree(expected: Snapshot, found: Snapshot, what: str) -> None:
    problems: list[str] = []
    missing = sorted(expected.entries.keys() - found.entries.keys())
    extra = sorted(found.entries.keys() - expected.entries.keys())
    if missing:
        problems.append(f"{len(missing)} paths missing, e.g. {missing[:10]}")
    if extra:
        problems.append(f"{len(extra)} unexpected paths, e.g. {extra[:10]}")
    differing: dict[str, list[str]] = defaultdict(list)  # by field, so 900 paths make one line
    for path in sorted(expected.entries.keys() & found.entries.keys()):
        want, got = expected.entries[path], found.entries[path]
        for field in dataclasses.fields(Meta):
            a, b = getattr(want, field.name), getattr(got, field.name)
            if a != b:
                differing[field.name].append(f"{path}: expected {a!r}, found {b!r}")
    for name, paths in differing.items():
        shown = "; ".join(paths[:5])
        problems.append(f"{name} differs on {len(paths)} paths, e.g. {shown}")
    if expected.links != found.links:
        problems.append(
            f"hard-link groups differ: expected {sorted(map(sorted, expected.links))}, "
            f"found {sorted(map(sorted, found.links))}"
        )
    if problems:
        shown = "\n  ".join(problems)
        pytest.fail(f"{what} differs from GNU tar's extraction of the original:\n  {shown}")


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
