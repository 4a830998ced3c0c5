"""Real skopeo pushes an image to the server and pulls it back with identical digests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliRunner, require_tools
from tests.e2e.conftest import ContainerTools
from tests.registry.conftest import Registry


def layout_digest(layout: Path) -> str:
    (entry,) = json.loads((layout / "index.json").read_text())["manifests"]
    return str(entry["digest"])


@pytest.mark.privileged
def test_skopeo_push_and_pull_round_trip(lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path) -> None:
    require_tools("skopeo", "unshare", "mount")
    lazyctr("import", str(busybox_tar), "busybox")
    lazyctr("export", "busybox", f"oci:{tmp_path}/layout:latest")
    tools_base = tmp_path / "tools"
    tools_base.mkdir()
    tools = ContainerTools(tools_base)
    server = Registry(tmp_path / "registry")
    remote = f"docker://{server.address}/test/busybox"
    try:
        tools.skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path}/layout:latest", f"{remote}:latest")
        # A second push under another tag finds every blob already there.
        tools.skopeo("copy", "--dest-tls-verify=false", f"oci:{tmp_path}/layout:latest", f"{remote}:again")
        tools.skopeo("copy", "--src-tls-verify=false", f"{remote}:latest", f"oci:{tmp_path}/out:latest")
        tags = json.loads(tools.skopeo("list-tags", "--tls-verify=false", remote))
        raw = tools.skopeo("inspect", "--raw", "--tls-verify=false", f"{remote}:latest")
    finally:
        server.stop()
    pushed = layout_digest(tmp_path / "layout")
    assert layout_digest(tmp_path / "out") == pushed
    assert sorted(tags["Tags"]) == ["again", "latest"]
    source_blobs = tmp_path / "layout/blobs/sha256"
    assert raw == (source_blobs / pushed.split(":")[1]).read_bytes()
    for blob in (tmp_path / "out/blobs/sha256").iterdir():
        assert blob.read_bytes() == (source_blobs / blob.name).read_bytes()
    assert (tmp_path / "registry/repositories/test/busybox/tags/latest").read_text() == pushed
    assert list((tmp_path / "registry/uploads").iterdir()) == []
