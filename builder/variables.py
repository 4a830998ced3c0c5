"""ARG and ENV scoping of a build stage, and where BuildKit expands variables in instructions."""

from __future__ import annotations

from collections.abc import Callable

from builder.dockerfile import Dockerfile, Instruction


class StageVariables:
    """The ARGs and ENVs visible at one point of one stage."""

    @classmethod
    def for_stage(
        cls, global_args: dict[str, str | None], build_args: dict[str, str], base_env: list[str]
    ) -> StageVariables:
        raise NotImplementedError

    def lookup(self, name: str) -> str | None:
        raise NotImplementedError

    def declare_arg(self, name: str, default: str | None) -> None:
        raise NotImplementedError

    def set_env(self, pairs: list[tuple[str, str]]) -> None:
        raise NotImplementedError

    def image_env(self) -> list[str]:
        raise NotImplementedError

    def run_env(self) -> list[str]:
        raise NotImplementedError

    def used_args(self) -> dict[str, str]:
        raise NotImplementedError


def global_args(dockerfile: Dockerfile, build_args: dict[str, str]) -> dict[str, str | None]:
    raise NotImplementedError


def expand_instruction(
    instruction: Instruction, lookup: Callable[[str], str | None], escape: str
) -> Instruction:
    raise NotImplementedError


def key_value_pairs(instruction: Instruction) -> list[tuple[str, str]]:
    raise NotImplementedError
