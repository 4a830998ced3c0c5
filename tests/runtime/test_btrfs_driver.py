"""The btrfs driver (`run --driver btrfs`): the image applied once into a subvolume, a writable snapshot
per container, destroyed when it ends; on a root that is not on btrfs, one clear line."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliRunner, assert_clean_error, cli_command, require_tools

pytestmark = pytest.mark.privileged


@pytest.fixture
def btrfs_root(tmp_path: Path) -> Iterator[Path]:
    """A --root on a btrfs file system made on a loop file in tmp_path, unmounted at the end."""
    require_tools("mkfs.btrfs", "losetup")
    disk, point = tmp_path / "btrfs.img", tmp_path / "btrfs"
    point.mkdir()
    with open(disk, "wb") as f:
        f.truncate(256 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(disk)], check=True, capture_output=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(disk)], check=True, capture_output=True, text=True
    )
    try:
        subprocess.run(["mount", "-t", "btrfs", device.stdout.strip(), str(point)], check=True)
        try:
            yield point / "root"
        finally:
            subprocess.run(["umount", str(point)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device.stdout.strip()], check=True)


def btrfs_cli(root: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cli_command(root, *args), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 or not ok, proc.stderr
    return proc


def subvolumes(point: Path) -> list[str]:
    listing = subprocess.run(
        ["btrfs", "subvolume", "list", str(point)], check=True, capture_output=True, text=True
    )
    return [line.split(" path ", 1)[1] for line in listing.stdout.splitlines()]


def test_a_container_writes_its_own_snapshot_and_the_snapshot_goes_with_it(
    btrfs_root: Path, busybox_tar: Path
) -> None:
    btrfs_cli(btrfs_root, "import", str(busybox_tar), "busybox")
    first = btrfs_cli(btrfs_root, "run", "--rm", "--driver", "btrfs", "busybox", "sh", "-c",
                      "echo one > /etc/hostname && cat /etc/hostname")  # fmt: skip
    assert first.stdout == "one\n"
    second = btrfs_cli(btrfs_root, "run", "--rm", "--driver", "btrfs", "busybox", "cat", "/etc/hostname")
    assert second.stdout == "lazyctr\n"  # the image's, untouched by the first container's write
    images = subvolumes(btrfs_root.parent)
    assert len(images) == 1 and images[0].startswith("root/btrfs/"), images  # no container's snapshot left


def test_the_image_subvolume_goes_with_the_image(btrfs_root: Path, busybox_tar: Path) -> None:
    btrfs_cli(btrfs_root, "import", str(busybox_tar), "busybox")
    btrfs_cli(btrfs_root, "run", "--rm", "--driver", "btrfs", "busybox", "true")
    assert len(subvolumes(btrfs_root.parent)) == 1  # the image's, kept for its next container
    assert "removed 0 extracted layers\n" in btrfs_cli(btrfs_root, "gc").stdout  # still an image: kept
    btrfs_cli(btrfs_root, "rmi", "busybox")
    assert subvolumes(btrfs_root.parent) == []
    assert sorted(p.name for p in (btrfs_root / "btrfs").iterdir()) == []  # nor its lock


def test_a_root_not_on_btrfs_is_one_clear_line(lazyctr: CliRunner, busybox_tar: Path) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    result = lazyctr("run", "--rm", "--driver", "btrfs", "busybox", "true", ok=False)
    assert result.code == 125
    assert_clean_error(result, "is not on a btrfs file system: --root must be on one")
