"""A rich two-layer image in a real registry, and helpers to pull it lazily and mount it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.transfer import pull_lazy
from storage.importer import add_layer, import_tarball
from storage.store import Image, Store
from tests.conftest import cli_command
from tests.registry.conftest import Registry
from tests.tarfiles import info, make_tar

BIG = os.urandom(3 << 19)  # 1.5 MiB: six chunks


def _xattr(name: str, value: bytes) -> dict[str, str]:
    return {f"SCHILY.xattr.{name}": value.decode("latin-1")}


def base_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        (info("etc", tarfile.DIRTYPE), None),
        (info("etc/small.txt"), b"first version\n"),
        (info("etc/hard", tarfile.LNKTYPE, linkname="etc/small.txt"), None),
        (info("etc/link", tarfile.SYMTYPE, linkname="small.txt"), None),
        (info("data", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000), None),
        (info("data/big.bin", mode=0o600, uid=1000, gid=1000), BIG),
        (info("data/big-link", tarfile.LNKTYPE, linkname="data/big.bin"), None),
        (info("data/sparse.bin"), bytes(1 << 20) + b"tail"),
        (info("data/empty"), b""),
        (info("data/tagged", pax_headers=_xattr("user.origin", b"lazyctr")), b"with an xattr\n"),
        (info("bin", tarfile.DIRTYPE), None),
        (info("bin/tool", mode=0o4755), b"#!/bin/sh\necho tool\n"),
        (info("dev", tarfile.DIRTYPE), None),
        (info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
        (info("dev/pipe", tarfile.FIFOTYPE), None),
        (info("gone", tarfile.DIRTYPE), None),
        (info("gone/file"), b"deleted by the upper layer\n"),
        (info("opaque", tarfile.DIRTYPE), None),
        (info("opaque/old"), b"hidden by the opaque upper dir\n"),
    ]


def upper_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        (info("etc", tarfile.DIRTYPE), None),
        (info("etc/small.txt"), b"second version\n"),
        (info(".wh.gone"), b""),
        (info("opaque", tarfile.DIRTYPE), None),
        (info("opaque/.wh..wh..opq"), b""),
        (info("opaque/new"), b"only this one\n"),
        (info("shared.txt"), b"the same bytes in two images\n" * 100),
    ]


def make_image(store: Store, tmp: Path, name: str = "rich:1") -> Image:
    base_tar = make_tar(tmp / "base.tar", base_members())
    upper_tar = make_tar(tmp / "upper.tar", upper_members())
    with open(base_tar, "rb") as f:
        base = import_tarball(store, f, "rich-base:1")
    return add_layer(store, base, upper_tar, name, "upper layer")


def run_cli(root: Path, *args: str, ok: bool = True, timeout: float = 99) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cli_command(root, *args), capture_output=True, text=True, timeout=timeout)
    if ok and proc.returncode != 0:
        raise AssertionError(f"lazyctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@dataclass
class Published:
    """An image built in `publisher_root` and pushed to `registry` as `ref`."""

    registry: Registry
    publisher_root: Path
    ref: str
    image: Image


@pytest.fixture
def published(tmp_path: Path) -> Iterator[Published]:
    registry = Registry(tmp_path / "registry")
    publisher_root = tmp_path / "publisher"
    image = make_image(Store(publisher_root), tmp_path)
    ref = f"{registry.address}/test/rich:1"
    run_cli(publisher_root, "push", "rich:1", ref)
    yield Published(registry, publisher_root, ref, image)
    with contextlib.suppress(RuntimeError):  # a test may have stopped it already
        registry.stop()


def pull_lazily(root: Path, ref: str) -> Image:
    return asyncio.run(pull_lazy(Store(root), ref))


Mounter = Callable[..., Path]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mounter]:
    """`mount(root, image, *options)` mounts with the CLI at a new directory; all unmounted at the end."""
    points: list[Path] = []

    def mount_image(root: Path, image: str, *options: str) -> Path:
        point = tmp_path / f"mnt{len(points)}"
        point.mkdir()
        points.append(point)
        run_cli(root, "mount", *options, image, str(point))
        return point

    yield mount_image
    for point in points:
        subprocess.run(["fusermount3", "-uz", str(point)], capture_output=True)
