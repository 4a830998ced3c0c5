"""A reader that goes through a whole layer in order gets it streamed: few requests, every byte
verified, whatever sizes the network delivers the stream in."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from storage.store import Store
from tests.lazyfs.conftest import Mounter, pull_lazily, run_cli
from tests.lazyfs.test_faults import Proxy
from tests.registry.conftest import Registry
from tests.tarfiles import info, make_tar

pytestmark = pytest.mark.privileged

FILES = {f"data/{n:03d}.bin": os.urandom(200_000 + n) for n in range(160)}  # ~32 MB, odd sizes


def read_in_order_after(tmp_path: Path, mount: Mounter, first: list[str]) -> tuple[dict[str, int], int]:
    """Push FILES as one layer, mount it lazily through a trickling proxy, read the files `first`
    (in that order), then every file in blob order; the mount's statistics and the layer's size."""
    tar = make_tar(
        tmp_path / "many.tar",
        [(info("data", tarfile.DIRTYPE), None), *((info(k), v) for k, v in FILES.items())],
    )
    publisher = tmp_path / "publisher"
    run_cli(publisher, "import", str(tar), "many:1")
    registry = Registry(tmp_path / "registry")
    proxy = Proxy(registry.address)
    proxy.trickle = 5000  # the stream arrives in small pieces, gaps between pieces straddle them
    try:
        run_cli(publisher, "push", "many:1", f"{registry.address}/test/many:1")
        ref = f"{proxy.address}/test/many:1"
        root = tmp_path / "client"
        pull_lazily(root, ref)
        point = mount(root, ref)
        for name in first:
            assert (point / name).read_bytes() == FILES[name], name
        for name in sorted(FILES):  # blob order: the files were written sorted
            assert (point / name).read_bytes() == FILES[name], name
        stats = json.loads(run_cli(root, "mount", "--stats", str(point)).stdout)
    finally:
        proxy.stop()
        registry.stop()
    assert stats["verification_failures"] == 0 and stats["fetch_errors"] == 0
    assert stats["pieces_fetched"] == len(FILES)  # each file one piece, each fetched once
    assert Store(root).is_complete(Store(root).image(ref)) is False
    (layer,) = Store(root).image(ref).manifest.layers
    return stats, layer.size


def test_reading_every_file_in_order_streams_the_layer(tmp_path: Path, mount: Mounter) -> None:
    cached = sorted(FILES)[1::3]
    # Backwards: no stream, and then gaps in the stream that the stream lets pass by.
    stats, _ = read_in_order_after(tmp_path, mount, list(reversed(cached)))
    assert stats["requests"] < len(cached) + (len(FILES) - len(cached)) // 4  # streamed, not file by file


def test_a_stream_does_not_fetch_again_what_is_cached(tmp_path: Path, mount: Mounter) -> None:
    cached = sorted(FILES)[60:100]  # 8 MB in the middle of the layer, read first
    stats, layer_size = read_in_order_after(tmp_path, mount, cached)
    assert stats["bytes_fetched"] <= layer_size  # the stream skipped the cached megabytes
    # and streamed the rest, before and after them: file by file would take 120 more requests; a
    # stream that runs into pieces being read takes a few more (timing: 41-51 seen in 24 runs)
    assert stats["requests"] < len(cached) + 20
