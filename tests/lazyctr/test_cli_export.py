"""`lazyctr export`: complete OCI layouts that skopeo, umoci and podman read."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import CliRunner, assert_clean_error, require_tools
from tests.tarfiles import info, make_tar

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@pytest.fixture
def rich_tar(tmp_path: Path, busybox_tar: Path) -> Path:
    """busybox plus the things a round trip must keep: hard links, setuid, odd modes, owners."""
    with tarfile.open(busybox_tar) as tar:
        members = [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar]  # type: ignore[union-attr]
    members += [
        (info("opt", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8), None),
        (info("opt/tool", mode=0o4755, uid=1000, gid=1000), b"#!/bin/sh\necho tool\n"),
        (info("opt/tool-link", tarfile.LNKTYPE, linkname="opt/tool", mode=0o4755, uid=1000, gid=1000), None),
        (info("opt/rel", tarfile.SYMTYPE, linkname="tool", mode=0o777), None),
        (info("opt/secret", mode=0o600), b"s3cr3t"),
    ]
    return make_tar(tmp_path / "rich.tar", members)


def tree_of(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a user sees of a tree: type, mode, owner, size, link target, content, hard links."""
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[int, str] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        link = os.readlink(path) if path.is_symlink() else None
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        first = inodes.setdefault(st.st_ino, rel) if stat.S_ISREG(st.st_mode) and st.st_nlink > 1 else None
        out[rel] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            link,
            content,
            first,
        )
    return out


def test_export_writes_the_stored_blobs_as_they_are(
    lazyctr: CliRunner, busybox_tar: Path, root: Path, tmp_path: Path
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    assert lazyctr("export", "busybox", f"oci:{tmp_path}/out").out.strip() == "busybox:latest"
    index = json.loads((tmp_path / "out/index.json").read_text())
    (entry,) = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "busybox:latest"
    for blob in (tmp_path / "out/blobs/sha256").iterdir():
        assert blob.read_bytes() == (root / "store/blobs/sha256" / blob.name).read_bytes()


def test_export_adds_to_an_existing_layout(lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    lazyctr("export", "busybox", f"oci:{tmp_path}/out:one")
    lazyctr("export", "busybox", f"oci:{tmp_path}/out:two")
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "one",
        "two",
    ]


@pytest.mark.privileged
def test_umoci_unpacks_a_gzip_export_identical_to_the_source(
    lazyctr: CliRunner, rich_tar: Path, tmp_path: Path
) -> None:
    require_tools("umoci", "tar")
    lazyctr("import", str(rich_tar), "rich")
    lazyctr("export", "--compression", "gzip", "rich", f"oci:{tmp_path}/out:rich")
    unpack = ["umoci", "unpack", "--image", f"{tmp_path}/out:rich", str(tmp_path / "bundle")]
    subprocess.run(unpack, check=True, capture_output=True)
    source = tmp_path / "source"
    source.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(rich_tar), "-C", str(source)], check=True)
    assert tree_of(tmp_path / "bundle/rootfs") == tree_of(source)
    # The layers changed compression, not content: the image ID (config) is the same.
    (entry,) = json.loads((tmp_path / "out/index.json").read_text())["manifests"]
    manifest = json.loads((tmp_path / "out/blobs/sha256" / entry["digest"][7:]).read_text())
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    }
    copied = json.loads((tmp_path / "out/blobs/sha256" / manifest["config"]["digest"][7:]).read_text())
    stored = json.loads(lazyctr("inspect", "--json", "rich").out)
    assert copied["rootfs"]["diff_ids"] == [layer["DiffID"] for layer in stored["Layers"]]


def test_export_needs_an_oci_destination(lazyctr: CliRunner, busybox_tar: Path) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    result = lazyctr("export", "busybox", "/tmp/somewhere", ok=False)
    assert result.code == 2 and "oci:DIR" in result.stderr and "Traceback" not in result.stderr
    assert_clean_error(lazyctr("export", "nope", "oci:/tmp/x", ok=False), "image not known")


def test_a_corrupted_blob_is_never_exported(
    lazyctr: CliRunner, busybox_tar: Path, root: Path, tmp_path: Path
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    layer = json.loads(lazyctr("inspect", "--json", "busybox").out)["Layers"][0]["Digest"]
    blob = root / "store/blobs/sha256" / layer[7:]
    data = bytearray(blob.read_bytes())
    data[5000] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert_clean_error(
        lazyctr("export", "busybox", f"oci:{tmp_path}/out", ok=False), "is corrupted in the store"
    )
    assert not (tmp_path / "out/blobs/sha256" / layer[7:]).exists()
