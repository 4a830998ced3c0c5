"""Interoperability with the real tools: skopeo and podman read our store, podman and ctr-remote
write zstd:chunked layers that we read, plain gzip layers are converted on import, buildah's layers
and whiteouts merge as they should, and Docker media types (containerd exports) are accepted.

Every content check compares with the source rootfs tarball byte for byte: what a tool reads from
our layers, and what we read from theirs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.conftest import CliRunner, require_tools
from tests.e2e.conftest import Containerd, ContainerTools

pytestmark = pytest.mark.privileged

REF_NAME = "org.opencontainers.image.ref.name"
LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
TOC_CHECKSUM = "io.containers.zstd-chunked.manifest-checksum"
LEGACY_FOOTER_MAGIC = b"GnUlInUx"
CTR_LANDMARK = ".no.prefetch.landmark"


# -- reading OCI layouts independently of our own code --------------------------------------------


def blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hex_digest = digest.partition(":")
    data = (layout / "blobs" / algorithm / hex_digest).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hex_digest, f"{layout}: blob {digest} is corrupt"
    return data


def layout_image(layout: Path, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifest and config of the image named `ref` in an OCI layout."""
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = [d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) == ref]
    manifest: dict[str, Any] = json.loads(blob(layout, descriptor["digest"]))
    config: dict[str, Any] = json.loads(blob(layout, manifest["config"]["digest"]))
    return manifest, config


def compressed_toc(data: bytes) -> bytes:
    """The compressed TOC of a zstd:chunked blob, found through its legacy footer (the last 48 bytes)."""
    assert data.endswith(LEGACY_FOOTER_MAGIC), "no legacy zstd:chunked footer"
    offset, length, _, _ = struct.unpack("<4Q", data[-40:-8])
    return data[offset : offset + length]


def legacy_toc(data: bytes) -> dict[str, Any]:
    toc: dict[str, Any] = json.loads(zstandard.ZstdDecompressor().decompress(compressed_toc(data)))
    return toc


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def zstd_stream(data: bytes) -> bytes:
    """The whole decompressed stream, as `zstd -d` gives it: skippable frames are skipped."""
    return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).readall()


def source_files(tar_path: Path) -> dict[str, bytes]:
    """Every regular file of a rootfs tarball, by absolute path."""
    files = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files["/" + member.name.removeprefix("./")] = extracted.read()
    assert "/bin/busybox" in files and "/etc/passwd" in files
    return files


def ctr_export(
    containerd: Containerd, image: str, layout: Path, namespace: str = Containerd.NAMESPACE
) -> Path:
    """`ctr image export` writes an OCI archive (plus docker's manifest.json); unpacked, a layout."""
    archive = layout.with_suffix(".tar")
    containerd.ctr("image", "export", str(archive), image, namespace=namespace)
    layout.mkdir()
    subprocess.run(["tar", "-C", str(layout), "-xf", str(archive)], check=True)
    return layout


