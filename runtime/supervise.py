"""Containers over their lifetime, from any shell: run one to its end (attached or detached, its state
saying how it ended), signal it, stop it (SIGTERM, then SIGKILL after a grace period), wait for it
to exit and remove it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runtime.container import Container
from runtime.drivers import LazyDriver
from runtime.process import EXIT_SETUP_FAILED
from runtime.state import LOG_FILE, ContainerState, containers_dir
from storage.errors import NotFound

DETACH_TIMEOUT = 30.0  # seconds `run -d` waits for the container to start
KILL_TIMEOUT = 10.0  # seconds to wait for a container to end after SIGKILL


def run_to_end(container: Container, remove: bool) -> int:
    """Run the container; if it cannot start its state still says `exited` (125), and with `remove`
    its directory goes whatever happens."""
    try:
        return container.run()
    except BaseException:
        container.state.status, container.state.exit_code = "exited", EXIT_SETUP_FAILED
        container.state.save(container.dir)
        raise
    finally:
        if remove:
            container.remove()


def run_detached(container: Container, remove: bool) -> None:
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
            status = run_to_end(container, remove)
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
    """`sig` to the container's PID 1; one that has just ended is no error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, sig)


def stop(root: Path, state: ContainerState, grace: float) -> None:
    """SIGTERM, and SIGKILL if the container still runs `grace` seconds later; returns once it ended."""
    if not state.running:
        return
    send_signal(state, signal.SIGTERM)
    if not wait_exited(root, state, grace):
        kill(root, state)


def kill(root: Path, state: ContainerState) -> None:
    """SIGKILL, and wait (a while) for the container to end."""
    send_signal(state, signal.SIGKILL)
    wait_exited(root, state, KILL_TIMEOUT)


def remove(root: Path, state: ContainerState) -> None:
    """Kill the container if it runs and delete its directory; a lazy mount it was the last to use
    goes too, even if its supervisor was killed before it could let go of it."""
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
