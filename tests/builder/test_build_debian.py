"""A Debian image built the way people build them: a debootstrap minbase imported as the base, then
`RUN apt-get install -y python3` on the host network, tagged and run."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.rootfs import debian_tarball
from storage.store import Store
from tests.conftest import CliRunner, require_tools

pytestmark = [pytest.mark.slow, pytest.mark.privileged]

DOCKERFILE = """\
FROM debian:bookworm
ENV DEBIAN_FRONTEND=noninteractive
RUN --mount=type=cache,target=/var/cache/apt,id=apt-cache \\
    apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
COPY hello.py /app/hello.py
CMD ["python3", "/app/hello.py"]
"""


@pytest.fixture(scope="module")
def debian_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("debootstrap", "tar")
    path = tmp_path_factory.mktemp("debian") / "debian.tar"
    debian_tarball(path)  # the mirror comes from this machine's apt configuration
    return path


def test_apt_get_install_python3_on_a_debian_base(
    lazyctr: CliRunner, root: Path, debian_tar: Path, tmp_path: Path
) -> None:
    lazyctr("import", str(debian_tar), "debian:bookworm")
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "hello.py").write_text("import sys\nprint('python', sys.version_info[0], 6 * 7)\n")
    out = lazyctr("build", "--progress", "plain", "-t", "py:1", str(context)).out
    assert "Setting up python3" in out  # apt's output, through the progress printer
    assert lazyctr("run", "--rm", "py:1").out == "python 3 42\n"
    built = Store(root).image("py:1")
    assert len(built.manifest.layers) == 3  # debian, the apt-get RUN, the COPY
    # The apt cache mount kept the downloaded packages out of the layer (the base's own debs, left
    # by debootstrap, stay), and keeps them for the next build.
    assert list((root / "cache" / "mounts").rglob("python3*.deb"))
    listing = lazyctr("run", "--rm", "py:1", "ls", "/var/cache/apt/archives").out
    assert "python3" not in listing
    rebuilt = lazyctr("build", "--progress", "plain", "-t", "py:1", str(context)).out
    assert "Setting up python3" not in rebuilt and rebuilt.count("CACHED") == 2
