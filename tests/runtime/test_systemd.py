"""`run --systemd`: when it turns on, what the container gets, and a Debian image booting systemd as
PID 1 to `running`, then halting on `lazyctr stop` (SIGRTMIN+3) without needing SIGKILL."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from builder.rootfs import debian_tarball
from runtime.spec import parse_signal
from runtime.systemd import wanted
from tests.conftest import CliRunner, require_tools
from tests.runtime.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
DEBIAN_SYSTEMD = REPO / ".cache" / "debian-systemd.tar"  # debootstrap minbase + systemd-sysv, made once


@pytest.mark.parametrize(
    ("mode", "argv", "expected"),
    [
        ("true", ["/sbin/init"], True),
        ("true", ["/usr/sbin/init"], True),
        ("true", ["/lib/systemd/systemd", "--log-level=debug"], True),
        ("true", ["sh", "-c", "/sbin/init"], False),
        ("false", ["/sbin/init"], False),
        ("always", ["sh"], True),
    ],
)
def test_systemd_is_detected_from_the_command(mode: str, argv: list[str], expected: bool) -> None:
    assert wanted(mode, argv) is expected


def states(lazyctr: CliRunner) -> dict[str, dict[str, object]]:
    return {s["name"]: s for s in json.loads(lazyctr("ps", "-a", "--json").out)}


@pytest.mark.privileged
def test_a_systemd_container_gets_its_mounts_environment_and_stop_signal(
    lazyctr: CliRunner, busybox_tar: Path
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    script = "echo $container; grep -E ' /(run|run/lock|tmp|var/log/journal|sys/fs/cgroup) ' /proc/mounts"
    out = lazyctr("run", "--rm", "--systemd", "always", "busybox", "sh", "-c", script).out.splitlines()
    assert out[0] == "lazyctr"
    mounted = {line.split()[1]: line.split()[2] for line in out[1:]}
    assert mounted == {
        "/run": "tmpfs",
        "/run/lock": "tmpfs",
        "/tmp": "tmpfs",
        "/var/log/journal": "tmpfs",
        "/sys/fs/cgroup": "cgroup2",
    }
    assert " rw," in next(line for line in out if " /sys/fs/cgroup " in line)  # systemd writes there
    plain = lazyctr(
        "run", "--rm", "busybox", "sh", "-c", "echo ${container:-none}; grep cgroup2 /proc/mounts; true"
    )
    assert plain.out == "none\n"  # not an init, not asked: nothing of it
    lazyctr("run", "--name", "lzc-sd", "--systemd", "always", "busybox", "true")
    assert states(lazyctr)["lzc-sd"]["stop_signal"] == int(signal.SIGRTMIN) + 3
    bad = lazyctr("run", "--rm", "--systemd", "maybe", "busybox", "true", ok=False)
    assert bad.code == 2 and "'maybe' is not one of 'true', 'false', 'always'" in bad.stderr


def debian_systemd() -> Path:
    if not DEBIAN_SYSTEMD.exists():
        require_tools("debootstrap", "tar")
        DEBIAN_SYSTEMD.parent.mkdir(parents=True, exist_ok=True)
        partial = DEBIAN_SYSTEMD.with_suffix(f".{os.getpid()}.partial")
        try:
            debian_tarball(partial, include=("systemd-sysv",))  # ~90 s; the mirror from apt's configuration
            partial.rename(DEBIAN_SYSTEMD)
        finally:
            partial.unlink(missing_ok=True)
    return DEBIAN_SYSTEMD


@pytest.mark.privileged
@pytest.mark.extended  # debootstrap (~90 s, once) and importing 240 MB
def test_debian_boots_systemd_to_running_and_stops_cleanly(lazyctr: CliRunner) -> None:
    lazyctr("import", str(debian_systemd()), "lzc/debian-systemd")
    lazyctr("run", "-d", "--name", "lzc-boot", "lzc/debian-systemd", "/sbin/init")  # detected: an init

    def booted() -> bool:
        result = lazyctr("exec", "lzc-boot", "systemctl", "is-system-running", ok=False)
        return result.out.strip() not in ("initializing", "starting", "")

    wait_for(booted, what="systemd to finish booting")
    state = lazyctr("exec", "lzc-boot", "systemctl", "is-system-running", ok=False).out.strip()
    failed = lazyctr("exec", "lzc-boot", "systemctl", "--failed", "--no-legend", "--plain", ok=False).out
    assert state == "running", failed  # minbase + systemd-sysv: no unit fails, so not even `degraded`
    assert lazyctr("exec", "lzc-boot", "cat", "/proc/1/comm").out == "systemd\n"
    lazyctr("stop", "-t", "60", "lzc-boot")  # SIGRTMIN+3: systemd halts; SIGKILL would give 137
    assert states(lazyctr)["lzc-boot"]["exit_code"] == 0
    unified = Path("/sys/fs/cgroup/unified/lazyctr") / str(states(lazyctr)["lzc-boot"]["id"])
    assert not unified.exists()  # its cgroup2 cgroup went, with every cgroup systemd made in it


@pytest.mark.parametrize(
    ("text", "number"),
    [("SIGTERM", 15), ("QUIT", 3), ("9", 9), ("SIGRTMIN+3", int(signal.SIGRTMIN) + 3), ("rtmax-1", 63)],
)
def test_stop_signals_as_stopsignal_names_them(text: str, number: int) -> None:
    assert parse_signal(text) == number
