"""OCI layouts whose descriptors and diff_ids name sha512 digests (`blobs/sha512/...`), as a sha512
producer writes them: imported (gzip layers converted, zstd:chunked ones kept under their sha512
digest) and exported again with the digests they have; a wrong sha512 diff_id or an algorithm
nobody registered is one clear error line."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from storage.digest import Digest
from storage.store import Store
from tests.conftest import CliRunner, assert_clean_error


def as_sha512(layout: Path, diff_id_algorithm: str = "sha512", wrong_diff_ids: bool = False) -> None:
    """Re-describe every blob of the layout's one image with sha512 and its diff_ids with
    `diff_id_algorithm` (of a slightly different tar, if `wrong_diff_ids`)."""

    def put(data: bytes) -> str:
        digest = Digest.of(data, "sha512")
        (layout / "blobs" / "sha512").mkdir(exist_ok=True)
        (layout / "blobs" / "sha512" / digest.hex).write_bytes(data)
        return digest

    def get(digest: str) -> bytes:
        algorithm, _, hex_digest = digest.partition(":")
        return (layout / "blobs" / algorithm / hex_digest).read_bytes()

    index = json.loads((layout / "index.json").read_bytes())
    manifest = json.loads(get(index["manifests"][0]["digest"]))
    config = json.loads(get(manifest["config"]["digest"]))
    tars = []
    for layer in manifest["layers"]:
        blob = get(layer["digest"])
        tars.append(gzip.decompress(blob) if layer["mediaType"].endswith("gzip") else None)
        layer["digest"] = put(blob)
    if diff_id_algorithm != "sha256":
        config["rootfs"]["diff_ids"] = [
            f"{diff_id_algorithm}:{hashlib.new(diff_id_algorithm, tar + wrong_diff_ids * b'x').hexdigest()}"
            for tar in tars
            if tar
        ]
    config_data = json.dumps(config).encode()
    manifest["config"].update(digest=put(config_data), size=len(config_data))
    manifest_data = json.dumps(manifest).encode()
    index["manifests"][0].update(digest=put(manifest_data), size=len(manifest_data))
    (layout / "index.json").write_text(json.dumps(index))
    for stale in (layout / "blobs" / "sha256").iterdir():
        stale.unlink()


@pytest.mark.parametrize("compression", ["gzip", "zstd:chunked"])
def test_a_sha512_layout_imports_and_exports(
    lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path, root: Path, compression: str
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    layout = tmp_path / "layout"
    lazyctr("export", "--compression", compression, "busybox", f"oci:{layout}:bb")
    as_sha512(layout, "sha512" if compression == "gzip" else "sha256")
    lazyctr("import", f"oci:{layout}:bb", "again")
    assert lazyctr("cat", "again", "/etc/hostname").out == "lazyctr\n"
    image = Store(root).image("again")
    # A zstd:chunked layer is kept as it is, under its sha512 digest; a gzip one is converted.
    assert image.manifest.layers[0].digest.algorithm == (
        "sha512" if compression == "zstd:chunked" else "sha256"
    )
    assert image.config.diff_ids[0].algorithm == ("sha512" if compression == "gzip" else "sha256")

    out = tmp_path / "out"
    lazyctr("export", "again", f"oci:{out}:bb")
    if compression == "zstd:chunked":
        assert any((out / "blobs" / "sha512").iterdir())
    lazyctr("import", f"oci:{out}:bb", "third")
    assert lazyctr("cat", "third", "/etc/hostname").out == "lazyctr\n"


def test_a_wrong_sha512_diff_id_is_one_error_line(
    lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    layout = tmp_path / "layout"
    lazyctr("export", "--compression", "gzip", "busybox", f"oci:{layout}:bb")
    as_sha512(layout, "sha384")  # a diff_id of an algorithm nobody registered
    assert_clean_error(lazyctr("import", f"oci:{layout}:bb", "bad", ok=False), "sha384")

    lazyctr("export", "--compression", "gzip", "busybox", f"oci:{tmp_path / 'second'}:bb")
    as_sha512(tmp_path / "second", wrong_diff_ids=True)
    assert_clean_error(
        lazyctr("import", f"oci:{tmp_path / 'second'}:bb", "bad", ok=False), "diff_id mismatch"
    )
    assert [row["Name"] for row in json.loads(lazyctr("images", "--json").out)] == ["busybox:latest"]
