"""The stargz-snapshotter peer of benchmarks/peers/stargz.py: its daemon builds here (or says why not),
and a busybox image in our registry, converted to eStargz and zstd:chunked, is lazily pulled and run
over a shaped link with nothing left behind. Behaviour only: no speed is asserted."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.link import Link, shaped_link
from benchmarks.peers.stargz import (
    DEFAULT_CACHE,
    FORMATS,
    LOGS,
    PROFILED,
    REF_NAME,
    PeerError,
    build_snapshotter,
    measure,
    publish,
    serving,
    split_ref,
)
from tests.benchmarks.leftovers import traces
from tests.conftest import Result, assert_clean_error, require_tools, unavailable

REPO = Path(__file__).resolve().parents[2]
IMAGE = "bench/busybox:1"


def peer_module(*args: str, timeout: float = 120) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers.stargz", *args],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def leftovers() -> set[str]:
    """Mounts and directories of the peer's runs, and daemons still running from them (compared before
    and after a test: another engineer's bench may be running the peer meanwhile)."""
    found = {str(path) for path in Path("/tmp").glob("lazyctr-stargz-*") if path.name != LOGS.name}
    return found | traces(["lazyctr-stargz-"])


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("bench/busybox:1", ("10.77.0.1:5000/bench/busybox", "1")),
        ("10.77.0.1:5000/bench/busybox:1", ("10.77.0.1:5000/bench/busybox", "1")),
        ("bench/busybox", ("10.77.0.1:5000/bench/busybox", "latest")),
    ],
)
def test_split_ref(ref: str, expected: tuple[str, str]) -> None:
    assert split_ref("10.77.0.1:5000", ref) == expected


def test_split_ref_rejects_a_digest() -> None:
    with pytest.raises(PeerError, match="give a tag, not a digest"):
        split_ref("10.77.0.1:5000", "bench/busybox@sha256:" + "0" * 64)


def test_bad_command_lines_are_one_clear_line(tmp_path: Path) -> None:
    assert_clean_error(peer_module("--link", "100mb/20ms", "busybox"), "bad rate '100mb'")
    assert_clean_error(peer_module("--runs", "0", "busybox"), "--runs must be at least 1")
    assert_clean_error(peer_module("--runs", "two", "busybox"), "invalid int value: 'two'")
    assert_clean_error(peer_module("--probe", "", "busybox"), "--probe is empty")
    assert_clean_error(peer_module("--probe", "'unclosed", "busybox"), "No closing quotation")
    assert_clean_error(peer_module(str(tmp_path)), "not an OCI layout")
    assert_clean_error(peer_module(), "the following arguments are required")


def busybox_variant(busybox_tar: Path, tmp_path: Path) -> Path:
    """The busybox rootfs with one more file: another image to convert."""
    variant = tmp_path / "busybox-variant.tar"
    shutil.copyfile(busybox_tar, variant)
    with tarfile.open(variant, "a") as tar:
        data = b"a changed image\n"
        info = tarfile.TarInfo("etc/variant")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return variant


@pytest.fixture(scope="module")
def snapshotter() -> Path:
    """The daemon, built once into the repository's cache; a reason it cannot be built is a skip."""
    binary = build_snapshotter(DEFAULT_CACHE)
    if isinstance(binary, str):
        print(f"stargz snapshotter not built: {binary}")
        pytest.skip(binary)
    return binary


def test_build_snapshotter_gives_a_binary_or_a_reason(snapshotter: Path) -> None:
    assert snapshotter.is_file() and os.access(snapshotter, os.X_OK)
    assert build_snapshotter(DEFAULT_CACHE) == snapshotter  # built once: the second call finds it
    assert not list(DEFAULT_CACHE.glob(".*.partial"))


