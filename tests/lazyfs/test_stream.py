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


def test_reading_every_file_in_order_streams_the_layer(tmp_path: Path, mount: Mounter) -> None:
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
        cached = sorted(FILES)[1::3]
        for name in reversed(cached):  # backwards: no stream, and then gaps in the stream below
            assert (point / name).read_bytes() == FILES[name], name
        for name in sorted(FILES):  # blob order: the files were written sorted
            assert (point / name).read_bytes() == FILES[name], name
        stats = json.loads(run_cli(root, "mount", "--stats", str(point)).stdout)
    finally:
        proxy.stop()
        registry.stop()
    assert stats["verification_failures"] == 0 and stats["fetch_errors"] == 0
    assert stats["pieces_fetched"] == len(FILES)  # each file one piece, each fetched once
    assert stats["requests"] < len(cached) + (len(FILES) - len(cached)) // 4  # streamed, not file by file
    assert Store(root).is_complete(Store(root).image(ref)) is False
