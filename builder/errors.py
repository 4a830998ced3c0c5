"""The errors the builder room raises for bad build input; each message is one line."""

from __future__ import annotations

from storage.errors import LazyctrError


class BuildError(LazyctrError):
    """Any error a user's build input causes (one line)."""


class DockerfileSyntaxError(BuildError):
    """A Dockerfile that does not parse: the message names the file, the line and what was expected."""

    def __init__(self, message: str, line: int, filename: str = "Dockerfile") -> None:
        self.message = message
        self.line = line
        self.filename = filename
        super().__init__(f"{filename}:{line}: {message}")
