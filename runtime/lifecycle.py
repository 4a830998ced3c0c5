"""A container's life after `run`: what `start` needs kept on disk, and start, restart, wait, pause,
unpause and rename.

`run` and `create` keep what a container was made with (its spec, limits, driver, image, restart
policy, `--rm`) in `containers/<id>/config.json`, so that `start` can run it again from any shell with
the root file system (upper dir) it had. `pause` freezes the container's cgroup (v1 freezer, v2
cgroup.freeze); `rename` writes the new name beside the state, as the state belongs to the supervisor.
Errors say what docker says, with docker's exit status (1) for a container in the wrong state.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lazyfs.host import process_alive
from runtime import supervise
from runtime.cgroups import Cgroup, CgroupError, Limits
from runtime.container import Container
from runtime.drivers import choose_driver
from runtime.network.ports import PortMapping, reserve_ports
from runtime.restart import NO_RESTART, RestartPolicy, clear_stopped
from runtime.spec import Spec, Volume
from runtime.state import NAME_FILE, ContainerState, all_states, containers_dir
from storage.errors import LazyctrError, NotFound, StorageError
from storage.files import atomic_write, file_lock
from storage.store import Store

CONFIG_FILE = "config.json"
SUPERVISOR_GONE_TIMEOUT = 30.0  # seconds `start` waits for the supervisor of the last run to exit
POLL = 0.02
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # docker's container names


class LifecycleError(LazyctrError):
    """A container in the wrong state for what was asked (docker exits 1 for these too)."""


@dataclass(frozen=True)
class Settings:
    """How a container is supervised, beside what it runs."""

    restart: RestartPolicy = NO_RESTART
    remove: bool = False  # --rm


def save_config(container: Container, settings: Settings) -> None:
    """Keep what `start` needs to run `container` again (called once it is created)."""
    config = {
        "image": str(container.image.descriptor.digest),
        "spec": asdict(container.spec),
        "limits": asdict(container.limits),
        "driver": container.driver.name,
        "restart": str(settings.restart),
        "remove": settings.remove,
    }
    atomic_write(container.dir / CONFIG_FILE, json.dumps(config, default=str).encode())


def saved_volumes(root: Path, state: ContainerState) -> list[Volume]:
    """The volumes the container was created with (none known for one run with --rm)."""
    try:
        config: dict[str, Any] = json.loads((containers_dir(root) / state.id / CONFIG_FILE).read_text())
    except FileNotFoundError:
        return []
    return _volumes(config["spec"])


def _volumes(spec: dict[str, Any]) -> list[Volume]:
    return [Volume(**{**v, "source": Path(v["source"])}) for v in spec.get("volumes", [])]


def load_container(store: Store, root: Path, state: ContainerState) -> tuple[Container, Settings]:
    """The container `state` describes, ready to run again, as `run` or `create` made it."""
    directory = containers_dir(root) / state.id
    try:
        config: dict[str, Any] = json.loads((directory / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise LifecycleError(
            f"container {state.name} cannot be started again: it was run with --rm (or by an older lazyctr)"
        ) from None
    spec_fields = {f.name for f in fields(Spec)}
    data = {key: value for key, value in config["spec"].items() if key in spec_fields}
    data["volumes"] = _volumes(data)
    data["ports"] = [PortMapping(**port) for port in data.get("ports", [])]
    spec = Spec(**data)
    try:
        image = store.image(config["image"])
    except StorageError as e:
        raise LifecycleError(f"the image of container {state.name} is gone: {e}") from None
    container = Container(
        store, image, spec, choose_driver(store, image, config["driver"]), Limits(**config["limits"])
    )
    container.state = state
    return container, Settings(RestartPolicy.parse(config["restart"]), config["remove"])


def start(store: Store, root: Path, state: ContainerState, attach: bool) -> int | None:
    """Run a created or exited container again: in the background under its restart policy, or with
    `attach` in this process (its output here; returns its exit status). A running one is left be."""
    if state.running:
        return None
    _wait_supervisor_gone(state)
    container, settings = load_container(store, root, state)
    clear_stopped(container.dir)
    state.status, state.exit_code, state.pid, state.supervisor = "created", None, 0, 0
    state.oom_killed, state.restart_count, state.detached = False, 0, not attach
    state.save(container.dir)
    held = reserve_ports(container.spec.ports)  # as `run`: a port taken meanwhile fails here
    try:
        if attach:
            return supervise.run_to_end(container, settings.remove)
        container.spec.interactive = container.spec.tty = False  # nobody is there to type
        supervise.run_detached(container, settings.remove, settings.restart)
    finally:
        for port in held:
            port.close()  # a detached container's supervisor holds its own copy
    return None


def restart(store: Store, root: Path, state: ContainerState, grace: float) -> None:
    """Stop the container (SIGTERM, SIGKILL after `grace` seconds) if it runs, and start it again."""
    supervise.stop(root, state, grace)
    start(store, root, ContainerState.load(containers_dir(root) / state.id), attach=False)


def wait(root: Path, state: ContainerState) -> int:
    """Block until the container has ended for good (its supervisor restarts it no more); its exit status."""
    directory = containers_dir(root) / state.id
    while True:
        try:
            current = ContainerState.load(directory)
        except NotFound:
            raise NotFound(f"container {state.name} was removed while waiting for it") from None
        if current.status == "exited" and not process_alive(current.supervisor):
            return current.exit_code if current.exit_code is not None else 0
        time.sleep(POLL)


def pause(state: ContainerState) -> None:
    """Freeze every process of the running container."""
    cgroup = _running_cgroup(state)
    if cgroup.frozen():
        raise LifecycleError(f"container {state.name} is already paused")
    try:
        cgroup.freeze()
    except CgroupError as e:
        raise LifecycleError(str(e)) from None


def unpause(state: ContainerState) -> None:
    """Let a paused container's processes run again."""
    cgroup = _running_cgroup(state)
    if not cgroup.frozen():
        raise LifecycleError(f"container {state.name} is not paused")
    try:
        cgroup.thaw()
    except CgroupError as e:
        raise LifecycleError(str(e)) from None


def paused(state: ContainerState) -> bool:
    try:
        return state.running and Cgroup.open(state.id).frozen()
    except CgroupError:
        return False


def rename(store: Store, root: Path, state: ContainerState, name: str) -> None:
    """Give the container `name`, which no other container may have (the check and the write hold the
    lock `create` takes, so two containers never end up with one name)."""
    if not _NAME.fullmatch(name):
        raise LifecycleError(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    if name == state.name:
        raise LifecycleError(f"container {state.name} already has the name {name!r}")
    containers = containers_dir(root)
    with file_lock(store.locks / "containers.lock"):
        for other in all_states(containers):
            if other.name == name:
                raise LifecycleError(
                    f"the container name {name!r} is already in use by container {other.id[:12]}"
                )
        atomic_write(containers / state.id / NAME_FILE, name.encode())


def _running_cgroup(state: ContainerState) -> Cgroup:
    if not state.running:
        raise LifecycleError(f"container {state.name} is not running")
    try:
        return Cgroup.open(state.id)
    except CgroupError:
        raise LifecycleError(f"container {state.name} is not running") from None


def _wait_supervisor_gone(state: ContainerState) -> None:
    """The supervisor of the last run may still be letting go of it: two must never write one state."""
    deadline = time.monotonic() + SUPERVISOR_GONE_TIMEOUT
    while process_alive(state.supervisor):
        if time.monotonic() > deadline:
            raise LifecycleError(
                f"container {state.name}: its supervisor (PID {state.supervisor}) does not exit"
            )
        time.sleep(POLL)
