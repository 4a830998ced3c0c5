"""The containerd-lazyctr peer (benchmarks/peers/containerd_lazyctr.py): a busybox image in our registry,
lazily pulled through `lazyctr snapshotter` under a private containerd and run over a shaped link, with
nothing left behind. Behaviour only: no speed is asserted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.link import Link, shaped_link
from benchmarks.peers.containerd_lazyctr import measure
from benchmarks.peers.stargz import publish, serving
from tests.benchmarks.leftovers import traces
from tests.conftest import require_tools

IMAGE = "bench/busybox:1"

pytestmark = pytest.mark.privileged


@pytest.fixture
def served(tmp_path: Path, busybox_tar: Path) -> Iterator[tuple[Link, str]]:
    storage = tmp_path / "registry"
    publish(str(busybox_tar), tmp_path / "unused-store", storage, IMAGE)
    with shaped_link("1gbit", "2ms") as link:
        address = f"{link.server_ip}:5000"
        with serving(storage, address, link):
            yield link, address


def leftovers() -> set[str]:
    found = {str(path) for path in Path("/tmp").glob("lazyctr-containerd-*")}
    return found | traces(["lazyctr-containerd-"])


def test_measure_busybox_over_a_link(served: tuple[Link, str]) -> None:
    require_tools("containerd", "ctr", "ctr-remote", "runc", "nsenter")
    link, address = served
    before = leftovers()
    probe = ["sh", "-c", "test -x /bin/busybox && grep -q localhost /etc/hosts && echo ready"]
    result = measure(link, {"": f"{address}/{IMAGE}"}, probe, runs=2)
    assert isinstance(result, dict), result
    figures = result[""]
    assert figures["pull_s"] > 0 and figures["run_s"] > 0
    assert figures["remote_layers"] == 1, "the image was not mounted lazily"
    assert figures["bytes"] > 0 and len(figures["samples"]) == 2
    assert not leftovers() - before


def test_a_failing_probe_is_a_reason(served: tuple[Link, str]) -> None:
    require_tools("containerd", "ctr", "ctr-remote", "runc", "nsenter")
    link, address = served
    before = leftovers()
    failed = measure(link, {"": f"{address}/{IMAGE}"}, ["false"])
    assert isinstance(failed, str) and "\n" not in failed
    assert not leftovers() - before
