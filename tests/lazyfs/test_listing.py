"""Directory listings: every entry with its attributes (readdirplus), the dots, big directories read in
pieces, and a walk that sees what `stat` sees."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from storage.importer import import_tarball
from storage.store import Store
from tests.lazyfs.conftest import Mounter
from tests.tarfiles import info, make_tar

pytestmark = pytest.mark.privileged

NAMES = [f"file-{n:04d}-with-a-longish-name" for n in range(700)]  # many pages of READDIRPLUS answers


def test_a_big_directory_lists_whole_with_its_dots_and_attributes(tmp_path: Path, mount: Mounter) -> None:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(info("big", tarfile.DIRTYPE), None)]
    members += [
        (info(f"big/{name}", mode=0o600, uid=n, gid=n + 1), name.encode()) for n, name in enumerate(NAMES)
    ]
    members.append((info("big/sub", tarfile.DIRTYPE), None))
    root = tmp_path / "root"
    with open(make_tar(tmp_path / "big.tar", members), "rb") as f:
        import_tarball(Store(root), f, "big:1")
    point = mount(root, "big:1")

    listed = subprocess.run(["ls", "-a", str(point / "big")], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == sorted([".", "..", "sub", *NAMES])
    assert sorted(os.listdir(point / "big")) == sorted([*NAMES, "sub"])
    walked = subprocess.run(
        ["find", str(point / "big"), "-printf", "%i %s %m %U %G %P\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in walked.stdout.splitlines()[1:]:  # what the walk got from the listing is what stat says
        ino, size, mode, uid, gid, name = line.split()
        status = os.lstat(point / "big" / name)
        assert (int(ino), int(size), int(mode, 8), int(uid), int(gid)) == (
            status.st_ino,
            status.st_size,
            status.st_mode & 0o7777,
            status.st_uid,
            status.st_gid,
        )
    assert os.stat(point / "big" / ".").st_ino == os.stat(point / "big").st_ino
    assert os.stat(point / "big" / "sub" / "..").st_ino == os.stat(point / "big").st_ino
    assert (point / "big" / NAMES[-1]).read_bytes() == NAMES[-1].encode()
