"""`lazyctr service`: the resident lazy engine of a root, which lazy pulls and mounts go through.

A real registry on 127.0.0.1 holds busybox, pushed from another root; the service runs as the real
command line does it, on the test's root; `pull` and `run` are the real command line. Each request
the service answers is a line of its output, which is how a test tells the service did the work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lazyfs.service import socket_path
from tests.conftest import CliRunner, assert_clean_error, cli_command
from tests.lazyctr.test_cli_push_pull import busybox_file
from tests.runtime.polling import wait_for
from tests.runtime.test_lazy_driver import lazy_mounts, no_mount_left, pushed, registry  # noqa: F401

pytestmark = pytest.mark.privileged  # the service's socket is in /run/lazyctr, root's


class Service:
    """`lazyctr service` on a root; `lines` is what it has printed so far."""

    def __init__(self, root: Path) -> None:
        self.process = subprocess.Popen(
            cli_command(root, "service"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        assert first.startswith("serving on "), first
        self.lines: list[str] = []

    def read_until(self, fragment: str) -> str:
        """The next line of its output that holds `fragment` (lines before it are kept too)."""
        assert self.process.stdout is not None
        while line := self.process.stdout.readline():
            self.lines.append(line.rstrip("\n"))
            if fragment in line:
                return line
        raise AssertionError(f"the service ended without saying {fragment!r}: {self.lines}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=15)


def nothing_held(root: Path) -> bool:
    """No lazy mount of the root, and no slot left (a slot lives as long as its mount's users)."""
    return not lazy_mounts(root) and not any((root / "lazy").iterdir())


@pytest.fixture
def service(root: Path) -> Iterator[Service]:
    running = Service(root)
    yield running
    running.stop()


def test_a_lazy_pull_goes_through_the_service(lazyctr: CliRunner, service: Service, pushed: str) -> None:  # noqa: F811
    image_id = lazyctr("pull", pushed).out.strip()
    assert service.read_until(f"pull {pushed}") == f"pull {pushed}: {image_id}\n"
    (row,) = json.loads(lazyctr("images", "--json").out)
    assert row["Name"] == pushed


def test_a_lazy_run_mounts_through_the_service_and_leaves_no_mount(
    lazyctr: CliRunner,
    service: Service,
    pushed: str,  # noqa: F811
    busybox_tar: Path,
    root: Path,
) -> None:
    lazyctr("pull", pushed)
    out = lazyctr("run", "--rm", "--driver", "lazy", pushed, "cat", "/etc/passwd").stdout
    assert out == busybox_file(busybox_tar, "etc/passwd")
    assert service.read_until("mount ").endswith(": ok\n")
    wait_for(lambda: not lazy_mounts(root), what="the mount to go with its last container")


def test_a_pull_mounts_the_image_for_the_run_that_follows_which_takes_the_mount_over(
    lazyctr: CliRunner,
    service: Service,
    pushed: str,  # noqa: F811
    root: Path,
) -> None:
    lazyctr("pull", pushed)
    assert service.read_until("mount ").endswith(": ok\n")  # after the pull's answer: its profile comes
    (mountpoint,) = lazy_mounts(root)
    users = mountpoint.parent / "users"
    wait_for(lambda: users.is_dir() and [u.name[:5] for u in users.iterdir()] == ["pull-"], what="its hold")
    assert lazyctr("run", "--rm", "--driver", "lazy", pushed, "true").code == 0
    wait_for(lambda: not lazy_mounts(root), what="the mount to go with the container that took it over")
    assert sum("mount " in line for line in service.lines) == 1  # the run mounted nothing itself
    service.stop()
    assert sum(line.startswith("mount ") for line in service.lines) == 1


def test_a_stop_of_the_service_ends_a_pulls_hold_and_its_mount(
    lazyctr: CliRunner,
    service: Service,
    pushed: str,  # noqa: F811
    root: Path,
) -> None:
    lazyctr("pull", pushed)
    service.read_until("mount ")
    assert len(lazy_mounts(root)) == 1
    assert service.stop() == 0
    wait_for(lambda: nothing_held(root), what="nothing left for a lease to end", timeout=10)


def test_a_pulls_hold_lets_go_after_its_lease_when_no_container_comes(
    lazyctr: CliRunner,
    pushed: str,  # noqa: F811
    root: Path,
) -> None:
    lazyctr("pull", pushed)  # no service: nothing mounted
    assert not lazy_mounts(root)
    hold = (
        "import os, sys; from pathlib import Path; from runtime.lazy import hold_for_a_start; "
        "from storage.store import Store; store = Store(Path(sys.argv[1])); "
        "hold_for_a_start(store, store.image(sys.argv[2]), os.getppid(), lease=float(sys.argv[3]))"
    )
    source = Path(__file__).resolve().parents[2]
    holding = subprocess.Popen([sys.executable, "-c", hold, str(root), pushed, "1.0"], cwd=source)
    wait_for(lambda: len(lazy_mounts(root)) == 1 or holding.poll() is not None, what="the held mount")
    assert lazy_mounts(root) and holding.poll() is None  # up, and held
    assert holding.wait(timeout=15) == 0
    assert nothing_held(root)  # gone with its lease


def test_a_hold_that_comes_after_a_container_holds_nothing(
    lazyctr: CliRunner,
    pushed: str,  # noqa: F811
    root: Path,
) -> None:
    lazyctr("pull", pushed)  # no service: nothing mounted, nothing held
    container = lazyctr("run", "-d", "--driver", "lazy", pushed, "sleep", "60").out.strip()
    (mountpoint,) = lazy_mounts(root)
    late = (
        "import os, sys; from pathlib import Path; from runtime.lazy import hold_for_a_start; "
        "from storage.store import Store; store = Store(Path(sys.argv[1])); "
        "hold_for_a_start(store, store.image(sys.argv[2]), os.getppid(), lease=30.0)"
    )
    source = Path(__file__).resolve().parents[2]
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", late, str(root), pushed], cwd=source, check=True, timeout=25)
    assert time.monotonic() - started < 15  # it returned at once, not after its lease
    assert [user.name for user in (mountpoint.parent / "users").iterdir()] == [container]
    lazyctr("rm", "-f", container)
    assert not lazy_mounts(root)  # the container's end is the mount's end


def test_a_ctrl_c_at_the_services_terminal_ends_a_pulls_hold_and_its_mount(
    lazyctr: CliRunner,
    pushed: str,  # noqa: F811
    root: Path,
) -> None:
    # Its own process group, as a terminal's foreground job: a Ctrl-C goes to the whole group, the
    # pull's child that holds the mount included.
    service = subprocess.Popen(
        cli_command(root, "service"), stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert service.stdout is not None and service.stdout.readline().startswith("serving on ")
    lazyctr("pull", pushed)
    wait_for(lambda: len(lazy_mounts(root)) == 1, what="the pull's mount")
    os.killpg(service.pid, signal.SIGINT)
    assert service.wait(timeout=15) == 0
    wait_for(lambda: nothing_held(root), what="the hold, its mount and its slot to go", timeout=10)


def test_the_callers_environment_and_errors_go_with_the_request(
    lazyctr: CliRunner,
    service: Service,
    pushed: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    policy = tmp_path / "reject.json"
    policy.write_text('{"default": [{"type": "reject"}]}')
    refused = lazyctr("--policy", str(policy), "pull", pushed, ok=False)  # the policy rides in LAZYCTR_POLICY
    assert_clean_error(refused, "the policy rejects it")
    assert "error: " in service.read_until(f"pull {pushed}")
    unknown = lazyctr("pull", pushed.replace(":latest", ":nope"), ok=False)
    assert_clean_error(unknown, "MANIFEST_UNKNOWN")
    assert unknown.code == 1
    assert "MANIFEST_UNKNOWN" in service.read_until(":nope")


def test_without_a_listening_service_the_command_line_does_the_work(
    lazyctr: CliRunner,
    root: Path,
    pushed: str,  # noqa: F811
) -> None:
    killed = Service(root)
    killed.process.kill()  # SIGKILL: its socket stays behind, and nobody listens on it
    killed.process.wait()
    assert socket_path(root).is_socket()
    assert lazyctr("pull", pushed).out.strip().startswith("sha256:")
    for left in (socket_path(root), socket_path(root).with_suffix(".lock")):
        left.unlink()  # what the killed service could not tidy away


def test_a_service_that_ends_without_answering_is_one_line(
    lazyctr: CliRunner,
    root: Path,
    pushed: str,  # noqa: F811
) -> None:
    path = socket_path(root)
    path.parent.mkdir(mode=0o700, exist_ok=True)

    def read_the_request_and_hang_up() -> None:
        connection, _ = fake.accept()
        with connection, connection.makefile("rb") as request:
            request.readline()

    with socket.socket(socket.AF_UNIX) as fake:
        fake.bind(str(path))
        fake.listen(1)
        answering = threading.Thread(target=read_the_request_and_hang_up)
        answering.start()
        try:
            result = lazyctr("pull", pushed, ok=False)
        finally:
            answering.join()
            path.unlink()
    assert_clean_error(result, "the lazyctr service ended without answering")


def test_a_second_service_on_a_root_is_refused_and_a_stop_removes_the_socket(
    lazyctr: CliRunner, service: Service, root: Path
) -> None:
    assert_clean_error(lazyctr("service", ok=False), "a lazyctr service of this root runs already")
    assert service.stop() == 0
    assert not socket_path(root).exists()


def test_run_through_the_service_exits_and_fails_as_without_it(
    lazyctr: CliRunner,
    service: Service,
    pushed: str,  # noqa: F811
    root: Path,
    tmp_path: Path,
) -> None:
    lazyctr("pull", pushed)
    assert lazyctr("run", "--rm", "--driver", "lazy", pushed, "sh", "-c", "exit 3", ok=False).code == 3
    assert service.read_until("mount ").endswith(": ok\n")
    policy = tmp_path / "reject.json"
    policy.write_text('{"default": [{"type": "reject"}]}')
    argv = ("--policy", str(policy), "run", "--rm", "--driver", "lazy", pushed, "true")
    through = lazyctr(*argv, ok=False)  # the lazy mount checks the policy: in the service's child
    assert "error: " in service.read_until("mount ")
    assert service.stop() == 0
    alone = lazyctr(*argv, ok=False)
    assert_clean_error(through, "the policy rejects it")
    assert (through.code, through.stderr) == (alone.code, alone.stderr)
    wait_for(lambda: not lazy_mounts(root), what="no mount left")