def inspect(lazyctr: CliRunner, image: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(lazyctr("inspect", "--json", image).out)
    return info


def assert_every_file_reads_back(lazyctr: CliRunner, image: str, busybox_tar: Path) -> None:
    for path, data in source_files(busybox_tar).items():
        assert lazyctr("cat", image, path).stdout == data, f"{image}:{path} differs from the source"


@pytest.fixture
def busybox(lazyctr: CliRunner, busybox_tar: Path) -> dict[str, Any]:
    """busybox_tar imported as busybox:latest; its `inspect --json`."""
    lazyctr("import", str(busybox_tar), "busybox")
    return inspect(lazyctr, "busybox")


# -- 1. skopeo reads our store ---------------------------------------------------------------------


def test_skopeo_inspects_and_copies_our_store(
    container_tools: ContainerTools, busybox: dict[str, Any], root: Path, tmp_path: Path
) -> None:
    require_tools("skopeo", "unshare")
    source = f"oci:{root}/store:busybox:latest"
    (layer,) = busybox["Layers"]

    info = json.loads(container_tools.skopeo("inspect", source))
    assert info["Layers"] == [layer["Digest"]]
    assert info["Os"] == "linux" and info["Architecture"] == busybox["Architecture"]
    raw_manifest = container_tools.skopeo("inspect", "--raw", source)
    assert sha256(raw_manifest) == busybox["Digest"]
    config = json.loads(container_tools.skopeo("inspect", "--config", source))
    assert config["os"] == "linux" and config["rootfs"]["diff_ids"] == [layer["DiffID"]]

    copy = tmp_path / "copy"
    container_tools.skopeo("copy", source, f"oci:{copy}:busybox:latest")
    manifest, copied_config = layout_image(copy, "busybox:latest")
    (copied_layer,) = manifest["layers"]
    assert copied_layer["digest"] == layer["Digest"] and copied_layer["mediaType"] == LAYER_ZSTD
    assert copied_layer["annotations"][TOC_CHECKSUM] == layer["TOCDigest"]
    assert blob(copy, layer["Digest"]) == blob(root / "store", layer["Digest"])
    assert manifest["config"]["digest"] == busybox["Id"] and copied_config["os"] == "linux"


# -- 2. podman reads our image ---------------------------------------------------------------------


def test_podman_pulls_our_image_and_sees_the_same_files(
    container_tools: ContainerTools, busybox: dict[str, Any], root: Path, busybox_tar: Path
) -> None:
    require_tools("podman", "unshare")
    image_id = container_tools.podman("pull", "--quiet", f"oci:{root}/store:busybox:latest").decode().strip()
    assert "sha256:" + image_id == busybox["Id"]
    (podman_info,) = json.loads(container_tools.podman("image", "inspect", image_id))
    # podman decompressed our layer itself and found the diff_id our config records.
    assert podman_info["RootFS"]["Layers"] == [busybox["Layers"][0]["DiffID"]]

    mountpoint = Path(container_tools.podman("image", "mount", image_id).decode().strip())
    try:
        for path, data in source_files(busybox_tar).items():
            assert (mountpoint / path.lstrip("/")).read_bytes() == data, path
        assert (mountpoint / "bin/sh").readlink() == Path("/bin/busybox")
        assert (mountpoint / "tmp").stat().st_mode & 0o7777 == 0o1777
    finally:
        container_tools.podman("image", "unmount", image_id)


# -- 3. podman writes zstd:chunked, we read --------------------------------------------------------


def gnu_tar_of(tar_path: Path, tmp_path: Path) -> Path:
    """The same files re-archived by GNU tar: `./` names, and the end padded to a 10 KiB record.

    podman 4 drops that padding from its zstd:chunked stream but records the diff_id of its input,
    so the layer's `zstd -d` output no longer matches its diff_id; we must still accept it.
    """
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-C", str(rootfs), "-xf", str(tar_path)], check=True)
    out = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(out), "."], check=True)
    return out


@pytest.mark.parametrize("input_tar", ["python", "gnu"])
def test_podman_zstd_chunked_layer_is_kept_and_reads_back(
    container_tools: ContainerTools, lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path, input_tar: str
) -> None:
    require_tools("podman", "unshare", "tar")
    source = busybox_tar if input_tar == "python" else gnu_tar_of(busybox_tar, tmp_path)
    container_tools.podman("import", "--quiet", str(source), "localhost/probe:latest")
    layout = tmp_path / "podman-oci"
    container_tools.podman(
        "push", "--compression-format", "zstd:chunked", "localhost/probe:latest", f"oci:{layout}:probe"
    )
    manifest, config = layout_image(layout, "probe")
    (podman_layer,) = manifest["layers"]
    data = blob(layout, podman_layer["digest"])
    assert podman_layer["mediaType"] == LAYER_ZSTD and data.endswith(LEGACY_FOOTER_MAGIC)
    assert any(entry["type"] == "chunk" for entry in legacy_toc(data)["entries"])  # podman split busybox

    image_id = lazyctr("import", f"oci:{layout}:probe", "probe").out.strip()
    assert image_id == manifest["config"]["digest"]
    (layer,) = inspect(lazyctr, "probe")["Layers"]
    assert layer["Digest"] == podman_layer["digest"], "the layer was re-encoded instead of kept"
    assert layer["Size"] == podman_layer["size"] and layer["DiffID"] == config["rootfs"]["diff_ids"][0]
    assert layer["TOCDigest"] == podman_layer["annotations"][TOC_CHECKSUM]
    assert_every_file_reads_back(lazyctr, "probe", busybox_tar)
    listing = lazyctr("ls", "probe", "/bin/sh").out.strip()
    assert listing.startswith("l") and listing.endswith("/bin/sh -> /bin/busybox"), listing


