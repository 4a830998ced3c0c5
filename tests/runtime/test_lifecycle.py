"""A container's life after `run` and what it uses, through the real command line on real cgroups and
namespaces: stats figures move when the container works, pause stops its CPU use, create+start runs
it, restart policies restart it as often as they say, wait prints its status, rename; bad input is
one clear line with docker's exit status."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.accounting import Usage, read_usage
from runtime.cgroups import Cgroup
from runtime.process import ContainerError
from runtime.restart import RestartPolicy
from runtime.state import ContainerState, containers_dir, find
from tests.conftest import CliRunner, assert_clean_error, require_tools
from tests.runtime.polling import wait_for

pytestmark = pytest.mark.privileged

BURN = ("sh", "-c", "while :; do :; done")


@pytest.fixture
def busybox(lazyctr: CliRunner, busybox_tar: Path) -> Iterator[str]:
    lazyctr("import", str(busybox_tar), "busybox")
    yield "busybox"
    for state in json.loads(lazyctr("ps", "-a", "--json").out):  # whatever a failed test left running
        lazyctr("rm", "-f", state["id"], ok=False)


def state_of(root: Path, name: str) -> ContainerState:
    return find(containers_dir(root), name)


def usage(root: Path, name: str) -> Usage:
    state = state_of(root, name)
    return read_usage(Cgroup.open(state.id), state.pid)


def stats(lazyctr: CliRunner, name: str) -> dict[str, Any]:
    (line,) = lazyctr("stats", "--no-stream", "--format", "json", name).out.splitlines()
    row: dict[str, Any] = json.loads(line)
    return row


# --- stats and top ---------------------------------------------------------------------------------


def test_stats_cpu_and_pids_move_with_a_cpu_burner(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    lazyctr("run", "-d", "--name", "idle", busybox, "sleep", "100")
    lazyctr("run", "-d", "--name", "burner", busybox, *BURN)
    out = lazyctr("stats", "--no-stream", "--format", "json", "burner", "idle").out
    burner, idle = (json.loads(line) for line in out.splitlines())
    assert burner["Raw"]["cpu_percent"] > idle["Raw"]["cpu_percent"]
    assert float(burner["CPUPerc"].rstrip("%")) > 0
    assert (burner["Name"], burner["PIDs"], idle["Name"]) == ("burner", "1", "idle")
    first = usage(root, "burner").cpu_ns
    wait_for(lambda: usage(root, "burner").cpu_ns > first, what="the burner's CPU time to grow")
    table = lazyctr("stats", "--no-stream").out.splitlines()
    assert table[0].split()[:3] == ["CONTAINER", "ID", "NAME"]
    assert sorted(line.split()[1] for line in table[1:]) == ["burner", "idle"]


def test_stats_memory_moves_with_an_allocator_and_shows_the_limit(
    lazyctr: CliRunner, busybox: str, root: Path, tmp_path: Path
) -> None:
    script = (
        "while [ ! -e /data/go ]; do sleep 0.05; done;"
        " x=$(yes aaaaaaa | head -c 40000000); touch /data/done; sleep 100; echo ${#x}"  # the shell holds x
    )
    lazyctr(
        "run", "-d", "--name", "eater", "-m", "256m", "-v", f"{tmp_path}:/data", busybox, "sh", "-c", script
    )
    before = usage(root, "eater")
    assert before.memory_limit == 256 * 1024 * 1024
    (tmp_path / "go").touch()
    wait_for(lambda: (tmp_path / "done").exists(), what="the allocation")
    after = usage(root, "eater")
    assert after.memory - before.memory > 30_000_000
    row = stats(lazyctr, "eater")
    assert row["MemUsage"].endswith(" / 256MiB") and row["Raw"]["memory"] > 30_000_000


@pytest.mark.extended
def test_stats_network_io_moves_on_the_containers_interface(
    lazyctr: CliRunner, busybox: str, root: Path
) -> None:
    require_tools("ip", "nsenter")
    lazyctr("run", "-d", "--name", "talker", busybox, "sleep", "100")
    assert stats(lazyctr, "talker")["NetIO"] == "0B / 0B"  # loopback only: docker counts no traffic on lo
    pid = state_of(root, "talker").pid
    namespace, veth = f"lzl-net-{uuid.uuid4().hex[:6]}", f"lzl{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        for command in (
            [
                "ip",
                "link",
                "add",
                veth,
                "netns",
                namespace,
                "type",
                "veth",
                "peer",
                "name",
                "eth1",
                "netns",
                str(pid),
            ],
            ["ip", "-n", namespace, "addr", "add", "169.254.77.1/30", "dev", veth],
            ["ip", "-n", namespace, "link", "set", veth, "up"],
            ["nsenter", "-t", str(pid), "-n", "ip", "addr", "add", "169.254.77.2/30", "dev", "eth1"],
            ["nsenter", "-t", str(pid), "-n", "ip", "link", "set", "eth1", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True)
        lazyctr("exec", "talker", "ping", "-c", "3", "-i", "0.2", "-W", "5", "169.254.77.1")
        row = stats(lazyctr, "talker")
        assert (
            row["Raw"]["net_rx"] >= 3 * 98 and row["Raw"]["net_tx"] >= 3 * 98
        )  # three echo requests and replies
        assert row["NetIO"] != "0B / 0B"
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=True)


@pytest.mark.extended
def test_top_lists_the_containers_processes_only(lazyctr: CliRunner, busybox: str) -> None:
    lazyctr("run", "-d", "--name", "tree", busybox, "sh", "-c", "sleep 101 & sleep 102; wait")
    wait_for(lambda: len(lazyctr("top", "tree").out.splitlines()) == 4, what="three processes")
    header, *lines = lazyctr("top", "tree").out.splitlines()
    assert header.split()[:3] == ["UID", "PID", "PPID"]
    assert {line.split(None, 7)[7] for line in lines} == {
        "sh -c sleep 101 & sleep 102; wait",
        "sleep 101",
        "sleep 102",
    }
    custom = lazyctr("top", "tree", "-o", "pid,comm").out.splitlines()
    assert custom[0].split() == ["PID", "COMMAND"] and len(custom) == 4


# --- pause and unpause ------------------------------------------------------------------------------


def test_pause_stops_cpu_use_and_unpause_resumes_it(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    lazyctr("run", "-d", "--name", "spin", busybox, *BURN)
    lazyctr("pause", "spin")
    frozen = usage(root, "spin").cpu_ns
    time.sleep(0.5)
    assert usage(root, "spin").cpu_ns == frozen
    assert "Up (Paused)" in lazyctr("ps").out
    assert_clean_error(lazyctr("pause", "spin", ok=False), "container spin is already paused")
    lazyctr("unpause", "spin")
    wait_for(lambda: usage(root, "spin").cpu_ns > frozen, what="the CPU time to grow again")
    assert_clean_error(lazyctr("unpause", "spin", ok=False), "container spin is not paused")
    lazyctr("pause", "spin")
    lazyctr("kill", "spin")  # a paused container still dies (v1's freezer holds even SIGKILL: it is thawed)
    assert lazyctr("wait", "spin").out == "137\n"


def test_pause_stats_and_top_of_a_stopped_container_are_refused(lazyctr: CliRunner, busybox: str) -> None:
    lazyctr("run", "--name", "done", busybox, "true")
    for args in (("pause", "done"), ("unpause", "done"), ("stats", "--no-stream", "done"), ("top", "done")):
        result = lazyctr(*args, ok=False)
        assert result.code == 1  # docker's: "Container ... is not running", status 1
        assert_clean_error(result, "container done is not running")


# --- create, start, restart, wait ------------------------------------------------------------------


def test_create_then_start_runs_the_container(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    container_id = lazyctr(
        "create", "--name", "later", "-e", "WHO=you", busybox, "sh", "-c", 'echo "hi $WHO"; exit 4'
    ).out.strip()
    assert state_of(root, "later").id == container_id
    assert "Created" in lazyctr("ps", "-a").out
    attached = lazyctr("start", "-a", "later", ok=False)
    assert (attached.code, attached.out) == (4, "hi you\n")
    assert lazyctr("start", "later").out == "later\n"  # again, detached this time: its output goes to the log
    assert lazyctr("wait", "later").out == "4\n"
    assert lazyctr("logs", "later").out == "hi you\n"


@pytest.mark.extended
def test_restart_runs_the_container_again(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    lazyctr("run", "-d", "--name", "again", busybox, "sleep", "100")
    first = state_of(root, "again").pid
    lazyctr("restart", "-t", "1", "again")
    second = state_of(root, "again")
    assert second.running and second.pid != first


def test_on_failure_2_restarts_exactly_twice(
    lazyctr: CliRunner, busybox: str, root: Path, tmp_path: Path
) -> None:
    script = "echo run >> /data/runs; exit 3"
    lazyctr(
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        "-v",
        f"{tmp_path}:/data",
        busybox,
        "sh",
        "-c",
        script,
    )
    assert lazyctr("wait", "flaky").out == "3\n"
    assert (tmp_path / "runs").read_text() == "run\n" * 3
    assert state_of(root, "flaky").restart_count == 2


@pytest.mark.extended
def test_on_failure_does_not_restart_a_success(lazyctr: CliRunner, busybox: str, tmp_path: Path) -> None:
    script = "echo run >> /data/runs"
    lazyctr(
        "run",
        "-d",
        "--name",
        "fine",
        "--restart",
        "on-failure",
        "-v",
        f"{tmp_path}:/data",
        busybox,
        "sh",
        "-c",
        script,
    )
    assert lazyctr("wait", "fine").out == "0\n"
    assert (tmp_path / "runs").read_text() == "run\n"


@pytest.mark.extended
def test_always_restarts_until_stopped(lazyctr: CliRunner, busybox: str, root: Path, tmp_path: Path) -> None:
    script = "echo run >> /data/runs; sleep 0.2"
    lazyctr(
        "run",
        "-d",
        "--name",
        "loop",
        "--restart",
        "always",
        "-v",
        f"{tmp_path}:/data",
        busybox,
        "sh",
        "-c",
        script,
    )
    runs = tmp_path / "runs"
    wait_for(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 3, what="three runs")
    lazyctr("stop", "-t", "1", "loop")
    lazyctr("wait", "loop")
    count = runs.read_text()
    time.sleep(0.5)
    assert runs.read_text() == count  # a stopped container is not restarted


# --- rename ------------------------------------------------------------------------------------------


def test_rename_then_refer_by_the_new_name(lazyctr: CliRunner, busybox: str) -> None:
    lazyctr("run", "-d", "--name", "before", busybox, "sleep", "100")
    lazyctr("rename", "before", "after")
    assert "after" in lazyctr("ps").out.split()
    assert_clean_error(lazyctr("kill", "before", ok=False), "no such container: before")
    assert_clean_error(lazyctr("rename", "after", "no/slash", ok=False), "invalid container name 'no/slash'")
    assert_clean_error(lazyctr("run", "--name", "after", busybox, "true", ok=False), "already in use")
    lazyctr("run", "--name", "other", busybox, "true")
    assert_clean_error(
        lazyctr("rename", "after", "other", ok=False), "the container name 'other' is already in use"
    )
    lazyctr("kill", "after")
    assert lazyctr("wait", "after").out == "137\n"
    assert lazyctr("ps", "-a", "--json").out.count('"name": "after"') == 1  # the exited state keeps it


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("stats", "--no-stream", "ghost"),
        ("top", "ghost"),
        ("start", "ghost"),
        ("restart", "ghost"),
        ("wait", "ghost"),
        ("pause", "ghost"),
        ("unpause", "ghost"),
        ("rename", "ghost", "spirit"),
    ],
)
def test_unknown_container_is_one_line_and_exit_1_as_docker(
    lazyctr: CliRunner, args: tuple[str, ...]
) -> None:
    result = lazyctr(*args, ok=False)
    assert result.code == 1  # docker: "Error response from daemon: No such container: ghost", status 1
    assert_clean_error(result, "no such container: ghost")


@pytest.mark.parametrize(
    ("policy", "fragment"),
    [
        ("sometimes", "invalid restart policy 'sometimes': use one of"),
        ("always:3", "a maximum retry count goes only with 'on-failure'"),
        ("on-failure:x", "the maximum retry count must be a number"),
        ("on-failure:-1", "the maximum retry count must be a number"),
    ],
)
def test_invalid_restart_policy_is_refused(policy: str, fragment: str) -> None:
    with pytest.raises(ContainerError, match=re.escape(fragment)) as refused:
        RestartPolicy.parse(policy)
    assert refused.value.exit_code == 125  # docker run's status for options it refuses


def test_invalid_restart_policy_on_the_command_line(lazyctr: CliRunner, root: Path) -> None:
    result = lazyctr(
        "run", "-d", "--restart", "sometimes", "busybox", "true", ok=False
    )  # refused before the image
    assert result.code == 125
    assert_clean_error(result, "invalid restart policy 'sometimes'")
    assert not containers_dir(root).exists() or not any(containers_dir(root).iterdir())  # nothing half-made


def test_restart_policy_and_rm_conflict(lazyctr: CliRunner) -> None:
    result = lazyctr("run", "-d", "--rm", "--restart", "always", "busybox", "true", ok=False)
    assert result.code == 125
    assert_clean_error(result, "--restart and --rm conflict")


def test_restart_policies_decide_as_docker_s() -> None:
    on_failure = RestartPolicy.parse("on-failure:2")
    assert [on_failure.restarts_after(1, n) for n in range(3)] == [True, True, False]
    assert not on_failure.restarts_after(0, 0)
    assert RestartPolicy.parse("on-failure").restarts_after(1, 1000)
    assert RestartPolicy.parse("always").restarts_after(0, 5) and not RestartPolicy.parse(
        "no"
    ).restarts_after(1, 0)
    assert str(on_failure) == "on-failure:2" and str(RestartPolicy.parse("always")) == "always"
