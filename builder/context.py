"""The build context: the directory COPY and ADD read their sources from, seen through .dockerignore."""

from __future__ import annotations

from pathlib import Path

from builder.dockerignore import DockerIgnore


class BuildContext:
    def __init__(self, root: Path, ignore: DockerIgnore) -> None:
        self.root = root
        self.ignore = ignore
