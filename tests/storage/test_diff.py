"""An overlayfs upper directory becomes an OCI layer with whiteouts, links, owners and xattrs."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from storage.diff import upper_to_tar


@pytest.mark.privileged
def test_upper_dir_to_layer(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/new").write_text("new\n")
    os.chown(upper / "etc/new", 1000, 1001)
    os.chmod(upper / "etc/new", 0o4750)
    os.link(upper / "etc/new", upper / "etc/again")
    os.mknod(upper / "etc/deleted", 0o600 | 0o020000, os.makedev(0, 0))  # overlayfs's whiteout
    (upper / "opaque").mkdir()
    os.setxattr(upper / "opaque", "trusted.overlay.opaque", b"y")
    (upper / "opaque/kept").write_text("k")
    os.setxattr(upper / "etc/new", "user.note", b"hi")
    os.symlink("/etc/new", upper / "link")
    out = tmp_path / "layer.tar"
    assert upper_to_tar(upper, out, clamp_mtime_ns=1_000_000_000_000_000_000) == 8
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar}
        assert sorted(members) == [
            "etc", "etc/.wh.deleted", "etc/again", "etc/new",
            "link", "opaque", "opaque/.wh..wh..opq", "opaque/kept",
        ]  # fmt: skip
        data = members["etc/again"]
        assert (data.uid, data.gid, data.mode, data.size) == (1000, 1001, 0o4750, 4)
        assert data.pax_headers["SCHILY.xattr.user.note"] == "hi"
        # Sorted order: the first name holds the data, the second links to it.
        assert members["etc/new"].islnk() and members["etc/new"].linkname == "etc/again"
        assert members["link"].issym() and members["link"].linkname == "/etc/new"
        assert not any("trusted.overlay" in k for m in members.values() for k in m.pax_headers)
        assert all(m.mtime <= 1_000_000_000 for m in members.values())