# -- 4. ctr-remote writes zstd:chunked, we read ----------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 65536], ids=["whole-files", "64k-chunks"])
def test_ctr_remote_zstd_chunked_layer_is_kept_and_reads_back(
    containerd: Containerd,
    container_tools: ContainerTools,
    busybox: dict[str, Any],
    lazyctr: CliRunner,
    root: Path,
    busybox_tar: Path,
    tmp_path: Path,
    chunk_size: int | None,
) -> None:
    require_tools("containerd", "ctr", "ctr-remote", "skopeo", "unshare")
    gzip_archive = tmp_path / "busybox-gzip.tar"
    container_tools.skopeo(
        "copy",
        "--dest-compress-format",
        "gzip",
        f"oci:{root}/store:busybox:latest",
        f"oci-archive:{gzip_archive}:latest",
    )
    containerd.ctr("image", "import", "--no-unpack", "--base-name", "localhost/busybox", str(gzip_archive))
    tag = f"zstdchunked-{chunk_size or 'default'}"
    chunking = ["--estargz-chunk-size", str(chunk_size)] if chunk_size else []
    containerd.ctr_remote(
        "image", "convert", "--oci", "--zstdchunked", *chunking,
        "localhost/busybox:latest", f"localhost/busybox:{tag}",
    )  # fmt: skip
    layout = ctr_export(containerd, f"localhost/busybox:{tag}", tmp_path / "ctr-oci")

    manifest, config = layout_image(layout, tag)
    (ctr_layer,) = manifest["layers"]
    data = blob(layout, ctr_layer["digest"])
    assert ctr_layer["mediaType"] == LAYER_ZSTD and data.endswith(LEGACY_FOOTER_MAGIC)
    entries = legacy_toc(data)["entries"]
    assert entries[0]["name"] == CTR_LANDMARK
    assert any(e["type"] == "chunk" for e in entries) == bool(chunk_size)

    lazyctr("import", f"oci:{layout}:{tag}", "ctr")
    (layer,) = inspect(lazyctr, "ctr")["Layers"]
    assert layer["Digest"] == ctr_layer["digest"], "the layer was re-encoded instead of kept"
    assert layer["DiffID"] == config["rootfs"]["diff_ids"][0]
    assert layer["TOCDigest"] == ctr_layer["annotations"][TOC_CHECKSUM]
    assert blob(root / "store", layer["Digest"]) == data
    assert_every_file_reads_back(lazyctr, "ctr", busybox_tar)
    assert lazyctr("ls", "ctr", "/bin/sh").out.strip().endswith("/bin/sh -> /bin/busybox")


# -- 5. plain gzip layers are converted --------------------------------------------------------------


def gzip_layout_from_skopeo(tools: ContainerTools, root: Path, layout: Path) -> str:
    """Our busybox image recompressed by skopeo: the gzip stream is skopeo's decompression of ours."""
    require_tools("skopeo", "unshare")
    tools.skopeo(
        "copy", "--dest-compress-format", "gzip", f"oci:{root}/store:busybox:latest", f"oci:{layout}:busybox"
    )
    return "busybox"


def gzip_layout_from_podman(tools: ContainerTools, busybox_tar: Path, layout: Path) -> str:
    require_tools("podman", "unshare")
    tools.podman("import", "--quiet", str(busybox_tar), "localhost/gzprobe:latest")
    tools.podman("push", "--compression-format", "gzip", "localhost/gzprobe:latest", f"oci:{layout}:gzprobe")
    return "gzprobe"


