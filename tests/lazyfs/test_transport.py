"""How FUSE requests reach lazyfs: over io_uring where the kernel allows it (each CPU's requests
answered by threads on that CPU), else through /dev/fuse; the file system is the same either way."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lazyfs import uring
from storage.store import Store
from tests.lazyfs.conftest import Mounter, make_image, run_cli

pytestmark = pytest.mark.privileged


def transport(root: Path, point: Path) -> str:
    return str(json.loads(run_cli(root, "mount", "--stats", str(point)).stdout)["fuse_transport"])


def read_everything(point: Path) -> dict[str, bytes]:
    seen = {}
    for directory, _, files in os.walk(point):
        for name in files:
            path = Path(directory, name)
            if path.is_file() and not path.is_symlink():
                seen[str(path.relative_to(point))] = path.read_bytes()
    return seen


def test_requests_come_over_io_uring_where_the_kernel_allows_it(tmp_path: Path, mount: Mounter) -> None:
    if not uring.ENABLE.exists():
        pytest.skip("this kernel has no FUSE over io_uring")
    root = tmp_path / "root"
    make_image(Store(root), tmp_path)
    point = mount(root, "rich:1")
    assert read_everything(point)  # lookups, listings, opens and reads, all answered
    assert uring.ENABLE.read_text().strip() == "Y"  # the mount turned it on
    assert transport(root, point) == "io_uring"


def test_without_io_uring_requests_come_through_dev_fuse(
    tmp_path: Path, mount: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    make_image(Store(root), tmp_path)
    over_ring = read_everything(mount(root, "rich:1"))
    monkeypatch.setenv("LAZYCTR_FUSE_URING", "0")
    point = mount(root, "rich:1")
    assert read_everything(point) == over_ring
    assert transport(root, point) == "/dev/fuse"
