"""Access profiles travel with the image (referrers) and are prefetched; --fill fetches the rest."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lazyfs.profile import PROFILE_TYPE, load_profile, save_profile
from storage.store import Store
from tests.lazyfs.conftest import BIG, Mounter, Published, pull_lazily, run_cli

pytestmark = pytest.mark.privileged


def stats(root: Path, point: Path) -> dict[str, int]:
    return dict(json.loads(run_cli(root, "mount", "--stats", str(point)).stdout))


def wait_for(condition: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_profile_is_pushed_pulled_and_prefetched(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    # Record: read two files through a mount of the publisher's image, keep what was read.
    publisher = Store(published.publisher_root)
    point = mount(published.publisher_root, "rich:1")
    assert (point / "bin/tool").read_bytes() and (point / "data/big.bin").read_bytes() == BIG
    from lazyfs.mount import MountState

    accesses = MountState.of(published.publisher_root, point).accesses()
    assert len(accesses) == 1 + 6
    save_profile(publisher, publisher.image("rich:1"), accesses)
    pushed = run_cli(published.publisher_root, "push", "rich:1", published.ref).stdout
    assert "referrers 1" in pushed

    root = tmp_path / "client"
    image = pull_lazily(root, published.ref)
    assert load_profile(Store(root), image) == accesses  # it came with the lazy pull
    assert len(Store(root).referrers(image.descriptor.digest, PROFILE_TYPE)) == 1
    lazy = mount(root, published.ref)
    wait_for(lambda: stats(root, lazy)["pieces_fetched"] == 7)  # prefetched as soon as it is up
    assert stats(root, lazy)["prefetched"] == 7
    assert (lazy / "data/big.bin").read_bytes() == BIG
    after = stats(root, lazy)
    assert after["prefetch_hits"] >= 6 and after["pieces_fetched"] == 7


def test_fill_fetches_the_whole_image_so_it_survives_the_registry(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    point = mount(root, published.ref, "--fill", "--timeout", "2")
    # Every piece of the merged tree: the two small.txt versions (etc/hard keeps the first), six of
    # big.bin, sparse.bin's tail, tagged, tool, opaque/new and shared.txt; hidden files are not.
    wait_for(lambda: stats(root, point)["filled"] == 13)
    assert stats(root, point)["pieces_fetched"] == 13
    published.registry.stop()
    for path in (
        "etc/small.txt",
        "etc/hard",
        "data/big.bin",
        "data/tagged",
        "bin/tool",
        "opaque/new",
        "shared.txt",
    ):
        assert (point / path).read_bytes()
    assert stats(root, point)["fetch_errors"] == 0


def test_a_lazily_pulled_image_pushes_back_with_its_new_profile(published: Published, tmp_path: Path) -> None:
    root = tmp_path / "client"
    store = Store(root)
    image = pull_lazily(root, published.ref)
    save_profile(store, image, [{"layer": str(image.manifest.layers[0].digest), "digest": str(image.id)}])
    again = run_cli(root, "push", published.ref).stdout
    assert "referrers 1" in again and "manifest " in again
    other_repo = published.ref.replace("/test/rich", "/test/copy")
    assert "mounted" in run_cli(root, "push", published.ref, other_repo).stdout  # cross-repo, no bytes
    elsewhere = run_cli(root, "push", published.ref, "127.0.0.1:1/test/rich:1", ok=False)
    assert elsewhere.returncode != 0 and "Traceback" not in elsewhere.stderr
