"""Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`) and what decides, when a
supervised container's process has ended, whether its supervisor starts it again.

A container the user stopped or killed is never restarted (docker's "manually stopped"): `stop` and
`kill` leave a `stopped` mark in the container's directory, which `start` clears. Between restarts the
supervisor waits as docker does: 100 ms, doubling up to a minute, back to 100 ms after a run of 10 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.process import ContainerError

POLICIES = ("no", "on-failure", "always", "unless-stopped")
STOPPED_MARK = "stopped"  # in the container's directory: the user stopped it, do not restart
FIRST_DELAY, MAX_DELAY, STEADY_RUN = 0.1, 60.0, 10.0  # seconds


@dataclass(frozen=True)
class RestartPolicy:
    name: str = "no"
    max_retries: int = 0  # on-failure's N: at most N restarts; 0 is no limit

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """docker's syntax and its checks: `on-failure:3`, a count only with on-failure."""
        name, colon, count = text.partition(":")
        if name not in POLICIES:
            raise ContainerError(
                f"invalid restart policy {text!r}:"
                " use one of 'no', 'always', 'on-failure[:N]' or 'unless-stopped'"
            )
        if not colon:
            return cls(name)
        if name != "on-failure":
            raise ContainerError(
                f"invalid restart policy {text!r}: a maximum retry count goes only with 'on-failure'"
            )
        if not count.isdigit():
            raise ContainerError(
                f"invalid restart policy {text!r}: the maximum retry count must be a number of 0 or more"
            )
        return cls(name, int(count))

    def __str__(self) -> str:
        return f"{self.name}:{self.max_retries}" if self.max_retries else self.name

    def restarts_after(self, status: int, restarts: int) -> bool:
        """Whether a process that ended with `status`, restarted `restarts` times so far, runs again."""
        if self.name == "no":
            return False
        if self.name == "on-failure":
            return status != 0 and (self.max_retries == 0 or restarts < self.max_retries)
        return True


NO_RESTART = RestartPolicy()


def next_delay(delay: float, ran_for: float) -> float:
    """The wait before the next restart, after waiting `delay` before this run, which lasted `ran_for` s."""
    return FIRST_DELAY if ran_for >= STEADY_RUN or delay == 0 else min(delay * 2, MAX_DELAY)


def mark_stopped(container_dir: Path) -> None:
    """The user stopped or killed the container: whatever its policy, it is not restarted."""
    if container_dir.is_dir():
        (container_dir / STOPPED_MARK).touch()


def clear_stopped(container_dir: Path) -> None:
    (container_dir / STOPPED_MARK).unlink(missing_ok=True)


def stopped_by_user(container_dir: Path) -> bool:
    return (container_dir / STOPPED_MARK).exists()
