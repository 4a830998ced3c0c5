"""Faults: a registry that is down, slow or lies, and TOCs that lie. Reads fail with EIO in bounded
time, never with wrong bytes; cached data keeps being served; unmount always works."""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from lazyfs.host import is_mounted
from storage.digest import Digest
from storage.errors import StorageError
from storage.oci import MEDIA_CONFIG, MEDIA_EMPTY, MEDIA_LAYER_ZSTD, MEDIA_MANIFEST, PROFILE_TYPE
from storage.store import Store
from storage.zstd_chunked import (
    LEGACY_CHECKSUM_KEY,
    LEGACY_POSITION_KEY,
    TocPosition,
    legacy_footer,
    skippable_frame,
)
from tests.lazyfs.conftest import BIG, Mounter, Published, pull_lazily, run_cli
from tests.registry.conftest import Registry
from tests.registry.proxy import Proxy

pytestmark = pytest.mark.privileged


@pytest.fixture
def proxy(published: Published) -> Iterator[Proxy]:
    server = Proxy(published.registry.address)
    yield server
    server.stop()


@dataclass
class Proxied:
    """A client root with the published image pulled lazily through the proxy, and its reference there."""

    proxy: Proxy
    root: Path
    ref: str


@pytest.fixture
def proxied(published: Published, proxy: Proxy, tmp_path: Path) -> Proxied:
    ref = published.ref.replace(published.registry.address, proxy.address)
    pull_lazily(tmp_path / "client", ref)
    return Proxied(proxy, tmp_path / "client", ref)


def stats(root: Path, point: Path) -> dict[str, int]:
    return dict(json.loads(run_cli(root, "mount", "--stats", str(point)).stdout))


def read_errno(path: Path, timeout: float) -> int:
    """The errno of a read that must fail; it must not hang (its deadline is generous: `timeout`, the
    mount's, plus 10 s)."""
    started = time.monotonic()
    with pytest.raises(OSError) as caught:
        path.read_bytes()
    assert time.monotonic() - started < timeout + 10, "the read hung"
    return caught.value.errno or 0


