"""The whole tree of an image seen through `lazyctr mount` after a lazy pull equals the eagerly
extracted tree (contents, modes, owners, times, links, xattrs, devices), for images from every
producer: `lazyctr import`, podman's and buildah's zstd:chunked (rolling chunks, their own TOCs,
whiteouts), ctr-remote's zstd:chunked, and a Debian image `lazyctr build` made (slow).

Each image goes the way a user's does: into a registry we serve, then `lazyctr pull --eager` in one
fresh root (the reference, extracted layer by layer) and `lazyctr pull` (lazy) plus `lazyctr mount`
in another. The lazy root must hold no layer blob before or after, and reading the tree must have
fetched exactly the pieces its tables of contents name: the bytes came through lazyfs. The pieces
are counted from the TOCs as the producers wrote them, parsed here without our TOC code.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from builder.rootfs import debian_tarball
from lazyfs.host import is_mounted
from storage.extract import extract_layer
from storage.store import Store
from tests.conftest import require_tools
from tests.e2e.conftest import Containerd, ContainerTools
from tests.e2e.test_interop import compressed_toc, ctr_export
from tests.lazyfs.conftest import base_members, run_cli
from tests.lazyfs.test_mount import describe
from tests.registry.conftest import Registry
from tests.tarfiles import info, make_tar

pytestmark = pytest.mark.privileged

Tree = dict[str, tuple[Any, ...]]  # what tests.lazyfs.test_mount.describe gives

REPO = Path(__file__).resolve().parents[2]
DEBIAN_BASE = REPO / ".cache" / "debian-minbase.tar"  # the benchmarks' cached debootstrap, made once

PYTHON_DOCKERFILE = """\
FROM debian:minbase
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3
"""


@dataclass
class Publisher:
    """A root holding the images to publish, and the registry they are pushed to."""

    root: Path
    registry: Registry


@pytest.fixture
def publisher(tmp_path: Path) -> Iterator[Publisher]:
    registry = Registry(tmp_path / "registry")
    try:
        yield Publisher(tmp_path / "publisher", registry)
    finally:
        registry.stop()


# A file capability (vfs_cap_data revision 2: cap_net_raw permitted and effective), as ping has.
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")


def rich_tar(tmp_path: Path) -> Path:
    """One layer with what busybox lacks: xattrs (a file capability too), hard links, devices, a fifo,
    setuid, owners, a hole."""
    ping = info(
        "bin/ping",
        mode=0o755,
        pax_headers={"SCHILY.xattr.security.capability": CAP_NET_RAW.decode("latin-1")},
    )
    return make_tar(tmp_path / "rich.tar", [*base_members(), (ping, b"#!/bin/sh\necho pong\n")])


def assert_has_what_matters(tree: Tree, top: Path, source: str) -> None:
    """The producer kept what the comparison is about (`tree` describes `top`), so equal trees are
    not equal by omission."""
    if source == "busybox":
        assert tree["bin/sh"][7] == "/bin/busybox" and tree["tmp"][1] == 0o1777
        return
    if source == "edge":
        assert tree["times/ns"][5] == 1700000000123456789 and tree["big/runs.bin"][4] == 20 << 20
        assert "names/caf\u00e9 \u2603.txt" in tree and tree["big/again"][8] == tree["big/runs.bin"][8]
        return
    assert tree["data/tagged"][9] == [("user.origin", b"lazyctr")]
    assert tree["data/big-link"][8] == tree["data/big.bin"][8] == "data/big-link"  # one hard-link group
    assert tree["etc/hard"][8] == tree["etc/small.txt"][8]
    assert tree["dev/null"][0] == stat.S_IFCHR and tree["dev/null"][6] == os.makedev(1, 3)
    assert tree["dev/pipe"][0] == stat.S_IFIFO
    assert tree["bin/tool"][1] == 0o4755 and tree["data"][1:4] == (0o750, 1000, 1000)
    assert tree["etc/link"][7] == "small.txt" and tree["data/sparse.bin"][4] == (1 << 20) + 4
    assert os.getxattr(top / "bin/ping", "security.capability") == CAP_NET_RAW


def edge_tar(tmp_path: Path) -> Path:
    """Names and sizes at the edges: non-ASCII and very long names, a long symlink target, times
    with nanoseconds, an empty directory, and a 20 MiB file of random runs and long zero runs."""
    long_dir = "d" * 120
    big = b"".join(os.urandom(1 << 20) + bytes(3 << 20) for _ in range(5))
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (info("names", tarfile.DIRTYPE), None),
        (info("names/caf\u00e9 \u2603.txt"), b"unicode\n"),
        (info("names/with space and 'quotes'"), b"spaces\n"),
        (info(f"names/{long_dir}", tarfile.DIRTYPE), None),
        (info(f"names/{long_dir}/{'f' * 200}"), b"a long path\n"),
        (info("names/far", tarfile.SYMTYPE, linkname="/" + "/".join(["x" * 60] * 5)), None),
        (info("names/empty-dir", tarfile.DIRTYPE, mode=0o700), None),
        (info("times", tarfile.DIRTYPE), None),
        (info("times/ns", pax_headers={"mtime": "1700000000.123456789"}), b"nanoseconds\n"),
        (info("times/old", mtime=86400), b"1970\n"),
        (info("big", tarfile.DIRTYPE), None),
        (info("big/runs.bin"), big),
        (info("big/again", tarfile.LNKTYPE, linkname="big/runs.bin"), None),
    ]
    return make_tar(tmp_path / "edge.tar", members)


def source_tar(source: str, busybox_tar: Path, tmp_path: Path) -> Path:
    if source == "busybox":
        return busybox_tar
    return rich_tar(tmp_path) if source == "rich" else edge_tar(tmp_path)


# -- the pieces an image's TOCs name, read as the producers wrote them -----------------------------


def producer_toc(blob: bytes) -> dict[str, Any]:
    """A layer's TOC through its legacy footer; podman leaves the content size out of the frame of a
    big TOC, so its length comes from the footer."""
    length = struct.unpack("<4Q", blob[-40:-8])[2]
    toc: dict[str, Any] = json.loads(
        zstandard.ZstdDecompressor().decompress(compressed_toc(blob), max_output_size=length)
    )
    return toc


def toc_pieces(blob: bytes) -> dict[str, list[str]]:
    """Per path in one layer (hard links too), the digests of the pieces its file is read in.

    A piece is a chunk with a digest of its own, or the whole file when its chunks have none;
    holes (`zeros` chunks) are never fetched.
    """
    files: dict[str, list[dict[str, Any]]] = {}
    links: dict[str, str] = {}
    last: list[dict[str, Any]] = []
    for entry in producer_toc(blob)["entries"]:
        name = entry["name"].removeprefix("./").strip("/")
        if entry["type"] == "reg":
            last = files[name] = [entry]
        elif entry["type"] == "chunk":
            last.append(entry)
        elif entry["type"] == "hardlink":
            links[name] = entry["linkName"].removeprefix("/").removeprefix("./")
    out: dict[str, list[str]] = {}
    for name, chunks in files.items():
        if not chunks[0].get("size"):
            out[name] = []
        elif all(c.get("chunkDigest") or c.get("chunkType") == "zeros" for c in chunks):
            out[name] = [c["chunkDigest"] for c in chunks if c.get("chunkType") != "zeros"]
        else:
            out[name] = [chunks[0]["digest"]]
    for name, target in links.items():
        out[name] = out.get(target, [])
    return out


def visible_pieces(store: Store, ref: str, tree: Tree) -> set[str]:
    """The digests of every piece of the non-empty regular files in `tree` (a `describe`), each
    path's file taken from the topmost layer that has it."""
    image = store.image(ref)
    by_path: dict[str, list[str]] = {}
    for layer in image.manifest.layers:  # bottom first: an upper layer's file replaces a lower one's
        by_path.update(toc_pieces(store.blob_path(layer.digest).read_bytes()))
    wanted: set[str] = set()
    for path, described in tree.items():
        kind, size = described[0], described[4]
        if kind == stat.S_IFREG and size:
            assert by_path.get(path), f"{path}: in the tree but no layer's TOC has its pieces"
            wanted.update(by_path[path])
    return wanted


