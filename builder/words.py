"""BuildKit's shell-word lexer: quotes, escapes, variable expansion and word splitting."""

from __future__ import annotations

from collections.abc import Callable

from builder.errors import BuildError


class SubstitutionError(BuildError):
    """A `${v:?message}` on an unset variable, or a substitution that does not parse."""


def expand_word(word: str, lookup: Callable[[str], str | None], escape: str = "\\") -> str:
    raise NotImplementedError


def expand_words(text: str, lookup: Callable[[str], str | None], escape: str = "\\") -> list[str]:
    raise NotImplementedError
