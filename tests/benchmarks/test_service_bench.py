"""benchmarks/service.py: a lazy start with and without `lazyctr service`, a real run of one round."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.leftovers import traces

REPO = Path(__file__).parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "benchmarks.service", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.privileged
def test_one_round_reports_both_ways_and_their_ratio_and_leaves_nothing(tmp_path: Path) -> None:
    result = bench("--runs", "1", "--cache", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert len(rows["alone"]) == len(rows["service"]) == len(rows["ratio"]) == 4
    assert all(float(cell) > 0 for cell in rows["alone"] + rows["service"])
    assert all(cell.endswith("x") for cell in rows["ratio"])
    assert not traces([str(tmp_path)])
    assert not list(tmp_path.glob("service-*"))


def test_runs_below_one_are_refused_in_one_line(tmp_path: Path) -> None:
    result = bench("--runs", "0", "--cache", str(tmp_path))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["--runs must be at least 1"]
