"""How FUSE requests reach lazyfs: through /dev/fuse, or over io_uring when LAZYCTR_FUSE_URING=1
asks for it and the kernel allows it (each CPU's requests answered by threads on that CPU); the file
system is the same either way."""

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


def test_requests_come_through_dev_fuse_by_default(
    tmp_path: Path, mount: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LAZYCTR_FUSE_URING", raising=False)
    root = tmp_path / "root"
    make_image(Store(root), tmp_path)
    point = mount(root, "rich:1")
    assert read_everything(point)
    assert transport(root, point) == "/dev/fuse"


def test_asked_for_requests_come_over_io_uring_and_the_file_system_is_the_same(
    tmp_path: Path, mount: Mounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not uring.ENABLE.exists():
        pytest.skip("this kernel has no FUSE over io_uring")
    root = tmp_path / "root"
    make_image(Store(root), tmp_path)
    through_dev = read_everything(mount(root, "rich:1"))
    monkeypatch.setenv("LAZYCTR_FUSE_URING", "1")
    point = mount(root, "rich:1")
    assert read_everything(point) == through_dev  # lookups, listings, opens and reads, all answered
    assert uring.ENABLE.read_text().strip() == "Y"  # the mount turned it on
    assert transport(root, point) == "io_uring"
