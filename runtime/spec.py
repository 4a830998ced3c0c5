"""What a container runs and how: the `Spec` (image config merged with the command line), the
`Process` a container or `exec` starts in it, and its `Volume`s. Plain data: nothing here runs."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import seccomp
from runtime.process import ContainerError
from storage.store import Image

if TYPE_CHECKING:
    from runtime.network.ports import PortMapping

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Process:
    """One process to start in a container (its PID 1, or one `exec` adds), as OCI's `process`."""

    argv: list[str]
    env: list[str]
    cwd: str
    user: str = ""  # USER[:GROUP], names or numbers, resolved inside the container
    seccomp: str = seccomp.DEFAULT  # the profile: docker's default denylist, or unconfined
    init: bool = False  # a minimal init as PID 1 that reaps zombies and forwards signals


@dataclass
class Spec:
    """What to run, with the image config already merged with the command line."""

    argv: list[str]
    env: list[str]
    cwd: str = "/"
    hostname: str = ""
    name: str = ""
    user: str = ""  # USER[:GROUP], names or numbers, resolved inside the container
    volumes: list[Volume] = field(default_factory=list)
    read_only: bool = False
    network: str = "none"  # none, host, or a bridge network's name (runtime/network/)
    ports: list[PortMapping] = field(default_factory=list)  # -p, on a bridge network
    interactive: bool = False  # -i: keep stdin; without it the container reads /dev/null
    tty: bool = False  # -t: a pseudo-terminal
    init: bool = False  # --init: a minimal init as PID 1 that reaps zombies and forwards signals
    seccomp: str = seccomp.DEFAULT  # `--security-opt seccomp=unconfined`: none (kept in the state for exec)
    systemd: bool = False  # --systemd: the mounts systemd needs as PID 1 (runtime/systemd.py)
    stop_signal: int = signal.SIGTERM  # what `stop` sends first: the image's StopSignal, or systemd's
    id: str = field(default_factory=lambda: os.urandom(32).hex())  # as secrets.token_hex(32)

    def process(self) -> Process:
        """The container's first process."""
        return Process(self.argv, self.env, self.cwd, self.user, self.seccomp, self.init)


@dataclass(frozen=True)
class Volume:
    source: Path
    target: str
    read_only: bool = False
    named: bool = False  # a named volume (runtime/volumes.py): seeded from the image when empty

    @classmethod
    def parse(cls, text: str) -> Volume:
        """`SRC:DST[:ro|rw]`, as docker's -v; SRC must exist."""
        parts = text.split(":")
        if (
            len(parts) not in (2, 3)
            or not parts[0]
            or not parts[1].startswith("/")
            or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
        ):
            raise ContainerError(f"invalid volume {text!r}: expected /host/path:/container/path[:ro]")
        source = Path(parts[0]).resolve()
        if not source.exists():
            raise ContainerError(f"volume source {parts[0]} does not exist")
        return cls(source, parts[1], len(parts) == 3 and parts[2] == "ro")


def spec_for(
    image: Image, command: list[str], env: list[str], workdir: str | None, entrypoint: str | None = None
) -> Spec:
    """Entrypoint + Cmd (or the given command) and Env, merged as docker merges them.

    `--entrypoint` replaces the image's Entrypoint and clears its Cmd, as with docker.
    """
    config = image.config.config
    if entrypoint is not None:
        argv = [entrypoint, *command] if entrypoint else list(command)
    else:
        argv = list(config.get("Entrypoint") or []) + (command or list(config.get("Cmd") or []))
    if not argv:
        raise ContainerError(f"no command given and {image.name} has no Entrypoint or Cmd")
    base = config.get("Env") or [f"PATH={DEFAULT_PATH}"]
    spec = Spec(argv, merge_env(base, env), workdir or config.get("WorkingDir") or "/")
    spec.user = str(config.get("User") or "")
    spec.stop_signal = parse_signal(str(config.get("StopSignal") or "SIGTERM"))
    return spec


def parse_signal(text: str) -> int:
    """A signal as Dockerfile's STOPSIGNAL names it: `SIGQUIT`, `QUIT`, `9`, `SIGRTMIN+3`."""
    name = text.upper().removeprefix("SIG")
    try:
        if name.isdigit():
            return int(name)
        if name.startswith(("RTMIN", "RTMAX")):
            base, _, offset = name.partition("+") if "+" in name else name.partition("-")
            sign = -1 if "-" in name else 1
            return int(signal.Signals["SIG" + base]) + sign * int(offset or 0)
        return int(signal.Signals["SIG" + name])
    except (KeyError, ValueError):
        raise ContainerError(f"unknown stop signal {text!r}") from None


def merge_env(base: list[str], overrides: list[str]) -> list[str]:
    """`base` with each NAME=VALUE of `overrides` replacing the item of the same NAME, in place."""
    merged = {item.split("=", 1)[0]: item for item in base}
    merged.update({item.split("=", 1)[0]: item for item in overrides})
    return list(merged.values())