@pytest.mark.parametrize("producer", ["skopeo", "podman"])
def test_gzip_layers_become_zstd_chunked_with_the_same_diff_id(
    container_tools: ContainerTools,
    busybox: dict[str, Any],
    lazyctr: CliRunner,
    root: Path,
    busybox_tar: Path,
    tmp_path: Path,
    producer: str,
) -> None:
    layout = tmp_path / "gzip-oci"
    if producer == "skopeo":
        ref = gzip_layout_from_skopeo(container_tools, root, layout)
    else:
        ref = gzip_layout_from_podman(container_tools, busybox_tar, layout)
    manifest, config = layout_image(layout, ref)
    (gzip_layer,) = manifest["layers"]
    assert gzip_layer["mediaType"] == LAYER_GZIP

    image_id = lazyctr("import", f"oci:{layout}:{ref}", "gz").out.strip()
    info = inspect(lazyctr, "gz")
    (layer,) = info["Layers"]
    assert layer["MediaType"] == LAYER_ZSTD and layer["TOCEntries"] > 0
    assert layer["Digest"] != gzip_layer["digest"]
    assert layer["DiffID"] == config["rootfs"]["diff_ids"][0]
    # The config is kept byte for byte, diff_ids and all, so the image ID does not change either.
    assert image_id == info["Id"] == manifest["config"]["digest"]
    assert blob(root / "store", image_id) == blob(layout, image_id)
    converted = blob(root / "store", layer["Digest"])
    assert layer["TOCDigest"] == sha256(compressed_toc(converted))
    assert len(legacy_toc(converted)["entries"]) >= layer["TOCEntries"]
    assert sha256(zstd_stream(converted)) == layer["DiffID"]  # a plain `zstd -d` gives the same tar
    assert_every_file_reads_back(lazyctr, "gz", busybox_tar)
    if producer == "skopeo":  # the same tar in, the same zstd:chunked blob out
        assert layer["Digest"] == busybox["Layers"][0]["Digest"]


# -- beyond one layer, and beyond OCI media types --------------------------------------------------


def ls_names(lazyctr: CliRunner, image: str, path: str) -> set[str]:
    return {line.split()[-1] for line in lazyctr("ls", image, path).out.splitlines()}


def test_buildah_layers_with_whiteouts_are_kept_and_merged(
    container_tools: ContainerTools, lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path
) -> None:
    require_tools("buildah", "unshare")

    def buildah(*args: str) -> str:
        return container_tools.run("buildah", *args).decode().strip()

    base = buildah("from", "--quiet", "scratch")
    try:
        buildah("add", "--quiet", base, str(busybox_tar), "/")  # ADD unpacks a local tarball
        buildah("commit", "--quiet", base, "localhost/layered:base")
    finally:
        buildah("rm", base)
    top = buildah("from", "--quiet", "localhost/layered:base")
    try:
        # With the vfs driver a "mount" is a plain directory, so we can change it from out here.
        rootfs = Path(buildah("mount", top))
        (rootfs / "etc/hostname").unlink()
        (rootfs / "etc/group").write_bytes(b"changed\n")
        (rootfs / "etc/motd").write_bytes(b"upper layer\n")
        shutil.rmtree(rootfs / "usr/sbin")
        (rootfs / "usr/sbin").mkdir()
        (rootfs / "usr/sbin/only").write_bytes(b"only\n")
        buildah("commit", "--quiet", top, "localhost/layered:top")
    finally:
        buildah("rm", top)
    layout = tmp_path / "layered-oci"
    buildah("push", "--compression-format", "zstd:chunked", "localhost/layered:top", f"oci:{layout}:layered")
    manifest, _ = layout_image(layout, "layered")
    digests = [layer["digest"] for layer in manifest["layers"]]
    assert len(digests) == 2
    upper_toc = legacy_toc(blob(layout, digests[1]))["entries"]
    assert any(".wh.hostname" in entry["name"] for entry in upper_toc)

    lazyctr("import", f"oci:{layout}:layered", "layered")
    assert [layer["Digest"] for layer in inspect(lazyctr, "layered")["Layers"]] == digests
    files = source_files(busybox_tar)
    assert lazyctr("cat", "layered", "/bin/busybox").stdout == files["/bin/busybox"]
    assert lazyctr("cat", "layered", "/etc/passwd").stdout == files["/etc/passwd"]
    assert lazyctr("cat", "layered", "/etc/group").stdout == b"changed\n"
    assert lazyctr("cat", "layered", "/etc/motd").stdout == b"upper layer\n"
    assert ls_names(lazyctr, "layered", "/etc") == {"group", "motd", "passwd"}
    assert ls_names(lazyctr, "layered", "/usr/sbin") == {"only"}
    gone = lazyctr("cat", "layered", "/etc/hostname", ok=False)
    assert gone.code != 0 and "no such file" in gone.stderr