@pytest.fixture
def registry_storage(tmp_path: Path, busybox_tar: Path) -> Path:
    """Registry storage holding busybox as IMAGE, pushed by lazyctr (zstd:chunked layers, our format)."""
    storage = tmp_path / "registry"
    publish(str(busybox_tar), tmp_path / "unused-store", storage, IMAGE)
    return storage


@pytest.fixture
def served(registry_storage: Path) -> Iterator[tuple[Link, str]]:
    with shaped_link("1gbit", "2ms") as link:
        address = f"{link.server_ip}:5000"
        with serving(registry_storage, address, link):
            yield link, address


@pytest.mark.privileged
def test_measure_busybox_over_a_link(snapshotter: Path, served: tuple[Link, str], tmp_path: Path) -> None:
    require_tools("containerd", "ctr", "ctr-remote", "runc", "nsenter")
    link, address = served
    converted = tmp_path / "converted"
    before = leftovers()
    # busybox has no /etc/hosts: the peer gives one, as docker and podman do (servers listen on localhost)
    probe = ["sh", "-c", "test -x /bin/busybox && grep -q localhost /etc/hosts && echo ready"]
    result = measure(link, address, IMAGE, probe, converted=converted)
    if isinstance(result, str):
        unavailable(f"stargz peer cannot run here: {result}")
    assert isinstance(result, dict)
    assert set(result) == set(FORMATS)
    for figures in result.values():
        assert figures["pull_s"] > 0 and figures["run_s"] > 0
        assert figures["total_s"] == pytest.approx(figures["pull_s"] + figures["run_s"])
        assert figures["remote_layers"] >= 1, "no layer was mounted remotely: not a lazy pull"
        assert figures["bytes"] > 0
        assert len(figures["samples"]) == 1
        assert figures["converted"] == "now"
        assert figures["convert_s"] > 0 and figures["push_s"] > 0
    # A second call finds the converted images in the registry (tags named after the source digest).
    again = measure(link, address, f"{address}/{IMAGE}", ["true"], converted=converted)
    assert isinstance(again, dict), again
    for name, figures in again.items():
        assert figures["converted"] == "registry"
        assert figures["convert_s"] is None and figures["push_s"] is None
        assert figures["ref"] == result[name]["ref"]
    assert not leftovers() - before


def layer_files(layout: Path, fmt: str) -> list[str]:
    """The regular files, in layer order, of the one-layer image of format `fmt` in an OCI layout (its
    key: FORMAT[.RECORD]-SOURCE-TOOL)."""
    index = json.loads((layout / "index.json").read_text())
    [descriptor] = [
        m for m in index["manifests"] if m["annotations"][REF_NAME].split("-")[0].split(".")[0] == fmt
    ]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / descriptor["digest"].partition(":")[2]).read_bytes())
    [layer] = manifest["layers"]
    with tarfile.open(blobs / layer["digest"].partition(":")[2], "r:gz") as tar:
        return [member.name for member in tar.getmembers() if member.isreg()]


@pytest.mark.privileged
def test_a_record_of_our_profile_makes_a_prioritized_estargz(
    snapshotter: Path, served: tuple[Link, str], tmp_path: Path
) -> None:
    """With the files our profile read, eStargz is also converted with them first, before the landmark
    stargz prefetches up to: the like-for-like peer of our lazy start with a profile."""
    require_tools("containerd", "ctr", "ctr-remote", "runc", "nsenter")
    link, address = served
    converted = tmp_path / "converted"
    before = leftovers()
    record = ["bin/busybox", "etc/passwd"]
    result = measure(link, address, IMAGE, ["cat", "/etc/passwd"], converted=converted, record=record)
    assert isinstance(result, dict), result
    assert set(result) == {*FORMATS, PROFILED}
    assert result[PROFILED]["remote_layers"] >= 1 and result[PROFILED]["converted"] == "now"
    assert result[PROFILED]["ref"] not in {result[name]["ref"] for name in FORMATS}
    files = layer_files(converted, PROFILED)
    landmark = files.index(".prefetch.landmark")
    assert files[:landmark] == record
    assert ".no.prefetch.landmark" in layer_files(converted, "estargz")  # the plain one has none
    # Another record is another conversion: the key names the record's contents.
    again = measure(link, address, IMAGE, ["true"], converted=converted, record=["etc/passwd"])
    assert isinstance(again, dict), again
    assert again[PROFILED]["converted"] == "now" and again["estargz"]["converted"] == "registry"
    assert not leftovers() - before


