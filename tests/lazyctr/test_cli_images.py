"""The image commands end to end through the real CLI: import, images, inspect, tag, rmi, gc, ls, cat."""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from tests.conftest import CliRunner, assert_clean_error
from tests.tarfiles import info, make_tar


def store_files(root: Path) -> set[Path]:
    return {p for p in (root / "store").rglob("*") if p.is_file()}


@pytest.fixture
def busybox(lazyctr: CliRunner, busybox_tar: Path) -> str:
    return lazyctr("import", str(busybox_tar), "busybox").out.strip()


def test_import_prints_the_image_id_and_lists_it(lazyctr: CliRunner, busybox: str) -> None:
    assert busybox.startswith("sha256:") and len(busybox) == 71
    listing = lazyctr("images").out.splitlines()
    assert listing[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"]
    assert listing[1].split()[:3] == ["busybox", "latest", busybox[7:19]]
    rows = json.loads(lazyctr("images", "--json").out)
    assert [(r["Name"], r["Id"]) for r in rows] == [("busybox:latest", busybox)]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "stdin"])
def test_import_compressed_and_stdin_tarballs(
    lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path, compression: str
) -> None:
    raw = busybox_tar.read_bytes()
    if compression == "stdin":
        result = lazyctr("import", "-", "bb:stdin", input=raw)
    else:
        data = gzip.compress(raw) if compression == "gzip" else zstandard.ZstdCompressor().compress(raw)
        path = tmp_path / f"rootfs.tar.{compression}"
        path.write_bytes(data)
        result = lazyctr("import", str(path), f"bb:{compression}")
    info_json = json.loads(lazyctr("inspect", "--json", result.out.strip()).out)
    assert info_json["Layers"][0]["MediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert lazyctr("cat", result.out.strip(), "/etc/passwd").out.startswith("root:x:0:0")


def test_inspect_shows_config_layers_sizes_and_toc_counts(lazyctr: CliRunner, busybox: str) -> None:
    data = json.loads(lazyctr("inspect", "--json", "busybox").out)
    assert data["Id"] == busybox and data["RepoTags"] == ["busybox:latest"]
    assert data["Os"] == "linux" and data["Config"]["Env"][0].startswith("PATH=")
    (layer,) = data["Layers"]
    assert layer["TOCEntries"] > 250 and layer["Size"] > 0 and layer["DiffID"].startswith("sha256:")
    assert layer["UncompressedFileSize"] >= Path("/bin/busybox").stat().st_size
    text = lazyctr("inspect", "busybox").out
    assert busybox in text and "entries" in text


def test_every_regular_file_cats_back_identical(lazyctr: CliRunner, busybox: str, busybox_tar: Path) -> None:
    with tarfile.open(busybox_tar) as tar:
        for member in tar:
            if member.isreg():
                source = tar.extractfile(member)
                assert source is not None
                assert lazyctr("cat", "busybox", "/" + member.name).stdout == source.read(), member.name


def test_cat_follows_symlinks_inside_the_image(lazyctr: CliRunner, busybox: str) -> None:
    assert lazyctr("cat", "busybox", "/bin/sh").stdout == Path("/bin/busybox").read_bytes()


def test_ls_lists_a_directory_a_file_and_recursively(lazyctr: CliRunner, busybox: str) -> None:
    top = lazyctr("ls", "busybox").out
    assert any(line.startswith("drwxrwxrwt") and line.endswith(" tmp") for line in top.splitlines())
    assert lazyctr("ls", "busybox", "/bin/sh").out.strip().endswith("/bin/sh -> /bin/busybox")
    assert lazyctr("ls", "busybox", "/etc/passwd").out.startswith("-rw-r--r--")
    recursive = lazyctr("ls", "-R", "busybox", "/usr").out
    assert "/usr/bin" in recursive and " -> /bin/busybox" in recursive


def test_tag_and_rmi(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    lazyctr("tag", "busybox", "mine/busybox:v1")
    names = {r["Name"] for r in json.loads(lazyctr("images", "--json").out)}
    assert names == {"busybox:latest", "mine/busybox:v1"}
    lazyctr("rmi", "busybox")
    assert {r["Name"] for r in json.loads(lazyctr("images", "--json").out)} == {"mine/busybox:v1"}
    before = store_files(root)
    assert "Untagged: mine/busybox:v1" in lazyctr("rmi", busybox[7:19]).out
    assert json.loads(lazyctr("images", "--json").out) == []
    assert len(store_files(root)) < len(before)  # the blobs were freed too
    assert not list((root / "store/blobs/sha256").iterdir())


def test_gc_keeps_named_images(lazyctr: CliRunner, busybox: str) -> None:
    assert "removed 0 blobs" in lazyctr("gc").out
    assert lazyctr("cat", "busybox", "/etc/group").out.startswith("root:x:0:")


def test_root_comes_from_the_environment(busybox_tar: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ, LAZYCTR_ROOT=str(tmp_path / "envroot"))
    subprocess.run(
        [sys.executable, "-m", "lazyctr.cli", "import", str(busybox_tar), "bb"], env=env, check=True
    )
    assert (tmp_path / "envroot/store/index.json").exists()


# -- bad input: one line on stderr, non-zero exit, nothing half-written ------------------------------


def test_unknown_image(lazyctr: CliRunner) -> None:
    for command in (["inspect", "nope"], ["cat", "nope", "/x"], ["ls", "nope"], ["rmi", "nope"]):
        assert_clean_error(lazyctr(*command, ok=False), "image not known: nope")


def test_missing_file_in_image(lazyctr: CliRunner, busybox: str) -> None:
    assert_clean_error(lazyctr("cat", "busybox", "/no/such/file", ok=False), "no such file")
    assert_clean_error(lazyctr("cat", "busybox", "/etc", ok=False), "not a regular file")


def test_invalid_image_name(lazyctr: CliRunner, busybox_tar: Path, root: Path) -> None:
    assert_clean_error(lazyctr("import", str(busybox_tar), "Bad/Name", ok=False), "invalid image name")
    assert not list((root / "store/blobs/sha256").glob("*")) if (root / "store").exists() else True


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a tarball at all" * 50, "malformed"),
        (b"\x1f\x8b\x08\x00garbage-gzip", "tarball: gzip stream is truncated"),
        (b"\x28\xb5\x2f\xfdgarbage-zstd", "tarball: corrupt zstd stream"),
        (b"", "malformed"),
    ],
)
def test_malformed_tarball_leaves_nothing_behind(
    lazyctr: CliRunner, tmp_path: Path, root: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(content)
    assert_clean_error(lazyctr("import", str(bad), "bad", ok=False), message)
    assert not list((root / "store/blobs/sha256").iterdir())
    assert not list((root / "tmp").iterdir())
    assert json.loads((root / "store/index.json").read_text())["manifests"] == []


def test_truncated_tarball(lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path, root: Path) -> None:
    cut = tmp_path / "cut.tar"
    cut.write_bytes(busybox_tar.read_bytes()[:300000])
    assert_clean_error(lazyctr("import", str(cut), "cut", ok=False), "truncated")
    assert not list((root / "store/blobs/sha256").iterdir())


def test_tar_entry_escaping_the_root(lazyctr: CliRunner, tmp_path: Path, root: Path) -> None:
    evil = make_tar(tmp_path / "evil.tar", [(info("ok"), b"fine"), (info("../../etc/evil"), b"pwned")])
    assert_clean_error(lazyctr("import", str(evil), "evil", ok=False), "escapes the root")
    assert not list((root / "store/blobs/sha256").iterdir())


def test_missing_source_file(lazyctr: CliRunner, tmp_path: Path) -> None:
    assert_clean_error(lazyctr("import", str(tmp_path / "absent.tar"), "x", ok=False), "No such file")


def test_corrupted_layer_blob_is_detected(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    data = json.loads(lazyctr("inspect", "--json", "busybox").out)
    blob = root / "store/blobs/sha256" / data["Layers"][0]["Digest"][7:]
    content = bytearray(blob.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 64] = b"\xff" * 64  # inside busybox's frames
    blob.write_bytes(bytes(content))
    result = lazyctr("cat", "busybox", "/bin/busybox", ok=False)
    assert_clean_error(result, "")
    assert "digest mismatch" in result.stderr or "does not decompress" in result.stderr


def test_truncated_layer_blob_is_detected(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    data = json.loads(lazyctr("inspect", "--json", "busybox").out)
    blob = root / "store/blobs/sha256" / data["Layers"][0]["Digest"][7:]
    blob.write_bytes(blob.read_bytes()[:-1000])
    assert_clean_error(lazyctr("cat", "busybox", "/etc/passwd", ok=False), "outside the blob")


def test_toc_digest_mismatch_is_detected(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    data = json.loads(lazyctr("inspect", "--json", "busybox").out)
    manifest_path = root / "store/blobs/sha256" / data["Digest"][7:]
    manifest = json.loads(manifest_path.read_text())
    blob = root / "store/blobs/sha256" / data["Layers"][0]["Digest"][7:]
    offset = int(
        manifest["layers"][0]["annotations"]["io.containers.zstd-chunked.manifest-position"].split(":")[0]
    )
    content = bytearray(blob.read_bytes())
    content[offset + 10] ^= 0xFF  # a TOC byte: the layer's promised TOC digest no longer matches
    blob.write_bytes(bytes(content))
    assert_clean_error(lazyctr("ls", "busybox", ok=False), "layer TOC: digest mismatch")


def test_tarball_import_needs_a_name(lazyctr: CliRunner, busybox_tar: Path) -> None:
    result = lazyctr("import", str(busybox_tar), ok=False)
    assert result.code == 2 and "needs a NAME" in result.stderr and "Traceback" not in result.stderr


# -- importing OCI layouts ------------------------------------------------------------------------


@pytest.fixture
def layout(lazyctr: CliRunner, busybox: str, tmp_path: Path) -> Path:
    lazyctr("export", "busybox", f"oci:{tmp_path}/layout:bb:1")
    return tmp_path / "layout"


def test_import_oci_layout_takes_the_ref_name(lazyctr: CliRunner, layout: Path, busybox: str) -> None:
    assert lazyctr("import", f"oci:{layout}:bb:1").out.strip() == busybox
    assert {r["Name"] for r in json.loads(lazyctr("images", "--json").out)} == {"busybox:latest", "bb:1"}
    lazyctr("import", f"oci:{layout}", "renamed:2")  # the only image of the layout
    assert lazyctr("cat", "renamed:2", "/etc/passwd").out.startswith("root:")


def test_import_oci_layout_errors(lazyctr: CliRunner, layout: Path, tmp_path: Path) -> None:
    assert_clean_error(lazyctr("import", f"oci:{layout}:nope", ok=False), "no image named 'nope'")
    assert_clean_error(lazyctr("import", f"oci:{tmp_path}/absent", ok=False), "is not an OCI image layout")
    index = json.loads((layout / "index.json").read_text())
    del index["manifests"][0]["annotations"]
    (layout / "index.json").write_text(json.dumps(index))
    assert_clean_error(lazyctr("import", f"oci:{layout}", ok=False), "give it a NAME")


def test_import_oci_layout_with_a_corrupted_blob(lazyctr: CliRunner, layout: Path, root: Path) -> None:
    lazyctr("rmi", "busybox")
    manifest_digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / manifest_digest[7:]).read_text())
    blob = layout / "blobs/sha256" / manifest["layers"][0]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0x55
    blob.write_bytes(bytes(data))
    assert_clean_error(lazyctr("import", f"oci:{layout}:bb:1", ok=False), "does not match its digest")
    assert not list((root / "store/blobs/sha256").iterdir())


def test_ls_shows_a_dangling_symlink(lazyctr: CliRunner, tmp_path: Path) -> None:
    tar = make_tar(tmp_path / "d.tar", [(info("x", tarfile.SYMTYPE, linkname="/nowhere"), None)])
    lazyctr("import", str(tar), "dangling")
    assert lazyctr("ls", "dangling", "/x").out.strip().endswith("/x -> /nowhere")


def test_import_oci_layout_with_a_wrong_layer_size(lazyctr: CliRunner, layout: Path, root: Path) -> None:
    lazyctr("rmi", "busybox")
    index = json.loads((layout / "index.json").read_text())
    old = index["manifests"][0]["digest"][7:]
    manifest = json.loads((layout / "blobs/sha256" / old).read_text())
    manifest["layers"][0]["size"] += 1000
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (layout / "index.json").write_text(json.dumps(index))
    assert_clean_error(lazyctr("import", f"oci:{layout}:bb:1", ok=False), "its descriptor says")
    assert not list((root / "store/blobs/sha256").iterdir())


def test_one_broken_image_does_not_hide_the_others(
    lazyctr: CliRunner, busybox: str, busybox_tar: Path, root: Path
) -> None:
    lazyctr("import", str(make_tar(root.parent / "other.tar", [(info("f"), b"x")])), "other:1")
    config = json.loads(lazyctr("inspect", "--json", "busybox").out)["Id"]
    (root / "store/blobs/sha256" / config[7:]).write_bytes(b"not json")  # busybox's config is gone bad
    result = lazyctr("images", "--json")
    assert [row["Name"] for row in json.loads(result.out)] == ["other:1"]
    assert "lazyctr: warning: busybox:latest:" in result.stderr
