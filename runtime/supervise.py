"""Containers over their lifetime, from any shell: run one to its end (attached or detached, its state
saying how it ended; detached, again as its restart policy says), signal it, stop it (SIGTERM, then
SIGKILL after a grace period), wait for it to exit and remove it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runtime.cgroups import Cgroup, CgroupError
from runtime.container import Container
from runtime.drivers import LazyDriver
from runtime.process import EXIT_SETUP_FAILED
from runtime.restart import NO_RESTART, RestartPolicy, mark_stopped, next_delay, stopped_by_user
from runtime.state import LOG_FILE, STATE_FILE, ContainerState, containers_dir
from storage.errors import NotFound

DETACH_TIMEOUT = 30.0  # seconds `run -d` waits for the container to start
KILL_TIMEOUT = 10.0  # seconds to wait for a container to end after SIGKILL


def run_to_end(container: Container, remove: bool, policy: RestartPolicy = NO_RESTART) -> int:
    """Run the container, again as long as `policy` says (runtime/restart.py); if it cannot start its
    state still says `exited` (125), and with `remove` its directory goes whatever happens."""
    try:
        started, delay = time.monotonic(), 0.0
        status = container.run()
        while _restarts(container, policy, status):
            delay = next_delay(delay, time.monotonic() - started)
            time.sleep(delay)
            if not _restarts(container, policy, status):  # stopped or removed meanwhile
                break
            container.state.restart_count += 1
            started = time.monotonic()
            status = container.run()
        return status
    except BaseException:
        container.state.status, container.state.exit_code = "exited", EXIT_SETUP_FAILED
        container.state.save(container.dir)
        raise
    finally:
        if remove:
            container.remove()


def _restarts(container: Container, policy: RestartPolicy, status: int) -> bool:
    """Whether the supervisor runs the container again: its policy says so, and the user has neither
    stopped nor removed it."""
    return (
        policy.restarts_after(status, container.state.restart_count)
        and not stopped_by_user(container.dir)
        and (container.dir / STATE_FILE).exists()
    )


def run_detached(container: Container, remove: bool, policy: RestartPolicy = NO_RESTART) -> None:
    """Supervise the container from a child in its own session, its output going to the log; return
    once it runs (or has ended already), as docker does."""
    if os.fork() == 0:
        os.setsid()
        log = os.open(container.dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        status = EXIT_SETUP_FAILED
        try:
            status = run_to_end(container, remove, policy)
            note = recording_note(container)
            if note:
                print(note, file=sys.stderr)
        except BaseException as e:
            print(f"lazyctr: error: {e}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(status)
    _poll(lambda: _status(container.dir) not in (None, "created"), DETACH_TIMEOUT)


def recording_note(container: Container) -> str | None:
    """What became of the access profile `--record-profile` recorded, if it did."""
    driver = container.driver
    if not isinstance(driver, LazyDriver) or driver.recorded is None:
        return None
    pieces, size = driver.recorded
    if pieces:
        return f"lazyctr: access profile of {container.image.name} recorded: {pieces} pieces, {size} bytes"
    return f"lazyctr: no access profile recorded: the container read nothing from {container.image.name}"


def send_signal(state: ContainerState, sig: int) -> None:
    """`sig` to the container's PID 1; one that has just ended is no error. A paused container is
    thawed so that it gets the signal (as docker does)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, sig)
    with contextlib.suppress(CgroupError, OSError):
        cgroup = Cgroup.open(state.id)
        if cgroup.frozen():
            cgroup.thaw()


def stop(root: Path, state: ContainerState, grace: float) -> None:
    """Its stop signal (SIGTERM unless it says otherwise), and SIGKILL if the container still runs
    `grace` seconds later; returns once it ended."""
    mark_stopped(containers_dir(root) / state.id)  # its restart policy no longer applies
    if not state.running:
        return
    send_signal(state, state.stop_signal or signal.SIGTERM)
    if not wait_exited(root, state, grace):
        kill(root, state)


def kill(root: Path, state: ContainerState) -> None:
    """SIGKILL, and wait (a while) for the container to end."""
    mark_stopped(containers_dir(root) / state.id)
    send_signal(state, signal.SIGKILL)
    wait_exited(root, state, KILL_TIMEOUT)


def remove(root: Path, state: ContainerState) -> None:
    """Kill the container if it runs and delete its directory; a lazy mount it was the last to use
    goes too, even if its supervisor was killed before it could let go of it."""
    mark_stopped(containers_dir(root) / state.id)  # a supervisor waiting to restart it gives up
    if state.running:
        kill(root, state)
    directory = containers_dir(root) / state.id
    if (directory / "network.json").exists():  # its supervisor died before it could detach it
        from runtime.network.sandbox import release

        release(directory)
    shutil.rmtree(directory, ignore_errors=True)
    from runtime import lazy  # imports FUSE: only a root with lazy mounts pays for it

    if (root / lazy.LAZY_DIR).is_dir():
        lazy.prune(root)


def wait_exited(root: Path, state: ContainerState, timeout: float) -> bool:
    """Whether the container ended (or was removed) within `timeout` seconds."""
    directory = containers_dir(root) / state.id
    return _poll(lambda: _status(directory) not in (None, "running"), timeout)


def _status(directory: Path) -> str | None:
    """The container's status; `removed` once its directory is gone, None while it has no state."""
    try:
        return ContainerState.load(directory).status
    except NotFound:
        return None if directory.exists() else "removed"


def _poll(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.02)
    return False
