"""The podman peer of benchmarks/peers/podman.py: a busybox image in our registry, pulled over a shaped
link and run by `podman run --rm` with nothing left behind and without podman's 20 s wait for conmon's
cleanup; a missing tool or image is one clear line; the died-to-remove gap read from podman's events file.
Behaviour only: no speed is asserted."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import BenchError, lazyctr, serving
from benchmarks.link import Link, shaped_link
from benchmarks.peers.podman import EXIT_TO_REMOVAL_LIMIT, RUNROOT_PARENT, Podman, exit_to_removal
from tests.benchmarks.leftovers import traces
from tests.conftest import require_tools

PROBE = '["sh", "-c", "test -x /bin/busybox && echo ready"]'


def leftovers(work: Path) -> set[str]:
    """What deployments left: files under `work` and runroots in /run, mounts and processes (conmon,
    podman) naming either (compared before and after a test: another engineer's bench may be running)."""
    places = [str(work), f"{RUNROOT_PARENT}/lazyctr-podman-"]
    found = [str(path) for path in work.iterdir()]
    found += [str(path) for path in Path(RUNROOT_PARENT).glob("lazyctr-podman-*")]
    return set(found) | traces(places)


@pytest.fixture
def served(tmp_path: Path, busybox_tar: Path) -> Iterator[tuple[Link, str]]:
    """Our registry across a 1gbit/2ms link, holding busybox with a probe as CMD, as bench/busybox-np:1."""
    require_tools("ip", "nsenter", "unshare")
    store = tmp_path / "store"
    lazyctr(store, "import", str(busybox_tar), "base/busybox:1")
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM base/busybox:1\nCMD {PROBE}\n")
    lazyctr(store, "build", "--progress", "plain", "-t", "bench/busybox:1", str(context))
    with shaped_link("1gbit", "2ms") as link:
        address = f"{link.server_ip}:5000"
        with serving(tmp_path / "registry", address, link, log=tmp_path / "registry.log"):
            ref = f"{address}/bench/busybox-np:1"
            lazyctr(store, "push", "--insecure", "bench/busybox:1", ref, netns=link.client_ns)
            yield link, address


@pytest.fixture
def deploy(served: tuple[Link, str], tmp_path: Path) -> Iterator[Callable[[str], dict[str, Any]]]:
    """Deploys an image of the served registry with the podman peer; nothing may be left behind."""
    require_tools("podman", "runc")
    link, address = served
    work = tmp_path / "work"
    work.mkdir()
    before = leftovers(work)
    yield lambda name: Podman(work).deploy(link, address, name)
    assert not leftovers(work) - before


@pytest.mark.privileged
def test_busybox_is_deployed_without_the_conmon_timeout(deploy: Callable[[str], dict[str, Any]]) -> None:
    sample = deploy("busybox")
    assert sample["ok"] is True, sample.get("error")
    assert sample["image"] == "busybox" and sample["driver"] == "podman"
    assert "note" not in sample, sample["note"]
    # The detector read the events file: a figure, and one under the limit (podman's timer makes it 20 s).
    gap = sample["exit_to_removal_s"]
    assert isinstance(gap, float) and 0 <= gap < EXIT_TO_REMOVAL_LIMIT
    assert sample["pull_s"] > 0 and sample["run_s"] > 0
    assert sample["ready_s"] == pytest.approx(sample["pull_s"] + sample["run_s"])
    assert sample["bytes"] > 0  # the image came over the link


@pytest.mark.privileged
def test_an_image_the_registry_lacks_is_a_failed_sample_of_one_line(
    deploy: Callable[[str], dict[str, Any]],
) -> None:
    sample = deploy("nothing")
    assert sample["ok"] is False
    assert sample["error"].startswith("podman pull failed") and "manifest unknown" in sample["error"]
    assert "\n" not in sample["error"] and "note" not in sample


@pytest.mark.parametrize(
    ("tools", "message"), [((), "podman is not installed"), (("podman",), "runc is not installed")]
)
def test_a_missing_tool_is_a_bench_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tools: tuple[str, ...], message: str
) -> None:
    path = tmp_path / "bin"
    path.mkdir()
    for tool in tools:
        real = shutil.which(tool)
        if real is None:
            pytest.skip(f"{tool} is not installed here")
        os.symlink(real, path / tool)
    monkeypatch.setenv("PATH", str(path))
    with pytest.raises(BenchError, match=f"^{message}$"):
        Podman(tmp_path)


def event(status: str, time: str, container: str = "c1") -> str:
    """One line of podman 4's events file, as its file logger writes it."""
    return json.dumps(
        {"ID": container, "Name": "n", "Status": status, "Time": time, "Type": "container", "Attributes": {}}
    )


def test_exit_to_removal_from_podman_events(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    timed_out = [  # as podman 4.3 logged a run that waited out its conmon timer (nanoseconds, as it writes)
        '{"Status":"refresh","Time":"2026-11-25T01:18:25.570875069Z","Type":"system","Attributes":null}',
        event("start", "2026-11-25T01:18:25.822051545Z"),
        event("died", "2026-11-25T01:18:25.823144186Z"),
        event("remove", "2026-11-25T01:18:45.954613655Z"),
        '{"Status":"remo',  # a line still being written
    ]
    log.write_text("\n".join(timed_out) + "\n")
    assert exit_to_removal(log) == pytest.approx(20.131469, abs=1e-6)
    log.write_text(
        "\n".join(
            [
                event("died", "2026-11-25T01:19:42.694917124Z", "other"),  # another container's
                event("died", "2026-11-25T01:19:42.7Z"),
                event("remove", "2026-11-25T01:19:42.845100662Z"),
                '{"Status":"remove","Time":"2026-11-25T01:19:50Z","Type":"image"}',  # not a container
            ]
        )
    )
    assert exit_to_removal(log) == pytest.approx(0.1451, abs=1e-4)
    log.write_text(event("died", "2026-11-25T01:19:42.7Z") + "\n")  # not removed (yet): no figure
    assert exit_to_removal(log) is None
    assert exit_to_removal(tmp_path / "absent.log") is None
