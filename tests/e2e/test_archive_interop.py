"""`lazyctr save`/`load` against podman: `podman load` reads both our archive formats, and we load
what `podman save` writes in both, with the same layers (diff_ids) and a container that runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliRunner, require_tools
from tests.e2e.conftest import ContainerTools

# extended: the default suite has 45 s for this work, and podman load/save costs ~8 s of it
pytestmark = [pytest.mark.privileged, pytest.mark.extended]


def diff_ids(lazyctr: CliRunner, image: str) -> list[str]:
    return [layer["DiffID"] for layer in json.loads(lazyctr("inspect", "--json", image).out)["Layers"]]


def test_podman_loads_ours_and_we_load_podmans(
    lazyctr: CliRunner, busybox_tar: Path, container_tools: ContainerTools, tmp_path: Path
) -> None:
    require_tools("podman")
    lazyctr("import", str(busybox_tar), "lzc/docker:1")
    lazyctr("tag", "lzc/docker:1", "lzc/oci:1")
    ours = diff_ids(lazyctr, "lzc/docker:1")
    docker, oci = tmp_path / "ours-docker.tar", tmp_path / "ours-oci.tar"
    lazyctr("save", "lzc/docker:1", "-o", str(docker))
    lazyctr("save", "--format", "oci-archive", "lzc/oci:1", "-o", str(oci))
    for archive, name in ((docker, "lzc/docker:1"), (oci, "lzc/oci:1")):
        assert name in container_tools.podman("load", "-i", str(archive)).decode()
        inspected = json.loads(container_tools.podman("image", "inspect", f"localhost/{name}"))
        assert inspected[0]["RootFS"]["Layers"] == ours
    for fmt in ("docker-archive", "oci-archive"):
        theirs = tmp_path / f"podman-{fmt}.tar"
        container_tools.podman("save", "--format", fmt, "-o", str(theirs), "localhost/lzc/docker:1")
        lazyctr("rmi", "localhost/lzc/docker:1", ok=False)
        assert lazyctr("load", "-i", str(theirs)).out == "Loaded image: localhost/lzc/docker:1\n"
        assert diff_ids(lazyctr, "localhost/lzc/docker:1") == ours
        assert lazyctr("run", "--rm", "localhost/lzc/docker:1", "echo", "ran").out == "ran\n"
