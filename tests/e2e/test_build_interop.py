"""An image `lazyctr build` made, read by the other tools: skopeo inspects it, umoci unpacks it, and
podman runs it after pulling it from the exported OCI layout."""

from __future__ import annotations

import json
import resource
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliRunner, require_tools
from tests.e2e.conftest import ContainerTools

pytestmark = pytest.mark.privileged

# Root may lower limits here but not raise them, and podman asks runc for more than we have.
ULIMITS = [
    arg
    for name, kind in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC))
    for arg in ("--ulimit", f"{name}=1024:1024")
    if resource.getrlimit(kind)[1] >= 1024
]

DOCKERFILE = """\
FROM busybox AS build
WORKDIR /src
COPY message.txt .
RUN tr a-z A-Z < message.txt > shout.txt && rm /etc/group

FROM busybox
COPY --from=build /src/shout.txt /app/shout.txt
RUN rm /etc/group
ENV GREETING=built
ENTRYPOINT ["cat"]
CMD ["/app/shout.txt"]
"""


def test_a_built_image_is_read_by_skopeo_umoci_and_run_by_podman(
    container_tools: ContainerTools, lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path
) -> None:
    require_tools("skopeo", "podman", "umoci", "unshare")
    lazyctr("import", str(busybox_tar), "busybox")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "message.txt").write_text("hello from lazyctr build\n")
    lazyctr("build", "--progress", "plain", "-t", "built:1", str(context))

    lazyctr("export", "built:1", f"oci:{tmp_path}/zstd:built")
    info = json.loads(container_tools.skopeo("inspect", f"oci:{tmp_path}/zstd:built"))
    assert len(info["Layers"]) == 3  # busybox, the COPY, the RUN that deleted /etc/group
    config = json.loads(container_tools.skopeo("inspect", "--config", f"oci:{tmp_path}/zstd:built"))
    assert config["config"]["Entrypoint"] == ["cat"] and "GREETING=built" in config["config"]["Env"]
    assert [h.get("empty_layer", False) for h in config["history"][1:]] == [False, False, True, True, True]

    lazyctr("export", "--compression", "gzip", "built:1", f"oci:{tmp_path}/gzip:built")
    subprocess.run(["umoci", "unpack", "--image", f"{tmp_path}/gzip:built", str(tmp_path / "bundle")],
                   check=True, capture_output=True)  # fmt: skip
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "app/shout.txt").read_text() == "HELLO FROM LAZYCTR BUILD\n"
    assert not (rootfs / "etc/group").exists()  # the RUN's deletion, a whiteout umoci applied
    assert (rootfs / "etc/passwd").exists()

    image_id = container_tools.podman("pull", "--quiet", f"oci:{tmp_path}/zstd:built").decode().strip()
    out = container_tools.podman("run", "--rm", "--network", "none", *ULIMITS, image_id).decode()
    assert out == "HELLO FROM LAZYCTR BUILD\n"
    env = container_tools.podman("run", "--rm", "--network", "none", *ULIMITS, "--entrypoint", "sh", image_id,
                                 "-c", "echo $GREETING; test -e /etc/group || echo no-group")  # fmt: skip
    assert env.decode().split() == ["built", "no-group"]