def test_registry_down_cached_data_served_uncached_fails_in_time(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    first = mount(root, published.ref, "--timeout", "3")
    assert (first / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    published.registry.stop()
    again = mount(root, published.ref, "--timeout", "3")  # a new mount: no kernel page cache
    assert (again / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"  # from the chunk cache
    assert read_errno(again / "data/big.bin", timeout=3) == errno.EIO
    assert stats(root, again)["fetch_errors"] >= 1
    for point in (first, again):
        run_cli(root, "umount", str(point))
        assert not is_mounted(point)


def test_corrupted_bytes_are_never_returned(proxied: Proxied, mount: Mounter) -> None:
    proxy, root = proxied.proxy, proxied.root
    point = mount(root, proxied.ref, "--timeout", "5")
    proxy.corrupt = True
    assert read_errno(point / "data/big.bin", timeout=5) == errno.EIO
    assert stats(root, point)["verification_failures"] >= 1
    for cached in (p for p in (root / "chunks").rglob("*") if p.is_file()):  # only verified chunks
        assert Digest.of(cached.read_bytes()).hex == cached.name
    proxy.corrupt = False
    assert (point / "data/big.bin").read_bytes() == BIG  # a later read fetches again, and succeeds


def test_a_slow_registry_fails_reads_after_the_timeout_only(proxied: Proxied, mount: Mounter) -> None:
    proxy, root = proxied.proxy, proxied.root
    impatient = mount(root, proxied.ref, "--timeout", "0.5")
    patient = mount(root, proxied.ref, "--timeout", "20")
    proxy.answering.clear()  # nothing is answered until the impatient read has failed: it cannot wait for it
    assert read_errno(impatient / "etc/small.txt", timeout=0.5) == errno.EIO
    proxy.answering.set()
    proxy.delay = 2.0  # slower than the impatient mount waits, well within what the patient one does
    assert (patient / "data/big.bin").read_bytes() == BIG
    run_cli(root, "umount", str(impatient))


def _layer_with_toc(entries: list[dict[str, object]]) -> tuple[bytes, dict[str, str]]:
    """A zstd:chunked-shaped blob: one frame of `payload`, then a TOC of our choosing and the footer."""
    frames = zstandard.ZstdCompressor().compress(b"hello\n")
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    compressed = zstandard.ZstdCompressor().compress(toc)
    position = TocPosition(len(frames) + 8, len(compressed), len(toc))
    blob = frames + skippable_frame(compressed) + legacy_footer(position)
    return blob, {LEGACY_CHECKSUM_KEY: str(Digest.of(compressed)), LEGACY_POSITION_KEY: position.annotation()}


BAD_TOCS: dict[str, list[dict[str, object]]] = {
    "escaping path": [
        {
            "type": "reg",
            "name": "../../etc/evil",
            "size": 6,
            "offset": 0,
            "endOffset": 15,
            "digest": str(Digest.of(b"hello\n")),
        }
    ],
    "duplicate entry": [{"type": "dir", "name": "./a"}, {"type": "dir", "name": "./a"}],
    "chunk outside the blob": [
        {
            "type": "reg",
            "name": "./f",
            "size": 6,
            "offset": 1 << 30,
            "endOffset": (1 << 30) + 15,
            "digest": str(Digest.of(b"hello\n")),
        }
    ],
    "absurd size": [
        {
            "type": "reg",
            "name": "./f",
            "size": 1 << 50,
            "offset": 0,
            "endOffset": 15,
            "digest": str(Digest.of(b"hello\n")),
        }
    ],
}


@pytest.mark.parametrize("case", BAD_TOCS)
def test_a_lying_toc_is_rejected_at_pull_time(case: str, published: Published, tmp_path: Path) -> None:
    registry = published.registry
    blob, annotations = _layer_with_toc(BAD_TOCS[case])
    layer_digest = registry.push_blob("bad/toc", blob)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(Digest.of(b"x"))]},
        }
    ).encode()
    config_digest = registry.push_blob("bad/toc", config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [
            {
                "mediaType": MEDIA_LAYER_ZSTD,
                "digest": layer_digest,
                "size": len(blob),
                "annotations": annotations,
            }
        ],
    }
    assert registry.push_manifest("bad/toc", "1", manifest).status == 201
    manifest_bytes = json.dumps(manifest).encode()
    subject = Digest.of(manifest_bytes)
    _push_profile(
        registry, "bad/toc", subject, len(manifest_bytes)
    )  # fetched alongside the TOCs: it must not be kept
    root = tmp_path / "client"
    with pytest.raises(StorageError) as caught:
        pull_lazily(root, f"{registry.address}/bad/toc:1")
    assert "TOC" in str(caught.value) or "escapes" in str(caught.value), caught.value
    assert Store(root).names() == []
    assert Store(root).referrers(subject) == []


def _push_profile(registry: Registry, name: str, subject: Digest, size: int) -> None:
    """An access profile (an OCI artifact) referring to the manifest `subject` of `name`."""
    empty, profile = b"{}", json.dumps([]).encode()
    artifact = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": PROFILE_TYPE,
        "config": {"mediaType": MEDIA_EMPTY, "digest": registry.push_blob(name, empty), "size": len(empty)},
        "layers": [
            {"mediaType": PROFILE_TYPE, "digest": registry.push_blob(name, profile), "size": len(profile)}
        ],
        "subject": {"mediaType": MEDIA_MANIFEST, "digest": str(subject), "size": size},
    }
    data = json.dumps(artifact).encode()
    assert registry.push_manifest(name, str(Digest.of(data)), data).status == 201


def test_pulls_through_a_registry_that_trickles_its_answers(
    published: Published, proxy: Proxy, tmp_path: Path, mount: Mounter
) -> None:
    # Answers arrive in pieces of 100 bytes, 2 ms apart: the manifest (over 1 KB) never comes in
    # one read, nor do the TOCs.
    proxy.trickle, proxy.pause = 100, 0.002
    ref = published.ref.replace(published.registry.address, proxy.address)
    root = tmp_path / "lazy"
    run_cli(root, "pull", ref)
    point = mount(root, ref)
    assert (point / "etc/small.txt").read_text() == "second version\n"
