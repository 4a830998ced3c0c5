"""The build graph of a Dockerfile: its global ARGs, its stages (each a FROM and the instructions
after it), the stage a build targets, and the stage a reference names (`FROM name`, `--from=name`
or `--from=index`). Only the stages the target needs are built, in the order they are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from builder.errors import BuildError, DockerfileSyntaxError
from builder.instructions import COMMANDS, From
from builder.syntax import Dockerfile, Instruction


@dataclass
class Stage:
    index: int
    origin: From  # its FROM, the base's variables still unexpanded
    instructions: list[Instruction]

    @property
    def name(self) -> str | None:
        return self.origin.name

    @property
    def label(self) -> str:
        return self.name or f"stage-{self.index}"


@dataclass
class Plan:
    filename: str
    prelude: list[Instruction]  # the global ARGs, before the first FROM
    stages: list[Stage]

    @classmethod
    def of(cls, dockerfile: Dockerfile, filename: str) -> Plan:
        """The stages of a parsed Dockerfile; a DockerfileSyntaxError names the line that is wrong."""
        prelude: list[Instruction] = []
        stages: list[Stage] = []
        for instruction in dockerfile.instructions:
            keyword = instruction.keyword.upper()
            if keyword not in COMMANDS:
                raise DockerfileSyntaxError(
                    f"unknown instruction: {instruction.keyword}", instruction.line, filename
                )
            if keyword == "FROM":
                try:
                    origin = From.of(instruction)
                except BuildError as e:
                    raise DockerfileSyntaxError(str(e), instruction.line, filename) from None
                if origin.name is not None and any(stage.name == origin.name for stage in stages):
                    raise DockerfileSyntaxError(
                        f"duplicate stage name {origin.name!r}", instruction.line, filename
                    )
                stages.append(Stage(len(stages), origin, []))
            elif not stages:
                if keyword != "ARG":
                    raise DockerfileSyntaxError(
                        f"{keyword} before the first FROM: only ARG may come before it",
                        instruction.line,
                        filename,
                    )
                prelude.append(instruction)
            else:
                stages[-1].instructions.append(instruction)
        if not stages:
            raise DockerfileSyntaxError(
                "no FROM instruction: a Dockerfile needs at least one stage", 1, filename
            )
        return cls(filename, prelude, stages)

    def target(self, name: str | None) -> Stage:
        """The stage `--target` names; the last one without it."""
        if name is None:
            return self.stages[-1]
        for stage in self.stages:
            if stage.name == name.lower():
                return stage
        raise BuildError(f"target stage {name!r} could not be found in {self.filename}")

    def by_ref(self, ref: str) -> Stage | None:
        """The stage `ref` names, by name or by index; None if it names none (an image, then)."""
        lowered = ref.lower()
        for stage in self.stages:
            if stage.name == lowered:
                return stage
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None

    def prefix(self, stage: Stage) -> str:
        """BuildKit names the stage in a step's label unless the Dockerfile has one unnamed stage."""
        return "" if len(self.stages) == 1 and stage.name is None else f"{stage.label} "

    @staticmethod
    def numbered_steps(instructions: list[Instruction]) -> int:
        """How many steps the progress output numbers for a stage: its FROM, then its file steps."""
        return 1 + sum(1 for i in instructions if COMMANDS[i.keyword.upper()].numbered)
