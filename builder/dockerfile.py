"""The Dockerfile parser: directives, continuations, exec/shell forms, heredocs, flags, the AST."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Heredoc:
    """One here-document of an instruction (`<<EOF`, `<<-EOF`, `<<'EOF'`)."""

    name: str
    content: str
    expand: bool
    chomp: bool


@dataclass(frozen=True)
class Instruction:
    """One instruction of a Dockerfile, unexpanded."""

    keyword: str
    args: list[str]
    exec_form: bool
    flags: dict[str, list[str]]
    heredocs: tuple[Heredoc, ...]
    line: int
    end_line: int
    original: str
    trigger: Instruction | None = None


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: its parser directives and its instructions in order."""

    directives: dict[str, str]
    escape: str
    instructions: list[Instruction] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        raise NotImplementedError


def parse_dockerfile(text: str, filename: str = "Dockerfile") -> Dockerfile:
    raise NotImplementedError
