"""The storage suite (`lazyctr bench storage`, benchmarks/storage_drivers.py): one real run on its smallest
settings (every metric for native and every driver, nothing left mounted or attached), and bad options
refused in one line before anything is made. Behaviour only: no speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.storage_drivers import DRIVERS, METRICS, NATIVE, render_report
from tests.benchmarks.leftovers import traces
from tests.conftest import Result, assert_clean_error, require_tools

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "lazyctr.cli", "bench", "storage", *args],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def loop_backing_files() -> list[str]:
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.append(backing.read_text().strip())
        except OSError:
            continue  # detached while we looked
    return found


def smallest_run(tmp_path: Path, drivers: list[str]) -> None:
    """One container, one run, small files: every metric of native and each driver, and nothing left."""
    require_tools("fio", "mkfs.btrfs", "losetup", "busybox")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    options = ["--drivers", ",".join(drivers), "--containers", "1", "--runs", "1", "--file-mb", "4"]
    result = bench(
        *options, "--small-files", "20", "--out", str(out),
        env={"TMPDIR": str(work)},  # every work file, mount and loop file of the run below tmp_path
        timeout=300,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert "partial" not in results
    by_driver = {s["driver"]: s for s in results["samples"]}
    assert set(by_driver) == {NATIVE, *drivers}
    for driver, sample in by_driver.items():
        assert sample["ok"], (driver, sample.get("error"))
        assert set(sample["metrics"]) == set(METRICS), driver
        assert all(v["aggregate"] > 0 and v["per_container"] > 0 for v in sample["metrics"].values()), driver
    report = (out / "report.md").read_text()
    assert all(f"| {driver} |" in report for driver in by_driver)
    assert (out / "drivers_vs_native.png").read_bytes().startswith(PNG)
    # Cleanup: no loop device, btrfs or lazyfs mount, or process of the run is left, and no work file.
    assert not [b for b in loop_backing_files() if str(tmp_path) in b]
    assert not traces([str(tmp_path)])
    assert list(work.iterdir()) == []


@pytest.mark.privileged
def test_smallest_run_of_btrfs_has_every_metric_and_leaves_no_loop_device_or_mount(tmp_path: Path) -> None:
    """The driver whose set-up the suite owns: a loop device, its btrfs file system and mount."""
    smallest_run(tmp_path, ["btrfs"])


@pytest.mark.privileged
@pytest.mark.extended
def test_smallest_run_of_every_driver_has_every_metric_and_leaves_nothing(tmp_path: Path) -> None:
    """Every driver (about 70 s on a loaded machine): lazy-cold and lazy-warm leave no lazyfs mount either."""
    smallest_run(tmp_path, list(DRIVERS))


def test_unknown_driver_is_one_line() -> None:
    assert_clean_error(bench("--drivers", "overlay,zfs"), "unknown driver 'zfs'")


def test_bad_numbers_of_containers_are_one_line() -> None:
    assert_clean_error(bench("--containers", "1,0"), "--containers: '0' is not a number of containers")
    assert_clean_error(bench("--containers", "two"), "--containers: 'two' is not a number of containers")


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    assert_clean_error(bench("--out", str(tmp_path / "out")), "exists and is not a directory")


def test_missing_btrfs_progs_is_one_line(tmp_path: Path) -> None:
    tools = tmp_path / "bin"  # a PATH with losetup but no mkfs.btrfs
    tools.mkdir()
    (tools / "losetup").symlink_to("/usr/sbin/losetup")
    result = bench("--drivers", "btrfs", "--out", str(tmp_path / "out"), env={"PATH": str(tools)})
    assert_clean_error(result, "mkfs.btrfs is missing: install the btrfs-progs package")
    assert not (tmp_path / "out").exists()  # refused before anything is made


def fake_sample(driver: str, containers: int, rate: float) -> dict[str, Any]:
    figures = {metric: {"aggregate": rate * containers, "per_container": rate} for metric in METRICS}
    return {"driver": driver, "containers": containers, "run": 0, "ok": True, "metrics": figures}


def test_report_gives_ratios_to_native_and_the_scaling() -> None:
    results = {
        "config": {"drivers": ["overlay"], "containers": [1, 4], "runs": 1, "file_mb": 4, "small_files": 20},
        "samples": [
            fake_sample(NATIVE, 1, 100.0),
            fake_sample(NATIVE, 4, 50.0),
            fake_sample("overlay", 1, 50.0),
            fake_sample("overlay", 4, 50.0),
            {"driver": "overlay", "containers": 4, "run": 1, "ok": False, "error": "a container exited 1"},
        ],
    }
    report = render_report(results)
    assert "| overlay | 50.0 | 50.0 | 50.0 | 50.0 | 50.0 | 0.50x |" in report  # 1 container, vs native
    assert "| overlay | 50.0 (50.0; 0.50x) | 200 (50.0; 1.00x) | 4.00x |" in report  # scaling 1 -> 4
    assert "- overlay x4 run 1: a container exited 1" in report
