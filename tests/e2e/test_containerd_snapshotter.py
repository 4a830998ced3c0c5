"""containerd with `lazyctr snapshotter` as a proxy plugin: ctr pulls our images into it and runs
containers on its snapshots, as it does with its own overlayfs snapshotter."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.peers.stargz import PeerError, running_containerd
from tests.conftest import require_tools
from tests.e2e.conftest import Containerd
from tests.lazyfs.conftest import run_cli
from tests.lazyfs.test_snapshotter import start, stop
from tests.registry.conftest import Registry

pytestmark = pytest.mark.privileged

SNAPSHOTTER = "lazyctr"


@pytest.fixture(scope="module")
def containerd_with_lazyctr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    require_tools("containerd", "ctr")
    base = tmp_path_factory.mktemp("containerd-lazyctr")
    socket = base / "lazyctr" / "snapshotter.sock"
    snapshotter = start(base / "lazyctr-root", socket)
    try:
        with contextlib.ExitStack() as stack:
            try:
                daemon = stack.enter_context(
                    running_containerd(
                        base / "containerd", snapshotter_socket=socket, snapshotter_name=SNAPSHOTTER
                    )
                )
            except PeerError as error:
                tail = (base / "containerd" / "containerd.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"{error}:\n{tail}")
            yield Containerd(daemon)
    finally:
        stop(snapshotter)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[str]:
    base = tmp_path_factory.mktemp("published")
    registry = Registry(base / "registry")
    try:
        run_cli(base / "root", "import", str(busybox_tar), "busybox:1")
        ref = f"{registry.address}/test/busybox:1"
        run_cli(base / "root", "push", "busybox:1", ref)
        yield ref
    finally:
        registry.stop()


def test_ctr_pulls_and_runs_on_our_snapshots(containerd_with_lazyctr: Containerd, pushed: str) -> None:
    ctr = containerd_with_lazyctr.ctr
    ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, pushed)
    out = ctr(
        "run",
        "--rm",
        "--snapshotter",
        SNAPSHOTTER,
        pushed,
        "first",
        "sh",
        "-c",
        "echo hello > /tmp/x; cat /tmp/x",
    )
    assert out.decode() == "hello\n"
    listed = ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").decode()
    assert "Committed" in listed
