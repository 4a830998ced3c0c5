"""Container setup as a sequence of named steps, as runc's: a step is a function marked `@setup_step`,
and whatever goes wrong in it is reported as `container setup failed at <step>: <error>`, exit 125."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from runtime.process import ContainerError

P = ParamSpec("P")
R = TypeVar("R")


class SetupError(ContainerError):
    """A step of a container's setup failed; the message names the step."""

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
