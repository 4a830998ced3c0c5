"""Forked steps of a container's life: run a step in a child, name a setup step that fails, and exit
statuses as docker reports them."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

EXIT_SETUP_FAILED, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND = 125, 126, 127

P = ParamSpec("P")
R = TypeVar("R")


class ContainerError(Exception):
    """A container that cannot be created or entered: exits 125, as docker does."""


class SetupError(ContainerError):
    """A step of a container's setup failed; the message names the step (as runc's errors do)."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"container setup failed at {step}: {cause}")
        self.step = step


def setup_step(function: Callable[P, R]) -> Callable[P, R]:
    """Mark `function` as a setup step: whatever it raises becomes a SetupError named after it."""

    @functools.wraps(function)
    def step(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except SetupError:
            raise  # a step inside a step: the inner one is the more precise name
        except Exception as e:
            raise SetupError(function.__name__, e) from e

    return step


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
    except BaseException as e:  # outside any named step: still one line, and 125 as docker's
        print(f"lazyctr: error: container setup failed: {e}", file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