def test_docker_media_types_from_a_containerd_export(
    containerd: Containerd,
    container_tools: ContainerTools,
    lazyctr: CliRunner,
    busybox_tar: Path,
    tmp_path: Path,
) -> None:
    """`docker save` archives, and containerd images made from them, have uncompressed Docker layers."""
    require_tools("containerd", "ctr", "podman", "unshare")
    container_tools.podman("import", "--quiet", str(busybox_tar), "localhost/dockerish:latest")
    archive = tmp_path / "docker-archive.tar"
    container_tools.podman(
        "save", "--quiet", "--format", "docker-archive", "-o", str(archive), "localhost/dockerish"
    )
    # A namespace of its own: in one where a gzip blob of the same tar is known, containerd reuses it.
    containerd.ctr("image", "import", "--no-unpack", str(archive), namespace="docker-archive")
    layout = ctr_export(containerd, "localhost/dockerish:latest", tmp_path / "docker-oci", "docker-archive")
    manifest, config = layout_image(layout, "latest")
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert [layer["mediaType"] for layer in manifest["layers"]] == [DOCKER_LAYER_TAR]

    lazyctr("import", f"oci:{layout}:latest", "dockerish")
    (layer,) = inspect(lazyctr, "dockerish")["Layers"]
    assert layer["MediaType"] == LAYER_ZSTD and layer["DiffID"] == config["rootfs"]["diff_ids"][0]
    assert_every_file_reads_back(lazyctr, "dockerish", busybox_tar)


# -- a committed container's image, read by the other tools ----------------------------------------


def test_a_committed_image_is_read_by_skopeo_podman_and_umoci(
    container_tools: ContainerTools, lazyctr: CliRunner, busybox: dict[str, Any], tmp_path: Path
) -> None:
    require_tools("skopeo", "podman", "umoci", "unshare")
    lazyctr("run", "--name", "c", "busybox", "sh", "-c", "echo committed > /etc/motd; rm /etc/group")
    lazyctr("commit", "c", "busybox:committed")
    lazyctr("export", "busybox:committed", f"oci:{tmp_path}/zstd:committed")
    info = json.loads(container_tools.skopeo("inspect", f"oci:{tmp_path}/zstd:committed"))
    assert len(info["Layers"]) == 2
    image_id = container_tools.podman("pull", "--quiet", f"oci:{tmp_path}/zstd:committed").decode().strip()
    mountpoint = Path(container_tools.podman("image", "mount", image_id).decode().strip())
    try:
        assert (mountpoint / "etc/motd").read_text() == "committed\n"
        assert not (mountpoint / "etc/group").exists()  # our whiteout, applied by podman
    finally:
        container_tools.podman("image", "unmount", image_id)
    lazyctr("export", "--compression", "gzip", "busybox:committed", f"oci:{tmp_path}/gzip:committed")
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path}/gzip:committed", str(tmp_path / "bundle")],
                   check=True, capture_output=True)  # fmt: skip
    assert (tmp_path / "bundle/rootfs/etc/motd").read_text() == "committed\n"
    assert not (tmp_path / "bundle/rootfs/etc/group").exists()


# -- podman and buildah push to and pull from `lazyctr serve` -------------------------------------


def test_podman_and_buildah_push_to_and_pull_from_our_registry(
    container_tools: ContainerTools, lazyctr: CliRunner, busybox: dict[str, Any], root: Path, tmp_path: Path
) -> None:
    from tests.registry.conftest import Registry

    require_tools("podman", "buildah", "unshare")
    server = Registry(tmp_path / "registry")
    try:
        image_id = (
            container_tools.podman("pull", "--quiet", f"oci:{root}/store:busybox:latest").decode().strip()
        )
        for tool, repository in (("podman", "team/by-podman"), ("buildah", "team/by-buildah")):
            target = f"{server.address}/{repository}:latest"
            container_tools.run(tool, "push", "--tls-verify=false", image_id, f"docker://{target}")
            lazyctr("pull", target)  # our client reads what they pushed
            assert lazyctr("cat", target, "/etc/passwd").out.startswith("root:x:0:0")
        container_tools.podman("rmi", "--all", "--force")
        pulled = container_tools.podman(
            "pull", "--quiet", "--tls-verify=false", f"{server.address}/team/by-podman"
        )
        (info,) = json.loads(container_tools.podman("image", "inspect", pulled.decode().strip()))
        assert info["RootFS"]["Layers"] == [busybox["Layers"][0]["DiffID"]]
    finally:
        server.stop()