@pytest.mark.privileged
def test_converted_images_are_kept_for_a_fresh_registry(
    snapshotter: Path, registry_storage: Path, busybox_tar: Path, tmp_path: Path
) -> None:
    """The next suite run has a fresh registry: the converted images come from the cache, not ctr-remote;
    a changed source image (another digest) is converted again."""
    require_tools("containerd", "ctr", "ctr-remote", "runc", "nsenter")
    converted = tmp_path / "converted"
    before = leftovers()
    runs = []
    for number in range(2):
        storage = tmp_path / f"registry-{number}"
        shutil.copytree(registry_storage, storage)  # each suite run starts from a fresh registry
        with shaped_link("1gbit", "2ms") as link:
            address = f"{link.server_ip}:5000"
            with serving(storage, address, link):
                runs.append(measure(link, address, IMAGE, ["true"], converted=converted))
    first, second = runs
    assert isinstance(first, dict) and isinstance(second, dict), runs
    for name in FORMATS:
        assert first[name]["converted"] == "now"
        assert second[name]["converted"] == "cached", second[name]
        assert second[name]["convert_s"] is None and second[name]["push_s"] > 0
        assert second[name]["ref"] == first[name]["ref"]
        assert second[name]["remote_layers"] >= 1
    # The layout is an OCI image layout that names each converted image by (source, format, tool).
    index = json.loads((converted / "index.json").read_text())
    names = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])
    assert [name.split("-")[0] for name in names] == sorted(FORMATS)
    assert (converted / "oci-layout").is_file() and not list(converted.rglob(".*.partial"))
    # Another source image: a new tag whose manifest differs (another config) is converted anew.
    storage = tmp_path / "registry-changed"
    shutil.copytree(registry_storage, storage)
    publish(
        str(busybox_variant(busybox_tar, tmp_path)), tmp_path / "unused-store", storage, "bench/busybox:2"
    )
    with shaped_link("1gbit", "2ms") as link:
        address = f"{link.server_ip}:5000"
        with serving(storage, address, link):
            changed = measure(link, address, "bench/busybox:2", ["true"], converted=converted)
    assert isinstance(changed, dict), changed
    assert {figures["converted"] for figures in changed.values()} == {"now"}
    assert len(json.loads((converted / "index.json").read_text())["manifests"]) == 2 * len(FORMATS)
    assert not leftovers() - before


@pytest.mark.privileged
def test_measure_gives_reasons_and_cleans_up(
    snapshotter: Path, served: tuple[Link, str], tmp_path: Path
) -> None:
    require_tools("containerd", "ctr", "ctr-remote", "runc", "nsenter")
    link, address = served
    converted = tmp_path / "converted"
    before = leftovers()
    missing = measure(link, address, "bench/nothing:1", ["true"], converted=converted)
    assert isinstance(missing, str) and "is not in the registry" in missing, missing
    assert "\n" not in missing
    failing = measure(link, address, IMAGE, ["false"], converted=converted)
    assert isinstance(failing, str) and "ctr run" in failing, failing
    assert "\n" not in failing
    assert not leftovers() - before


@pytest.mark.privileged
def test_an_image_the_store_does_not_know_is_one_clear_line(snapshotter: Path, tmp_path: Path) -> None:
    before = leftovers()
    result = peer_module("--root", str(tmp_path / "store"), "no/such:1")
    assert_clean_error(result, "image not known: no/such:1")
    assert not leftovers() - before
