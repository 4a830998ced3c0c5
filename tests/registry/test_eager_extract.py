"""An eager pull extracts each layer into `layers/` while it downloads it: the trees are the ones `run`
extracts from the stored blobs, and a blob that does not check out, or a pull cut short, leaves no
image named and no layer visible."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.transfer import pull_image, push_image
from storage.importer import add_layer, import_tarball
from storage.layers import LAYERS_DIR, LayerCache
from storage.reference import registry_ref
from storage.store import Image, Store
from tests.conftest import CliRunner, assert_clean_error, cli_command
from tests.registry.conftest import Registry
from tests.registry.proxy import Proxy
from tests.snapshots import assert_same_tree, snapshot

pytestmark = pytest.mark.privileged  # the extracted layers are overlayfs's (whiteouts are devices)

BIG = 6 << 20  # a file of the top layer, so that a slow download of it can be cut short


def top_layer_tar(path: Path) -> Path:
    """A layer over busybox: a big file, a replaced file and an opaque directory (a whiteout device's
    time is when it was made, so a file's whiteout would not compare)."""
    with tarfile.open(path, "w") as tar:
        for name in ("etc", "tmp", "tmp/x"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
        for name, data in [
            ("big.bin", os.urandom(BIG)),
            ("etc/motd", b"second\n"),
            ("tmp/x/.wh..wh..opq", b""),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o640, 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def published(registry: Registry, busybox_tar: Path, tmp_path: Path) -> tuple[Store, Image, str]:
    """A two-layer image pushed to our registry, from its publisher's store."""
    store = Store(tmp_path / "publisher")
    with open(busybox_tar, "rb") as f:
        base = import_tarball(store, f, "busybox")
    image = add_layer(store, base, top_layer_tar(tmp_path / "top.tar"), "app", "ADD top")
    ref = f"{registry.address}/test/app:1"
    asyncio.run(push_image(store, image, registry_ref(ref)))
    return store, image, ref


@pytest.fixture
def proxy(registry: Registry) -> Iterator[Proxy]:
    server = Proxy(registry.address)
    yield server
    server.stop()


def layer_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / LAYERS_DIR).iterdir()) if (root / LAYERS_DIR).exists() else []


def test_the_pulled_layers_are_the_trees_run_extracts(
    published: tuple[Store, Image, str], tmp_path: Path
) -> None:
    publisher, image, ref = published
    store = Store(tmp_path / "client")
    pulled = asyncio.run(pull_image(store, ref))
    assert pulled.descriptor.digest == image.descriptor.digest
    expected = [diff_id.hex for diff_id in image.config.diff_ids]
    assert layer_dirs(store.root) == sorted(expected)  # the layers are in place, and nothing else
    for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=True):
        made_by_run = snapshot(LayerCache(publisher).get(layer, diff_id))  # from the stored blob
        pulled_tree = snapshot(store.root / LAYERS_DIR / diff_id.hex)
        for tree in (made_by_run, pulled_tree):  # the top directory's time is when it was made
            del tree.entries["/"]
        assert_same_tree(made_by_run, pulled_tree, f"layer {diff_id} as pulled", "run's extraction")
    wanted = {str(d.digest) for d in [pulled.descriptor, pulled.manifest.config, *pulled.manifest.layers]}
    stored = {f"sha256:{p.name}" for p in store.blobs.iterdir()}
    assert stored == wanted  # the same store as a pull that did not extract
    assert list(store.tmp.iterdir()) == []


def test_a_corrupted_blob_names_nothing_and_leaves_no_layer(
    published: tuple[Store, Image, str], proxy: Proxy, lazyctr: CliRunner, root: Path
) -> None:
    _, _, ref = published
    proxy.corrupt_blobs = True
    failed = lazyctr("pull", "--eager", ref.replace(proxy.upstream, proxy.address), ok=False)
    assert_clean_error(failed, "does not match its digest")
    assert json.loads(lazyctr("images", "--json").out) == []
    assert layer_dirs(root) == []  # not even a staging directory


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_pull_leaves_no_partial_layer(
    sig: signal.Signals,
    published: tuple[Store, Image, str],
    proxy: Proxy,
    lazyctr: CliRunner,
    root: Path,
) -> None:
    _, image, ref = published
    proxy.trickle, proxy.pause = 64 << 10, 0.05  # the big layer takes about 5 s
    pull = subprocess.Popen(
        cli_command(root, "pull", "--eager", ref.replace(proxy.upstream, proxy.address)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # As from a terminal, even where pytest runs as a background job (SIGINT ignored, inherited).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 30
    while proxy.trickled < 2 * BIG // 5:  # well into the big layer
        assert pull.poll() is None and time.monotonic() < deadline, "the pull ended before it was cut"
        time.sleep(0.05)
    pull.send_signal(sig)
    _, stderr = pull.communicate(timeout=30)
    assert pull.returncode != 0
    assert b"Traceback" not in stderr, stderr
    assert json.loads(lazyctr("images", "--json").out) == []
    top = image.config.diff_ids[-1].hex
    assert top not in layer_dirs(root)  # never a layer that is not whole
    if sig == signal.SIGINT:  # a clean stop takes its staging directory away
        assert all(not name.startswith(".") for name in layer_dirs(root))
    lazyctr("gc")
    assert layer_dirs(root) == []  # and gc takes whatever a killed pull left
