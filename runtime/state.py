"""Container state on disk, `containers/<id>/state.json`, so that ps, stop, kill, rm and logs
work from any shell. Written atomically by the process that supervises the container."""

from __future__ import annotations

import json
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lazyfs.host import process_alive
from runtime import seccomp
from storage.errors import NotFound
from storage.files import atomic_write

CONTAINERS_DIR = "containers"
STATE_FILE = "state.json"
LOG_FILE = "log"
NAME_FILE = "name"  # the name `rename` gave, over the one in the state (which its supervisor writes)


@dataclass
class ContainerState:
    id: str
    name: str
    image: str
    command: list[str]
    created: float = field(default_factory=time.time)
    status: str = "created"  # created, running, exited
    pid: int = 0  # the container's PID 1, as the host sees it
    supervisor: int = 0  # the lazyctr process waiting for it
    exit_code: int | None = None
    oom_killed: bool = False
    detached: bool = False
    layers: list[str] = field(default_factory=list)  # diff_ids of its image: gc keeps them extracted
    driver: str = ""  # the storage driver of its root file system
    seccomp: str = seccomp.DEFAULT  # its seccomp profile, which `exec` gives its processes too
    restart_count: int = 0  # how often its restart policy has started it again since `run` or `start`
    stop_signal: int = 15  # what `stop` sends before SIGKILL (SIGTERM; the image's StopSignal; systemd's)

    def save(self, directory: Path) -> None:
        atomic_write(directory / STATE_FILE, json.dumps(asdict(self)).encode())

    @classmethod
    def load(cls, directory: Path) -> ContainerState:
        try:
            data: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
            state = cls(**data)
        except (OSError, ValueError, TypeError):
            raise NotFound(f"no container state in {directory}") from None
        with suppress(FileNotFoundError):
            state.name = (directory / NAME_FILE).read_text()
        if state.status == "running" and not process_alive(state.supervisor):
            state.status = "exited"  # its supervisor died without saying how it ended
        return state

    @property
    def running(self) -> bool:
        return self.status == "running"


def containers_dir(root: Path) -> Path:
    """Where the containers of the lazyctr root `root` keep their directories."""
    return root / CONTAINERS_DIR


def all_states(containers: Path) -> list[ContainerState]:
    states = []
    for directory in sorted(containers.iterdir()) if containers.is_dir() else []:
        try:
            states.append(ContainerState.load(directory))
        except NotFound:
            continue  # being created or removed
    return sorted(states, key=lambda s: s.created, reverse=True)


def find(containers: Path, text: str) -> ContainerState:
    """A container by name, full ID or unique ID prefix."""
    states = all_states(containers)
    for state in states:
        if text in (state.name, state.id):
            return state
    matches = [s for s in states if len(text) >= 3 and s.id.startswith(text)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise NotFound(f"container ID prefix {text!r} is ambiguous")
    raise NotFound(f"no such container: {text}")
