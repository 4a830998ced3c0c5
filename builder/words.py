"""BuildKit's shell-word lexer: quotes, escapes, variable expansion and word splitting.

It follows the semantics of BuildKit's `frontend/dockerfile/shell/lex.go` (not a shell): single quotes
take everything literally, double quotes let `$` through and let the escape character escape only
`"`, `$` and itself, `$name`/`${name}` and the modifiers `:-`, `-`, `:+`, `+`, `:?`, `?`, `#`, `##`,
`%`, `%%`, `/` and `//` are supported, an unset variable expands to nothing, and words are split on
unquoted whitespace *after* expansion (so a variable holding "a b" gives two words unless quoted).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from builder.errors import BuildError

Lookup = Callable[[str], str | None]

# The special parameters of POSIX sh: `$@`, `$?`... are single-character names, always unset here.
_SPECIAL_PARAMS = frozenset("@*#?-$!0")


class SubstitutionError(BuildError):
    """A `${v:?message}` on an unset variable, or a substitution that does not parse."""


@dataclass
class _Words:
    """Collects the words of a text as it is lexed: expansions split on whitespace, quotes do not."""

    words: list[str] = field(default_factory=list)
    word: str = ""
    in_word: bool = False

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word += ch
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def finish(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class _Lexer:
    """One pass over one text; the options mirror the knobs BuildKit's parser uses internally."""

    def __init__(
        self,
        text: str,
        lookup: Lookup,
        escape: str,
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_quotes: bool = False,
        skip_unset: bool = False,
    ) -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"escape character must be \\ or `, not {escape!r}")
        self.text = text
        self.pos = 0
        self.lookup = lookup
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_quotes = skip_quotes
        self.skip_unset = skip_unset

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch

    def run(self) -> tuple[str, list[str]]:
        try:
            return self.until("", self.raw_escapes)
        except SubstitutionError as exc:
            raise SubstitutionError(f"failed to process {self.text!r}: {exc}") from None

    def until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Lex up to (and past) `stop`, or to the end when `stop` is empty."""
        result: list[str] = []
        words = _Words()
        while self.peek():
            ch = self.peek()
            if stop and ch == stop:
                self.next()
                return "".join(result), words.finish()
            if ch == "$":
                value = self.dollar()
                result.append(value)
                words.add_string(value)
            elif ch in "'\"" and not self.skip_quotes:
                value = self.quoted()
                result.append(value)
                words.add_raw_string(value)
            else:
                self.next()
                if ch == self.escape:
                    if raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    ch = self.next()
                    if not ch:
                        break  # a lone escape at the very end is dropped
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop:
            raise SubstitutionError(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.finish()

    def quoted(self) -> str:
        """A quoted string, from its opening quote past its closing one. Single quotes take everything
        literally; double quotes let `$` through, and the escape character escape only `"`, `$` and
        itself."""
        quote = self.next()
        out = [quote] if self.raw_quotes else []
        while True:
            ch = self.peek()
            if not ch:
                name = "single-quote" if quote == "'" else "double-quote"
                raise SubstitutionError(f"unexpected end of statement while looking for matching {name}")
            if ch == quote:
                self.next()
                if self.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if quote == '"' and ch == "$":
                out.append(self.dollar())
                continue
            self.next()
            if quote == '"' and ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue
                # Inside double quotes only these can be escaped; elsewhere the escape stays literal.
                if following in ('"', "$", self.escape):
                    ch = self.next()
            out.append(ch)

    def name(self) -> str:
        start = self.pos
        first = self.peek()
        if first.isdigit():
            while self.peek().isdigit():
                self.next()
            return self.text[start : self.pos]
        if first and first in _SPECIAL_PARAMS:
            return self.next()
        while (ch := self.peek()) and (ch.isalnum() or ch == "_"):
            self.next()
        return self.text[start : self.pos]

    def value(self, name: str) -> str | None:
        return self.lookup(name)

    def dollar(self) -> str:
        self.next()  # the "$"
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value = self.value(name)
            if value is None:
                return f"${name}" if self.skip_unset else ""
            return value
        self.next()  # the "{"
        first = self.peek()
        if not first:
            raise SubstitutionError("syntax error: missing '}'")
        if first in "{}:":
            raise SubstitutionError("syntax error: bad substitution")
        name = self.name()
        op = self.next()
        if not op:
            raise SubstitutionError(f"syntax error: missing '}}' after ${{{name}")
        if op == "}":
            value = self.value(name)
            if value is None:
                return f"${{{name}}}" if self.skip_unset else ""
            return value
        if op == "/":
            return self.replace(name)
        null_is_unset = op == ":"
        modifier = op
        if null_is_unset:
            op = self.next()
            modifier += op
        if op not in ("-", "+", "?", "#", "%"):
            raise SubstitutionError(f"unsupported modifier ({modifier}) in substitution of {name}")
        # Patterns keep their escapes: they matter to the pattern (`\*` is a literal star).
        try:
            word, _ = self.until("}", op in "#%")
        except SubstitutionError:
            if not self.peek():
                raise SubstitutionError(f"syntax error: missing '}}' in ${{{name}{modifier}") from None
            raise
        value = self.value(name)
        if value is None and self.skip_unset:
            return f"${{{name}{modifier}{word}}}"
        empty = value is None or (null_is_unset and value == "")
        if op == "-":
            return word if empty else (value or "")
        if op == "+":
            return "" if empty else word
        if op == "?":
            if value is None:
                raise SubstitutionError(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise SubstitutionError(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        greedy = word.startswith(op)
        if greedy:
            word = word[1:]
        if op == "#":
            return _trim_prefix(word, value or "", greedy)
        return _trim_suffix(word, value or "", greedy)

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.until("/", True)
        except SubstitutionError:
            if not self.peek():
                raise SubstitutionError(f"syntax error: missing '/' in ${{{name}/...}}") from None
            raise
        try:
            replacement, _ = self.until("}", True)
        except SubstitutionError:
            if not self.peek():
                raise SubstitutionError(f"syntax error: missing '}}' in ${{{name}/...}}") from None
            raise
        value = self.value(name)
        if value is None and self.skip_unset:
            return f"${{{name}/{pattern}/{replacement}}}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        text = value or ""
        # A function as replacement keeps it literal (no group references).
        return regex.sub(lambda _: replacement, text, count=0 if replace_all else 1)


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell pattern (`*`, `?`, `\\` escapes; no brackets, as in BuildKit) as a regular expression."""
    out = ["^"] if anchored else []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        i += 1
        if ch == "*":
            out.append(".*" if greedy else ".*?")
        elif ch == "?":
            out.append(".")
        elif ch == "\\":
            if i < len(pattern) and pattern[i] in "}/":
                continue  # escaped so the ${...} parser would not end there; not part of the pattern
            if i >= len(pattern) or pattern[i] not in "*?\\":
                shown = pattern[i] if i < len(pattern) else ""
                raise SubstitutionError(
                    f"invalid pattern ({pattern}) in substitution: invalid escape '\\{shown}'"
                )
            out.append(re.escape(pattern[i]))
            i += 1
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    match = _pattern_regex(pattern, greedy=greedy, anchored=True).search(value)
    return value[match.end() :] if match else value


