"""Forked steps of a container's life: run a step in a child, and exit statuses as docker reports them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

EXIT_SETUP_FAILED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 125, 126, 127


class ContainerError(Exception):
    """A container that cannot be created or entered: exits 125, as docker does."""


def exit_status(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128+N when killed by signal N."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def wait_status(pid: int) -> int:
    while True:
        try:
            return exit_status(os.waitpid(pid, 0)[1])
        except InterruptedError:
            continue


def run_in_child(body: Callable[[], int]) -> NoReturn:
    """In a forked child: run `body` and leave with its status; never return to the caller's code."""
    status = EXIT_SETUP_FAILED
    try:
        status = body()
    except ContainerError as e:
        print(f"lazyctr: error: {e}", file=sys.stderr)
    except BaseException as e:  # a setup step failed: say which, as docker does, and exit 125
        print(f"lazyctr: error: container setup failed: {e}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
