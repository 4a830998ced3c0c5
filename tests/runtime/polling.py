"""Waiting for what a container does, without racing the clock: poll until it is so, with a deadline
that only a hang reaches."""

from __future__ import annotations

import time
from collections.abc import Callable

DEADLINE = 60.0  # seconds: generous, so a loaded machine is slow but never wrong


def wait_for(predicate: Callable[[], object], timeout: float = DEADLINE, what: str = "") -> None:
    """Return once `predicate()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting{' for ' + what if what else ''}"
        time.sleep(0.05)
