"""`lazyctr run --timings`: the timeline of one start, tested for its shape (phases present, in order,
their figures sane), never for its speed."""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CliRunner, Result, assert_clean_error, cli_command
from tests.lazyctr.test_cli_serve import serving

pytestmark = pytest.mark.privileged

PULL = ["manifest", "config", "TOCs", "profile"]


@dataclass(frozen=True)
class Row:
    phase: str
    at_ms: float
    took_ms: float
    requests: int
    received: int


def timeline(result: Result) -> list[Row]:
    """The table `--timings` printed on stderr."""
    lines = result.stderr.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["PHASE", "AT", "MS", "TOOK", "MS",
                                                                       "REQUESTS", "BYTES"])  # fmt: skip
    rows = []
    for line in lines[header + 1 :]:
        name, at, took, requests, received = line.rsplit(maxsplit=4)
        rows.append(Row(name.strip(), float(at), float(took), int(requests), int(received.replace(",", ""))))
    return rows


def assert_sane(rows: list[Row]) -> None:
    assert rows[0] == Row("process start", 0.0, 0.0, 0, 0)
    assert rows[1].phase == "imports done" and rows[-1].phase == "exit"
    assert [r.at_ms for r in rows] == sorted(r.at_ms for r in rows)
    for before, row in itertools.pairwise(rows):
        assert row.took_ms >= 0 and row.took_ms == pytest.approx(row.at_ms - before.at_ms, abs=0.11)
    assert all(r.requests >= 0 and r.received >= 0 for r in rows)


@pytest.fixture
def pushed(tmp_path: Path, busybox_tar: Path) -> Iterator[str]:
    """busybox in a `lazyctr serve` on 127.0.0.1, pushed from another root."""
    with serving(tmp_path / "registry") as reply:
        ref = f"{reply.address}/test/busybox:1"
        origin = tmp_path / "origin"
        for args in (("import", str(busybox_tar), "busybox"), ("push", "busybox", ref)):
            subprocess.run(cli_command(origin, *args), check=True, capture_output=True, timeout=120)
        yield ref


def test_a_lazy_start_has_every_phase_in_order(lazyctr: CliRunner, pushed: str) -> None:
    result = lazyctr("run", "--rm", "--timings", pushed, "cat", "/etc/passwd")
    assert result.out.startswith("root:")  # the command's output is its own: the table goes to stderr
    rows = timeline(result)
    assert_sane(rows)
    names = [r.phase for r in rows]
    # The first read comes from the daemon, at whatever moment it came: often before the exec ends,
    # since exec reads the command's binary through the mount.
    assert "first read" in names[names.index("mount up") + 1 : -1]
    names.remove("first read")
    # The config, the TOCs and the profile are fetched at once: they end in whatever order they end.
    pulled = names[3 : 3 + len(PULL) - 1]
    assert sorted(pulled) == sorted(PULL[1:])
    assert names == ["process start", "imports done", "manifest", *pulled, "mount up", "exec", "exit"]
    by_name = {r.phase: r for r in rows}
    assert by_name["manifest"].requests >= 1 and by_name["manifest"].received > 0
    assert sum(r.received for r in rows if r.phase in PULL) > 0  # the config and TOCs
    assert sum(r.requests for r in rows) >= 4  # manifest, config, a TOC, referrers: the daemon's too
    after_mount = rows[names.index("mount up") + 1 :]
    assert sum(r.received for r in after_mount) > 1000  # the daemon fetched cat (busybox) itself


def test_a_present_image_with_the_overlay_driver_has_no_pull_or_mount(
    lazyctr: CliRunner, busybox_tar: Path
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    rows = timeline(lazyctr("run", "--rm", "--timings", "busybox", "true"))
    assert_sane(rows)
    assert [r.phase for r in rows] == ["process start", "imports done", "exec", "exit"]
    assert all(r.requests == 0 and r.received == 0 for r in rows)


def test_a_command_that_could_not_be_execd_has_no_exec_phase(lazyctr: CliRunner, busybox_tar: Path) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    result = lazyctr("run", "--rm", "--timings", "busybox", "/no/such/command", ok=False)
    assert result.code == 127
    assert [r.phase for r in timeline(result)] == ["process start", "imports done", "exit"]


def test_timings_of_a_detached_container_are_refused(lazyctr: CliRunner, busybox_tar: Path) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    result = lazyctr("run", "-d", "--timings", "busybox", "true", ok=False)
    assert result.code == 125
    assert_clean_error(result, "--timings")
    assert lazyctr("ps", "-a", "--json").out.strip() == "[]"  # refused before anything was made
