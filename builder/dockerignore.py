"""`.dockerignore`: which paths of a build context are sent, with moby's patternmatcher semantics.

Patterns are cleaned like paths (`./a/` is `a`, a leading `/` is dropped), `*` and `?` never match
`/`, `**` matches any number of directories, `[...]` is a character class, `\\` escapes. A path is
excluded when the last pattern that matches it or one of its parent directories is not an `!`
exception. Lines starting with `#` are comments.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuildError


@dataclass(frozen=True)
class _Pattern:
    text: str  # cleaned, without the leading "!"
    exception: bool
    regex: re.Pattern[str]

    def matches(self, path: str) -> bool:
        return self.regex.fullmatch(path) is not None


def _clean(pattern: str) -> str:
    """Go's filepath.Clean, then relative to the context."""
    cleaned = posixpath.normpath(pattern)
    if cleaned.startswith("//"):  # posixpath keeps a leading "//", Go's Clean does not
        cleaned = "/" + cleaned.lstrip("/")
    if len(cleaned) > 1 and cleaned.startswith("/"):
        cleaned = cleaned[1:]
    return cleaned


def _compile(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if in_class and ch not in "\\]":
            # Inside [...] ranges and negation pass through; only "[" needs escaping for Python.
            out.append("\\[" if ch == "[" else ch)
        elif ch == "*":
            if i < len(pattern) and pattern[i] == "*":
                i += 1
                if i < len(pattern) and pattern[i] == "/":
                    i += 1  # "**/" is "**"
                # "**" at the end matches everything below; elsewhere any number of directories.
                out.append(".*" if i >= len(pattern) else "(.*/)?")
            else:
                out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i < len(pattern):
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append(re.escape("\\"))
        elif ch in "[]":
            in_class = ch == "["  # a character class, as in Go's filepath.Match (negated with ^)
            out.append(ch)
        else:
            out.append(re.escape(ch))
    try:
        return re.compile("".join(out), re.DOTALL)
    except re.error as exc:
        raise BuildError(f".dockerignore: bad pattern {pattern!r}: {exc}") from None


class DockerIgnore:
    """The exclusion patterns of one build context, in order (the last matching pattern wins)."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns: list[_Pattern] = []
        for raw in patterns:
            exception = raw.startswith("!")
            text = raw[1:].strip() if exception else raw
            if not text:
                raise BuildError(f".dockerignore: illegal exclusion pattern {raw!r}: expected a path after !")
            text = _clean(text)
            self.patterns.append(_Pattern(text, exception, _compile(text)))

    @classmethod
    def parse(cls, text: str) -> DockerIgnore:
        patterns: list[str] = []
        for number, line in enumerate(text.split("\n")):
            if number == 0:
                line = line.removeprefix("\ufeff")
            if line.startswith("#"):
                continue
            line = line.strip()
            if line:
                patterns.append(line)
        return cls(patterns)

    @classmethod
    def for_context(cls, context: Path, dockerfile: Path) -> DockerIgnore:
        """`<Dockerfile>.dockerignore` beside the Dockerfile wins over `<context>/.dockerignore`."""
        for candidate in (dockerfile.with_name(dockerfile.name + ".dockerignore"), context / ".dockerignore"):
            try:
                text = candidate.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as exc:
                raise BuildError(f"cannot read {candidate}: {exc}") from None
            return cls.parse(text)
        return cls([])

    def excluded(self, path: str) -> bool:
        """Whether `path` (relative to the context, "/"-separated) is left out of the context."""
        path = _clean(path)
        if path in (".", "/"):
            return False
        parts = path.split("/")
        parents = ["/".join(parts[: i + 1]) for i in range(len(parts) - 1)]
        excluded = False
        for pattern in self.patterns:
            # Only a pattern that could change the answer needs to be tried.
            if pattern.exception != excluded:
                continue
            match = pattern.matches(path) or any(pattern.matches(parent) for parent in parents)
            if match:
                excluded = not pattern.exception
        return excluded

    def _exception_below(self, directory: str) -> bool:
        """Whether some exception pattern could match a path below the excluded `directory`."""
        parts = directory.split("/")
        for pattern in self.patterns:
            if not pattern.exception:
                continue
            pieces = pattern.text.split("/")
            if any("**" in piece for piece in pieces[: len(parts) + 1]):
                return True
            if len(pieces) <= len(parts):
                continue
            if all(_compile(piece).fullmatch(part) for piece, part in zip(pieces, parts, strict=False)):
                return True
        return False

    def walk(self, context: Path) -> Iterator[str]:
        """Every included path (files, dirs, symlinks) below the context, "/"-separated and sorted.

        Symlinks are listed, never followed. An excluded directory is still searched when an
        exception could match below it; it is then listed if something below it is included.
        """
        found: list[str] = []

        def visit(directory: Path, prefix: str) -> bool:
            """Adds the included entries below `directory`; True if it added any."""
            added = False
            try:
                entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
            except OSError as exc:
                raise BuildError(f"cannot read {directory}: {exc.strerror}") from None
            for entry in entries:
                rel = f"{prefix}{entry.name}"
                is_dir = entry.is_dir(follow_symlinks=False)
                if not self.excluded(rel):
                    found.append(rel)
                    added = True
                    if is_dir:
                        visit(Path(entry.path), rel + "/")
                elif is_dir and self._exception_below(rel):
                    index = len(found)
                    if visit(Path(entry.path), rel + "/"):
                        found.insert(index, rel)  # a parent of included paths is sent too
                        added = True
            return added

        visit(context, "")
        yield from sorted(found)