# -- the flow under test ---------------------------------------------------------------------------


def layer_blobs(store: Store, ref: str) -> list[str]:
    return [str(layer.digest) for layer in store.image(ref).manifest.layers if store.has_blob(layer.digest)]


def stats(root: Path, point: Path) -> dict[str, Any]:
    return dict(json.loads(run_cli(root, "mount", "--stats", str(point)).stdout))


def extract_image(store: Store, ref: str, dest: Path) -> Path:
    """The layers extracted one on the other, whiteouts applied, as the eager driver does.

    Unlike tests.lazyfs.test_mount.extracted, without checking diff_ids: podman 4 records the
    diff_id of its padded input tar but drops the padding from the zstd:chunked stream, and every
    layer blob was checked against its digest on the eager pull already.
    """
    dest.mkdir()
    for layer in store.image(ref).manifest.layers:
        with open(store.blob_path(layer.digest), "rb") as blob:
            extract_layer(blob, layer.media_type, dest)
    return dest


@contextlib.contextmanager
def mounted(root: Path, ref: str, point: Path) -> Iterator[Path]:
    point.mkdir()
    run_cli(root, "mount", ref, str(point))
    try:
        yield point
    finally:
        if is_mounted(point):
            subprocess.run(["fusermount3", "-uz", str(point)], capture_output=True)