def _reverse_pattern(pattern: str) -> str:
    """Reverse a pattern keeping each escape before the character it escapes (`a\\*c` -> `c\\*a`)."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            tokens.append(pattern[i : i + 2])
            i += 2
        else:
            tokens.append(pattern[i])
            i += 1
    return "".join(reversed(tokens))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # A regular expression finds the leftmost match, not the shortest rightmost one: reversing both
    # the pattern and the value turns "shortest suffix" into "shortest prefix".
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def expand_word(word: str, lookup: Lookup, escape: str = "\\") -> str:
    """`word` with its variables expanded, quotes removed and escapes processed (one word, no splitting)."""
    return _Lexer(word, lookup, escape).run()[0]


def expand_words(text: str, lookup: Lookup, escape: str = "\\") -> list[str]:
    """`text` expanded as by `expand_word`, then split into words on unquoted whitespace."""
    return _Lexer(text, lookup, escape).run()[1]


def expand_heredoc(content: str, lookup: Lookup) -> str:
    """The body of an unquoted COPY/ADD here-document with its variables expanded.

    BuildKit expands these with quotes left alone and the escape character always `\\`, whatever the
    Dockerfile's escape directive says.
    """
    return _Lexer(content, lookup, "\\", skip_quotes=True).run()[0]


def unquote_word(word: str, escape: str = "\\") -> str:
    """`word` with quotes and escapes processed but every `$variable` left as written."""
    return _Lexer(word, lambda _: None, escape, skip_unset=True).run()[0]


def raw_words(text: str, escape: str = "\\") -> list[str]:
    """`text` split into words with quotes and escapes kept, variables not expanded (to find heredocs)."""
    return _Lexer(text, lambda _: None, escape, raw_quotes=True, raw_escapes=True, skip_unset=True).run()[1]
