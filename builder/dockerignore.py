"""`.dockerignore`: which paths of a build context are sent, with moby's patternmatcher semantics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


class DockerIgnore:
    """The exclusion patterns of one build context, in order (the last matching pattern wins)."""

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        raise NotImplementedError

    @classmethod
    def for_context(cls, context: Path, dockerfile: Path) -> DockerIgnore:
        raise NotImplementedError

    def excluded(self, path: str) -> bool:
        raise NotImplementedError

    def walk(self, context: Path) -> Iterator[str]:
        raise NotImplementedError