def stat_everything(top: Path) -> int:
    """lstat, readlink and list the xattrs of every path, reading no file: metadata only."""
    count = 0
    for path in top.rglob("*"):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            os.readlink(path)
        else:
            os.listxattr(path)
        count += 1
    return count


def links_and_xattrs(top: Path) -> dict[str, tuple[int, dict[str, bytes]]]:
    """What `describe` leaves out: link counts, and xattrs of every namespace (file capabilities)."""
    out = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        xattrs = {} if stat.S_ISLNK(st.st_mode) else {n: os.getxattr(path, n) for n in os.listxattr(path)}
        out[str(path.relative_to(top))] = (st.st_nlink, xattrs)
    return out


def assert_random_reads(tree: Tree, extracted: Path, point: Path, count: int = 64) -> None:
    """Reads of the biggest file at odd offsets and sizes (across chunk boundaries and holes) give
    the extracted bytes; with O_DIRECT they reach lazyfs as they are, not as page-cache pages."""
    path = max((p for p in tree if tree[p][0] == stat.S_IFREG), key=lambda p: tree[p][4])
    truth = (extracted / path).read_bytes()
    rng = random.Random(path)
    try:
        fd = os.open(point / path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(point / path, os.O_RDONLY)
    try:
        for _ in range(count):
            offset = rng.randrange(len(truth) + 100)
            size = rng.choice([1, 7, 4095, 4097, 65539, 1 << 20, 3 << 20])
            assert os.pread(fd, size, offset) == truth[offset : offset + size], (path, offset, size)
    finally:
        os.close(fd)


def in_seconds(tree: Tree) -> Tree:
    """`tree` with its mtimes rounded to the nearest second, halves up, as Go's Time.Round does."""
    rounded = {}
    for path, described in tree.items():
        mtime = described[5]
        second = mtime if mtime is None else (mtime + 10**9 // 2) // 10**9 * 10**9
        rounded[path] = (*described[:5], second, *described[6:])
    return rounded


def assert_same_tree(expected: Tree, seen: Tree) -> None:
    assert seen.keys() == expected.keys(), (
        f"only eager: {sorted(expected.keys() - seen.keys())[:20]}; "
        f"only lazy: {sorted(seen.keys() - expected.keys())[:20]}"
    )
    fields = ("type", "mode", "uid", "gid", "size", "mtime_ns", "rdev", "content", "link group", "xattrs")
    differences = [
        f"{path}: {name} eager {want!r} lazy {got!r}"
        for path in sorted(expected)
        for name, want, got in zip(fields, expected[path], seen[path], strict=True)
        if want != got
    ]
    assert not differences, "\n".join(differences[:40])


def assert_mount_equals_eager(
    publisher: Publisher, name: str, repository: str, tmp_path: Path, toc_seconds: bool = False
) -> tuple[dict[str, Any], Tree]:
    """Push `name`, pull it eagerly and lazily into fresh roots, compare the extracted tree with the
    mounted one; the mount's statistics once every file was read, and the tree.

    `toc_seconds`: the producer's TOC gives times in whole seconds (ctr-remote's writer, estargz,
    rounds them to the nearest second for RFC 3339) while its tar headers keep nanoseconds; a lazy
    mount knows only the TOC, so there it must show the extracted time rounded to the second.
    """
    ref = f"{publisher.registry.address}/{repository}:1"
    run_cli(publisher.root, "push", name, ref, timeout=600)

    eager_root = tmp_path / "eager"
    run_cli(eager_root, "pull", "--eager", ref, timeout=600)
    eager = Store(eager_root)
    expected = describe(extract_image(eager, ref, tmp_path / "extracted"))

    lazy_root = tmp_path / "lazy"
    run_cli(lazy_root, "pull", ref)
    lazy = Store(lazy_root)
    assert not lazy.is_complete(lazy.image(ref))
    assert layer_blobs(lazy, ref) == [], "a lazy pull fetched layer blobs"
    with mounted(lazy_root, ref, tmp_path / "mnt") as point:
        assert stat_everything(point) == len(expected)
        assert stats(lazy_root, point)["bytes_fetched"] == 0, "metadata alone fetched file contents"
        assert_random_reads(expected, tmp_path / "extracted", point)
        seen = describe(point)  # reads every regular file through lazyfs
        assert_same_tree(in_seconds(expected) if toc_seconds else expected, seen)
        assert links_and_xattrs(point) == links_and_xattrs(tmp_path / "extracted")
        after = stats(lazy_root, point)
        run_cli(lazy_root, "umount", str(point))
        assert not is_mounted(point)
    wanted = visible_pieces(eager, ref, expected)
    cached = {p.name for p in (lazy_root / "chunks").rglob("*") if p.is_file()}
    assert after["verification_failures"] == 0 and after["fetch_errors"] == 0
    assert after["pieces_fetched"] == len(wanted), (after, len(wanted))
    assert cached == {digest.removeprefix("sha256:") for digest in wanted}
    assert 0 < after["bytes_fetched"] <= sum(layer.size for layer in eager.image(ref).manifest.layers)
    assert layer_blobs(lazy, ref) == [], "reading the tree put layer blobs in the store"
    return after, expected


# -- 1. imported by lazyctr ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["busybox", "rich", "edge"])
def test_imported_by_lazyctr(publisher: Publisher, busybox_tar: Path, tmp_path: Path, source: str) -> None:
    run_cli(publisher.root, "import", str(source_tar(source, busybox_tar, tmp_path)), "imported:1")
    after, tree = assert_mount_equals_eager(publisher, "imported:1", "interop/imported", tmp_path)
    assert after["pieces_fetched"] > 1
    assert_has_what_matters(tree, tmp_path / "extracted", source)


BUSYBOX_CHANGES = """\
FROM busybox
RUN rm /etc/hostname && rm /bin/ls && mkdir /bin/ls && echo inside > /bin/ls/inside \\
 && rm -r /usr/sbin && ln -s /bin /usr/sbin && chmod 700 /root && chown 1000:1000 /etc/passwd \\
 && echo data > /etc/new && ln /etc/new /etc/new-link && mkfifo /etc/fifo
RUN rm /etc/new && echo changed >> /etc/group && rm -r /tmp && mkdir -m 1777 /tmp && touch /tmp/x
"""


def test_built_by_lazyctr_with_whiteouts(publisher: Publisher, busybox_tar: Path, tmp_path: Path) -> None:
    """Three layers from `lazyctr build`: files deleted, replaced by directories and symlinks, a hard
    link whose first name goes in the next layer, metadata-only changes."""
    run_cli(publisher.root, "import", str(busybox_tar), "busybox")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(BUSYBOX_CHANGES)
    run_cli(publisher.root, "build", "--progress", "plain", "-t", "changed:1", str(context), timeout=300)
    assert len(Store(publisher.root).image("changed:1").manifest.layers) == 3
    _, tree = assert_mount_equals_eager(publisher, "changed:1", "interop/built", tmp_path)
    assert "etc/hostname" not in tree and "etc/new" not in tree and tree["etc/new-link"][4] == 5
    assert tree["bin/ls"][0] == stat.S_IFDIR and tree["usr/sbin"][7] == "/bin"
    assert tree["root"][1] == 0o700 and tree["etc/passwd"][2:4] == (1000, 1000)
    assert tree["etc/fifo"][0] == stat.S_IFIFO
    assert [p for p in tree if p.startswith("tmp/")] == ["tmp/x"] and tree["tmp"][1] == 0o1777


# -- 2. podman's zstd:chunked ----------------------------------------------------------------------


@pytest.mark.parametrize("source", ["busybox", "rich", "edge"])
def test_podman_zstd_chunked(
    container_tools: ContainerTools, publisher: Publisher, busybox_tar: Path, tmp_path: Path, source: str
) -> None:
    require_tools("podman", "unshare")
    tar = source_tar(source, busybox_tar, tmp_path)
    container_tools.podman("import", "--quiet", str(tar), f"localhost/lazy-{source}:latest")
    layout = tmp_path / "podman-oci"
    container_tools.podman(
        "push",
        "--compression-format",
        "zstd:chunked",
        f"localhost/lazy-{source}:latest",
        f"oci:{layout}:probe",
    )
    run_cli(publisher.root, "import", f"oci:{layout}:probe", "podman:1")
    (layer,) = Store(publisher.root).image("podman:1").manifest.layers
    toc = producer_toc(Store(publisher.root).blob_path(layer.digest).read_bytes())
    assert any(entry["type"] == "chunk" for entry in toc["entries"]), "podman's rolling chunks are gone"
    _, tree = assert_mount_equals_eager(publisher, "podman:1", "interop/podman", tmp_path)
    assert_has_what_matters(tree, tmp_path / "extracted", source)


def buildah_two_layers(tools: ContainerTools, tmp_path: Path, change: Callable[[Path], None]) -> Path:
    """An OCI layout of two layers as buildah commits them in zstd:chunked: the rich tree, and what
    `change` does to a copy of it (buildah diffs the directory: whiteouts, opaque dirs, copy-ups)."""

    def buildah(*args: str) -> str:
        return tools.run("buildah", *args).decode().strip()

    base = buildah("from", "--quiet", "scratch")
    try:
        buildah("add", "--quiet", base, str(rich_tar(tmp_path)), "/")  # ADD unpacks a local tarball
        buildah("commit", "--quiet", base, "localhost/lazy-layered:base")
    finally:
        buildah("rm", base)
    top = buildah("from", "--quiet", "localhost/lazy-layered:base")
    try:
        change(Path(buildah("mount", top)))  # vfs: a plain directory, changed from out here
        buildah("commit", "--quiet", top, "localhost/lazy-layered:top")
    finally:
        buildah("rm", top)
    layout = tmp_path / "layered-oci"
    buildah("push", "--compression-format", "zstd:chunked", "localhost/lazy-layered:top", f"oci:{layout}:top")
    return layout


def delete_and_refill(rootfs: Path) -> None:
    (rootfs / "etc/small.txt").write_bytes(b"second version\n")
    shutil.rmtree(rootfs / "gone")
    shutil.rmtree(rootfs / "opaque")
    (rootfs / "opaque").mkdir()
    (rootfs / "opaque/new").write_bytes(b"only this one\n")
    (rootfs / "shared.txt").write_bytes(b"the same bytes in two images\n" * 100)


def replace_kinds(rootfs: Path) -> None:
    """Each kind replaced by another, hard links cut and made across layers, metadata-only changes."""
    (rootfs / "etc/small.txt").unlink()  # etc/hard, its hard link, stays with the old bytes
    (rootfs / "data/empty").unlink()
    (rootfs / "data/empty").mkdir()  # a file becomes a directory
    (rootfs / "data/empty/inside").write_bytes(b"was a file\n")
    shutil.rmtree(rootfs / "gone")
    (rootfs / "gone").symlink_to("opaque")  # a directory becomes a symlink
    (rootfs / "etc/link").unlink()
    (rootfs / "etc/link").write_bytes(b"was a symlink\n")  # a symlink becomes a file
    os.link(rootfs / "bin/tool", rootfs / "bin/tool-again")  # a hard link to a lower layer's file
    os.chmod(rootfs / "data", 0o700)  # metadata only
    os.chown(rootfs / "opaque/old", 2000, 3000)
    os.setxattr(rootfs / "data/tagged", "user.origin", b"changed upstairs")


@pytest.mark.parametrize("change", [delete_and_refill, replace_kinds], ids=lambda f: f.__name__)
def test_buildah_two_layers_zstd_chunked(
    container_tools: ContainerTools, publisher: Publisher, tmp_path: Path, change: Callable[[Path], None]
) -> None:
    require_tools("buildah", "unshare")
    layout = buildah_two_layers(container_tools, tmp_path, change)
    run_cli(publisher.root, "import", f"oci:{layout}:top", "layered:1")
    _, upper = Store(publisher.root).image("layered:1").manifest.layers
    upper_names = [
        e["name"] for e in producer_toc(Store(publisher.root).blob_path(upper.digest).read_bytes())["entries"]
    ]
    _, tree = assert_mount_equals_eager(publisher, "layered:1", "interop/buildah", tmp_path)
    if change is delete_and_refill:
        assert any(".wh.gone" in name for name in upper_names), upper_names
        assert "gone" not in tree and [p for p in tree if p.startswith("opaque/")] == ["opaque/new"]
        assert tree["etc/small.txt"][4] == len(b"second version\n") and "shared.txt" in tree
    else:
        assert any(".wh.small.txt" in name for name in upper_names), upper_names
        assert "etc/small.txt" not in tree and tree["etc/hard"][4] == len(b"first version\n")
        assert tree["data/empty"][0] == stat.S_IFDIR and tree["gone"][7] == "opaque"
        assert tree["etc/link"][0] == stat.S_IFREG
        # A layer cannot link to a lower layer's file: buildah stores a copy.
        assert tree["bin/tool-again"][7] == tree["bin/tool"][7]
        assert tree["data"][1] == 0o700 and tree["opaque/old"][2:4] == (2000, 3000)
        assert tree["data/tagged"][9] == [("user.origin", b"changed upstairs")]


# -- 3. ctr-remote's zstd:chunked ------------------------------------------------------------------


def ctr_remote_convert(
    containerd: Containerd,
    tools: ContainerTools,
    root: Path,
    image: str,
    base: str,
    tmp_path: Path,
    chunk_size: int | None = None,
) -> Path:
    """`image` of our store as ctr-remote converts it to zstd:chunked: an OCI layout, ref zstdchunked."""
    gzip_archive = tmp_path / "gzip-archive.tar"  # what containerd imports: a plain gzip image
    tools.skopeo(
        "copy",
        "--dest-compress-format",
        "gzip",
        f"oci:{root}/store:{image}",
        f"oci-archive:{gzip_archive}:latest",
    )
    containerd.ctr("image", "import", "--no-unpack", "--base-name", base, str(gzip_archive))
    chunking = ["--estargz-chunk-size", str(chunk_size)] if chunk_size else []
    containerd.ctr_remote(
        "image", "convert", "--oci", "--zstdchunked", *chunking, f"{base}:latest", f"{base}:zstdchunked"
    )
    return ctr_export(containerd, f"{base}:zstdchunked", tmp_path / "ctr-oci")


@pytest.mark.parametrize("chunk_size", [None, 65536], ids=["whole-files", "64k-chunks"])
@pytest.mark.parametrize("source", ["busybox", "rich", "edge"])
def test_ctr_remote_zstd_chunked(
    containerd: Containerd,
    container_tools: ContainerTools,
    publisher: Publisher,
    busybox_tar: Path,
    tmp_path: Path,
    chunk_size: int | None,
    source: str,
) -> None:
    require_tools("containerd", "ctr", "ctr-remote", "skopeo", "unshare")
    run_cli(publisher.root, "import", str(source_tar(source, busybox_tar, tmp_path)), "busybox:1")
    base = f"localhost/lazy-{source}-{chunk_size or 'default'}"
    layout = ctr_remote_convert(
        containerd, container_tools, publisher.root, "busybox:1", base, tmp_path, chunk_size
    )
    run_cli(publisher.root, "import", f"oci:{layout}:zstdchunked", "ctr:1")
    (layer,) = Store(publisher.root).image("ctr:1").manifest.layers
    entries = producer_toc(Store(publisher.root).blob_path(layer.digest).read_bytes())["entries"]
    assert entries[0]["name"] == ".no.prefetch.landmark", "not ctr-remote's layer"
    if chunk_size or source != "edge":  # ctr-remote cuts files over 4 MiB by default
        assert any(e["type"] == "chunk" for e in entries) == bool(chunk_size)
    _, tree = assert_mount_equals_eager(publisher, "ctr:1", "interop/ctr-remote", tmp_path, toc_seconds=True)
    assert_has_what_matters(tree, tmp_path / "extracted", source)


# -- 4. slow: Debian + python3, built by lazyctr, then as podman and ctr-remote rewrite it ---------


def debian_base() -> Path:
    """The benchmarks' cached debootstrap minbase tarball, made (once) if it is missing."""
    if not DEBIAN_BASE.exists():
        require_tools("debootstrap", "tar")
        DEBIAN_BASE.parent.mkdir(parents=True, exist_ok=True)
        partial = DEBIAN_BASE.with_suffix(f".{os.getpid()}.partial")
        try:
            debian_tarball(partial)  # the mirror comes from this machine's apt configuration
            partial.rename(DEBIAN_BASE)  # only a whole tarball ever gets the cached name
        finally:
            partial.unlink(missing_ok=True)
    return DEBIAN_BASE


@pytest.fixture(scope="module")
def debian_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding py:1, Debian minbase + python3 as `lazyctr build` makes it (built once)."""
    root = tmp_path_factory.mktemp("debian-python") / "root"
    run_cli(root, "import", str(debian_base()), "debian:minbase", timeout=600)
    context = root.parent / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(PYTHON_DOCKERFILE)
    out = run_cli(root, "build", "--progress", "plain", "-t", "py:1", str(context), timeout=1200)
    assert "Setting up python3" in out.stdout + out.stderr
    assert len(Store(root).image("py:1").manifest.layers) == 2
    return root


@pytest.mark.slow
def test_debian_python3_built_by_lazyctr(debian_python: Path, publisher: Publisher, tmp_path: Path) -> None:
    built = Publisher(debian_python, publisher.registry)
    after, tree = assert_mount_equals_eager(built, "py:1", "interop/debian-python", tmp_path)
    assert "usr/bin/python3" in tree and len(tree) > 5000 and after["pieces_fetched"] > 5000


@pytest.mark.slow
@pytest.mark.extended
def test_debian_python3_rewritten_by_podman(
    debian_python: Path, container_tools: ContainerTools, publisher: Publisher, tmp_path: Path
) -> None:
    """The same image as podman rewrites it in zstd:chunked: its rolling chunks over thousands of files."""
    require_tools("podman", "unshare")
    image_id = container_tools.podman("pull", "--quiet", f"oci:{debian_python}/store:py:1").decode().strip()
    layout = tmp_path / "podman-oci"
    container_tools.podman("push", "--compression-format", "zstd:chunked", image_id, f"oci:{layout}:py")
    run_cli(publisher.root, "import", f"oci:{layout}:py", "py:1", timeout=600)
    theirs = [layer.digest for layer in Store(publisher.root).image("py:1").manifest.layers]
    ours = [layer.digest for layer in Store(debian_python).image("py:1").manifest.layers]
    assert len(theirs) == 2 and not set(theirs) & set(ours), (
        "podman kept our layers instead of writing its own"
    )
    _, tree = assert_mount_equals_eager(publisher, "py:1", "interop/debian-podman", tmp_path)
    assert "usr/bin/python3" in tree


@pytest.mark.slow
@pytest.mark.extended
def test_debian_python3_converted_by_ctr_remote(
    debian_python: Path,
    containerd: Containerd,
    container_tools: ContainerTools,
    publisher: Publisher,
    tmp_path: Path,
) -> None:
    require_tools("containerd", "ctr", "ctr-remote", "skopeo", "unshare")
    layout = ctr_remote_convert(
        containerd, container_tools, debian_python, "py:1", "localhost/lazy-py", tmp_path
    )
    run_cli(publisher.root, "import", f"oci:{layout}:zstdchunked", "py:1", timeout=600)
    layers = Store(publisher.root).image("py:1").manifest.layers
    assert len(layers) == 2
    entries = producer_toc(Store(publisher.root).blob_path(layers[1].digest).read_bytes())["entries"]
    assert entries[0]["name"] == ".no.prefetch.landmark", "not ctr-remote's layer"
    _, tree = assert_mount_equals_eager(publisher, "py:1", "interop/debian-ctr", tmp_path, toc_seconds=True)
    assert "usr/bin/python3" in tree
