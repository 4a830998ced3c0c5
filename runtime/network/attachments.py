"""What attaching a container did, as `containers/<id>/network.json` records it: enough for a DEL by
whoever runs it (the config each plugin got, its result), and who is to run it (the supervisor)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.state import containers_dir
from storage.files import atomic_write

ATTACHMENT_FILE = "network.json"
NETNS_FILE = "netns"  # the container's network namespace, bind-mounted beside it


@dataclass
class Attachment:
    """A container's place on a network, as `containers/<id>/network.json` records it."""

    container_id: str
    network: str
    name: str
    hostname: str
    netns: str  # the bind-mounted network namespace
    supervisor: int  # the process that detaches it when the container ends
    supervisor_start: str  # its start time (/proc/PID/stat), so that a reused PID is not it
    plugins: list[dict[str, Any]]  # the config each plugin got at ADD: DEL gets the same
    host_netns: int  # the inode of the namespace the plugins ran in (the bridge and NAT rules are there)
    ports: list[str] = field(default_factory=list)
    address: str = ""  # the container's IPv4 address, once attached
    result: dict[str, Any] | None = None  # the last plugin's result

    @classmethod
    def load(cls, container_dir: Path) -> Attachment | None:
        try:
            return cls(**json.loads((container_dir / ATTACHMENT_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        atomic_write(self.dir / ATTACHMENT_FILE, json.dumps(asdict(self)).encode())

    @property
    def dir(self) -> Path:
        return Path(self.netns).parent

    def alive(self) -> bool:
        """Whether its supervisor still runs (and will detach it)."""
        return start_time(self.supervisor) == self.supervisor_start

    def detachable_here(self) -> bool:
        """Whether we run in the namespace it was attached from: a DEL elsewhere would miss its rules."""
        return self.host_netns == own_netns()


def own_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def attachments(root: Path) -> list[Attachment]:
    containers = containers_dir(root)
    found = (Attachment.load(d) for d in sorted(containers.iterdir())) if containers.is_dir() else iter(())
    return [a for a in found if a is not None]


def start_time(pid: int) -> str:
    """When process `pid` started (in clock ticks since boot); '' if it does not run (a zombie does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[19] if fields[0] != "Z" else ""
    except (OSError, IndexError):
        return ""
