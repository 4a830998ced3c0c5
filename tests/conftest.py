"""Shared fixtures: privileged-test gating, a busybox rootfs tarball, and the real `lazyctr` CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.rootfs import busybox_tarball

REQUIRE_PRIVILEGED = os.environ.get("LAZYCTR_REQUIRE_PRIVILEGED") == "1"
# `run`'s default network is docker's `bridge`: a Linux bridge and NAT rules in the network namespace
# lazyctr runs in. The suite runs in the host's, so its containers get none unless a test asks
# (tests/runtime/test_network.py runs its own in namespaces of its own).
os.environ.setdefault("LAZYCTR_NETWORK", "none")


def unavailable(reason: str) -> None:
    """Skip, or fail when CI demands that privileged tests run."""
    if REQUIRE_PRIVILEGED:
        pytest.fail(f"required but unavailable: {reason}")
    pytest.skip(reason)


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        unavailable(f"missing tools: {', '.join(missing)}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("extended") and os.environ.get("LAZYCTR_EXTENDED") != "1":
        pytest.skip("extended test (minutes): run with LAZYCTR_EXTENDED=1")
    if item.get_closest_marker("privileged") and os.geteuid() != 0:
        unavailable("needs root")


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rootfs") / "busybox.tar"
    busybox_tarball(path)
    return path


@dataclass
class Result:
    code: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode()


CliRunner = Callable[..., Result]


def cli_command(root: Path, *args: str) -> list[str]:
    """The argv of the real command line against `root`, for tests that drive the process."""
    return [sys.executable, "-m", "lazyctr.cli", "--root", str(root), *args]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def lazyctr(root: Path) -> CliRunner:
    """Run the real command line in a subprocess, against a private --root."""

    def run(*args: str, input: bytes | None = None, ok: bool = True) -> Result:
        proc = subprocess.run(
            cli_command(root, *args),
            input=input,
            capture_output=True,
            timeout=300,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr.decode())
        if ok and result.code != 0:
            raise AssertionError(f"lazyctr {' '.join(args)} failed ({result.code}): {result.stderr}")
        return result

    return run


def assert_clean_error(result: Result, fragment: str) -> None:
    """One clear line on stderr, a non-zero exit, no traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
