"""`lazyctr save` and `lazyctr load` (docker-archive and oci-archive) and `lazyctr history`."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import CliRunner, Result, assert_clean_error, cli_command


@pytest.fixture
def busybox(lazyctr: CliRunner, busybox_tar: Path) -> str:
    lazyctr("import", str(busybox_tar), "lzc/busybox:1")
    return "lzc/busybox:1"


def other_root(tmp_path: Path, *args: str) -> Result:
    proc = subprocess.run(cli_command(tmp_path / "other", *args), capture_output=True, timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def image_ids(result: Result) -> dict[str, str]:
    return {row["Name"]: row["Id"] for row in json.loads(result.out)}


def test_save_and_load_keep_the_images_in_both_formats(
    lazyctr: CliRunner, busybox: str, tmp_path: Path
) -> None:
    lazyctr("tag", busybox, "lzc/second:2")
    ours = image_ids(lazyctr("images", "--json"))
    for fmt in ("docker-archive", "oci-archive"):
        archive = tmp_path / f"{fmt}.tar"
        lazyctr("save", "--format", fmt, busybox, "lzc/second:2", "-o", str(archive))
        loaded = other_root(tmp_path / fmt, "load", "-i", str(archive))
        assert loaded.code == 0, loaded.stderr
        assert sorted(loaded.out.splitlines()) == [
            "Loaded image: lzc/busybox:1",
            "Loaded image: lzc/second:2",
        ]
        assert image_ids(other_root(tmp_path / fmt, "images", "--json")) == ours  # the same image IDs
    # The docker-archive's layout: what docker load reads.
    with tarfile.open(tmp_path / "docker-archive.tar") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config_name = f"{ours[busybox].split(':')[1]}.json"
        assert [(m["Config"], m["RepoTags"]) for m in manifest] == [
            (config_name, [busybox]),
            (config_name, ["lzc/second:2"]),
        ]
        config = json.loads(tar.extractfile(config_name).read())  # type: ignore[union-attr]
        [layer] = manifest[0]["Layers"]
        digest = hashlib.sha256(tar.extractfile(layer).read()).hexdigest()  # type: ignore[union-attr]
        assert config["rootfs"]["diff_ids"] == [f"sha256:{digest}"] and layer == f"{digest}/layer.tar"
        assert tar.getnames().count(layer) == 1  # a layer two images share is there once
        repositories = json.loads(tar.extractfile("repositories").read())  # type: ignore[union-attr]
        assert repositories == {"lzc/busybox": {"1": digest}, "lzc/second": {"2": digest}}


def rewritten(source: Path, target: Path, drop: str = "", corrupt: str = "") -> Path:
    """`source` without the members whose names end in `drop`, or with `corrupt`'s bytes changed."""
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for member in tar:
            if drop and member.name.endswith(drop):
                continue
            data = tar.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if data is not None and corrupt and member.name.endswith(corrupt):
                middle = len(data) // 2  # inside busybox's bytes: the tar still reads, its digest differs
                data = (
                    data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]
                )
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    return target


def largest_member(archive: Path) -> str:
    with tarfile.open(archive) as tar:
        return max(tar.getmembers(), key=lambda member: member.size).name


def test_bad_archives_are_refused_and_store_nothing(lazyctr: CliRunner, busybox: str, tmp_path: Path) -> None:
    docker, oci = tmp_path / "docker.tar", tmp_path / "oci.tar"
    lazyctr("save", busybox, "-o", str(docker))
    lazyctr("save", "--format", "oci-archive", busybox, "-o", str(oci))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(docker.read_bytes()[: docker.stat().st_size // 2])
    (tmp_path / "text.tar").write_text("not a tar\n")
    cases = [
        (truncated, "not a readable tar archive"),
        (tmp_path / "text.tar", "not a readable tar archive"),
        (
            rewritten(docker, tmp_path / "no-layer.tar", drop="layer.tar"),
            "layer.tar is missing from the archive",
        ),
        (rewritten(docker, tmp_path / "bad-layer.tar", corrupt="layer.tar"), "diff_id mismatch"),
        (rewritten(docker, tmp_path / "no-manifest.tar", drop="manifest.json"), "neither a docker-archive"),
        (
            rewritten(
                oci,
                tmp_path / "no-blob.tar",
                drop=largest_member(oci),  # the layer blob
            ),
            "is missing from the archive",
        ),
        (tmp_path / "nope.tar", "no such file"),
    ]
    for archive, fragment in cases:
        assert_clean_error(other_root(tmp_path, "load", "-i", str(archive)), fragment)
    assert json.loads(other_root(tmp_path, "images", "--json").out) == []


def test_bad_saves_write_nothing(lazyctr: CliRunner, busybox: str, tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    assert_clean_error(
        lazyctr("save", busybox, "lzc-nope", "-o", str(out), ok=False), "image not known: lzc-nope"
    )
    bad_format = lazyctr("save", "--format", "zip", busybox, "-o", str(out), ok=False)
    assert bad_format.code == 2 and "'zip' is not one of" in bad_format.stderr
    assert not out.exists() and list(tmp_path.glob("*.tmp*")) == []


def test_history_lists_the_steps_newest_first(lazyctr: CliRunner, busybox: str, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "greeting").write_text("hello\n" * 1000)
    (context / "Dockerfile").write_text(f"FROM {busybox}\nENV LZC=1\nCOPY greeting /greeting\n")
    lazyctr("build", "-t", "lzc/built:1", str(context))
    rows = json.loads(lazyctr("history", "--json", "lzc/built:1").out)
    assert [(r["CreatedBy"].split()[0] if r["CreatedBy"] else "", r["EmptyLayer"]) for r in rows][:2] == [
        ("COPY", False),
        ("ENV", True),
    ]
    assert rows[0]["Size"] == 6000 and rows[1]["Size"] == 0 and rows[-1]["Size"] > 1_000_000
    assert rows[0]["Id"].startswith("sha256:") and all(r["Id"] == "<missing>" for r in rows[1:])
    table = lazyctr("history", "lzc/built:1").out.splitlines()
    assert table[0].split() == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]
    assert "6kB" in table[1] and "imported rootfs" in table[-1]
    assert_clean_error(lazyctr("history", "lzc-nope", ok=False), "image not known: lzc-nope")
