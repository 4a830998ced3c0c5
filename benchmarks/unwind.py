"""Unwinding a benchmark on SIGTERM or Ctrl-C, and teardowns that neither cuts short.

A suite sets up namespaces, daemons, mounts and cgroups; an interrupt must take them all down. It
raises KeyboardInterrupt where the main thread stands, which may be inside a teardown: cut short
there, the teardown leaves what it had not reached yet (a network namespace, say). A teardown under
`shielded` finishes first; the interrupt takes effect as it ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_shielding = 0  # how many teardowns are under way (`shielded`)
_stop_pending = False


def unwind_on_sigterm() -> None:
    """SIGTERM (a `kill`, a CI timeout) unwinds like Ctrl-C, so that every daemon, mount, network
    namespace and work directory a benchmark set up is taken down on the way out. Either signal
    waits for a teardown under way (`shielded`) to end: one cut short would leave what it was
    taking down."""

    def stop(signum: int, frame: FrameType | None) -> None:
        global _stop_pending
        if _shielding:
            _stop_pending = True
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


@contextmanager
def shielded() -> Iterator[None]:
    """A teardown that SIGTERM and Ctrl-C do not cut short: they take effect once it is over. Only
    the main thread's (where Python raises them); in another thread it shields nothing."""
    global _shielding, _stop_pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _shielding += 1
    try:
        yield
    finally:
        _shielding -= 1
        if not _shielding and _stop_pending:
            _stop_pending = False
            raise KeyboardInterrupt
