"""The command line the suites share (lazyctr/bench.py: `bench hello`, `bench fleet`, with the same
--out/--cache options and the same handling of a bad option): running one, and the checks of that
shared behaviour, which each suite's tests apply to their own suite."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.conftest import Result, assert_clean_error

REPO = Path(__file__).resolve().parents[2]


def run_bench(suite: str, *args: str, timeout: float = 60) -> Result:
    """`lazyctr bench SUITE ARGS...` from the checkout, to its end."""
    proc = subprocess.run(
        [sys.executable, "-m", "lazyctr.cli", "bench", suite, *args],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def assert_bad_options_refused_before_anything_is_made(
    suite: str, tmp_path: Path, args: Sequence[str], fragment: str
) -> None:
    """One clean line naming the bad option, status 2 (usage), and neither --out nor --cache made."""
    out = tmp_path / "out"
    result = run_bench(suite, *args, "--out", str(out), "--cache", str(tmp_path / "cache"))
    assert_clean_error(result, fragment)
    assert result.code == 2
    assert not out.exists() and not (tmp_path / "cache").exists()


def assert_out_that_is_a_file_is_refused(suite: str, tmp_path: Path) -> None:
    """An --out that is a file is refused in one line and the file is left as it was."""
    out = tmp_path / "out"
    out.write_text("mine")
    assert_clean_error(run_bench(suite, "--out", str(out)), "exists and is not a directory")
    assert out.read_text() == "mine"
