"""The installed product: `pip wheel .`, then a fresh virtualenv holding only that wheel (and its
dependencies, without the `bench` extra: no matplotlib), used from outside the checkout with no
PYTHONPATH. `lazyctr --help`, `import` and `run` work, and so does `lazyctr bench`: the benchmarks
and their images' contexts come with the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Result

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 600


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a virtualenv with the wheel built from this checkout installed."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(REPO)],
        cwd=base,
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT,
    )
    (wheel,) = dist.glob("lazyctr-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        cwd=base,
        env=outside_env(),
        check=True,
        capture_output=True,
        timeout=INSTALL_TIMEOUT,
    )
    return venv / "bin"


def outside_env() -> dict[str, str]:
    """Our environment without a path into the checkout."""
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def run(argv: list[str], cwd: Path) -> Result:
    proc = subprocess.run(argv, cwd=cwd, env=outside_env(), capture_output=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def ok(argv: list[str], cwd: Path) -> str:
    result = run(argv, cwd)
    assert result.code == 0, f"{' '.join(argv)} failed ({result.code}): {result.stderr}"
    return result.out


@pytest.mark.privileged
@pytest.mark.slow
def test_the_installed_wheel_runs_containers_and_benchmarks(
    installed: Path, busybox_tar: Path, tmp_path: Path
) -> None:
    python, lazyctr = str(installed / "python"), str(installed / "lazyctr")
    # What runs is the installed copy, not the checkout, and the `bench` extra is not there.
    where = ok(
        [python, "-c", "import benchmarks, lazyctr; print(lazyctr.__file__, benchmarks.__file__)"], tmp_path
    )
    assert all(Path(path).is_relative_to(installed.parent) for path in where.split()), where
    assert run([python, "-c", "import matplotlib"], tmp_path).code != 0

    assert "Usage: lazyctr" in ok([lazyctr, "--help"], tmp_path)
    root = tmp_path / "root"
    ok([lazyctr, "--root", str(root), "import", str(busybox_tar), "busybox"], tmp_path)
    ok([lazyctr, "--root", str(root), "run", "--rm", "busybox", "true"], tmp_path)

    assert "hello" in ok([lazyctr, "bench", "--help"], tmp_path)
    assert "--images" in ok([lazyctr, "bench", "hello", "--help"], tmp_path)
    # The suite's images came with the wheel: a name not among them is refused, in one line.
    contexts = ok([python, "-c", "from benchmarks.hello import available_images as a; print(*a())"], tmp_path)
    assert {"distro", "redis", "flask"} <= set(contexts.split()), contexts
    refused = run([lazyctr, "bench", "hello", "--images", "nosuch"], tmp_path)
    assert refused.code == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"Error: unknown image 'nosuch' (known: {', '.join(contexts.split())}, all)"
    ]
