"""A Dockerfile's syntax tree, as the parser gives it and `--print-ast` prints it: instructions with
their words unexpanded, flags, heredocs and lines; and the readers of words the parser and the
variable expansion share (quotes, heredoc delimiters, ENV/LABEL/ARG pairs).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from builder.words import SubstitutionError, raw_words, unquote_word

_HEREDOC_RE = re.compile(r"^(\d*)<<(-?)([^<]*)$", re.DOTALL)


@dataclass(frozen=True)
class Heredoc:
    """One here-document of an instruction (`<<EOF`, `<<-EOF`, `<<'EOF'`)."""

    name: str  # the delimiter, without quotes
    content: str  # the body, each line ending in "\n"; for <<- without the leading tabs
    expand: bool  # False when any part of the delimiter was quoted: the body is taken literally
    chomp: bool  # True for <<-

    @property
    def body(self) -> str:
        """The text the shell reads: for <<- without the lines' leading tabs."""
        if not self.chomp:
            return self.content
        return "".join(line.lstrip("\t") for line in self.content.splitlines(keepends=True))


@dataclass(frozen=True)
class Instruction:
    """One instruction of a Dockerfile, unexpanded.

    `args` is the JSON array's items for the exec form, else the rest of the line (after the flags)
    as one string. HEALTHCHECK keeps Docker's config form instead: ["NONE"], ["CMD", argv...] or
    ["CMD-SHELL", command]. ONBUILD has its trigger's text as the only arg and the parsed trigger
    in `trigger`. `expand_instruction` returns a copy with `expanded` set and `args` in the shape its
    docstring gives.
    """

    keyword: str
    args: list[str]
    exec_form: bool
    flags: dict[str, list[str]]
    heredocs: tuple[Heredoc, ...]
    line: int
    end_line: int
    original: str
    trigger: Instruction | None = None
    # True once builder.variables.expand_instruction has substituted the variables.
    expanded: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["heredocs"] = [asdict(heredoc) for heredoc in self.heredocs]
        data["trigger"] = self.trigger.to_json() if self.trigger else None
        return data


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: its parser directives and its instructions in order."""

    directives: dict[str, str]
    escape: str
    instructions: list[Instruction] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        """One object per instruction, for `lazyctr build --print-ast`."""
        return [instruction.to_json() for instruction in self.instructions]


def replace_node(instruction: Instruction, **changes: Any) -> Instruction:
    values = {name: getattr(instruction, name) for name in Instruction.__dataclass_fields__}
    values.update(changes)
    return Instruction(**values)


def quoted_tokens(text: str, escape: str) -> tuple[list[tuple[str, str, bool]], str]:
    """The tokens of `text` as BuildKit's flag and ENV/LABEL/ARG readers see them, and the quote left
    open at its end ("" if none). A token is (kind, text, quoted): "escaped" (the escape character and
    the one it escapes), "quote" (an opening or closing quote) or "char" (one character, `quoted` if
    inside quotes). The escape works inside quotes too; a lone one at the end is a "char"."""
    tokens: list[tuple[str, str, bool]] = []
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch == escape and i < len(text):
            tokens.append(("escaped", ch + text[i], bool(quote)))
            i += 1
        elif (quote and ch == quote) or (not quote and ch in "'\""):
            quote = "" if quote else ch
            tokens.append(("quote", ch, True))
        else:
            tokens.append(("char", ch, bool(quote)))
    return tokens, quote


def remove_flag_quotes(word: str) -> str:
    """A flag word as BuildKit reads it: quotes removed, a backslash keeps the next character."""
    tokens, _ = quoted_tokens(word, "\\")
    return "".join(text[-1] for kind, text, _ in tokens if kind != "quote")


def parse_heredoc_word(word: str) -> tuple[bool, str, bool] | None:
    """(chomp, name, expand) when a raw word starts a here-document (`<<EOF`, `<<-'EOF'`), else None."""
    match = _HEREDOC_RE.match(word)
    if not match or not match.group(3):
        return None
    rest = match.group(3)
    try:
        words = raw_words(rest)
        if len(words) != 1:
            return None
        name = unquote_word(rest)
    except SubstitutionError:
        return None
    # Any quoted part of the delimiter (<<'EOF', <<"EOF", <<E"O"F) means the body is taken literally.
    quotes = sum(rest.count(q) for q in "'\"")
    kept = sum(name.count(q) for q in "'\"")
    return match.group(2) == "-", name, quotes == kept


def _pair_words(text: str, escape: str) -> list[str]:
    """Split ENV/LABEL/ARG text on unquoted blanks, keeping quotes and escapes (they are expanded later)."""
    tokens, quote = quoted_tokens(text, escape)
    if quote:
        raise ValueError(f"expected a closing {quote} in {text!r}")
    words: list[str] = []
    word: list[str] = []
    for kind, token, quoted in tokens:
        if kind == "char" and not quoted and token.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(token)
    if word:
        words.append("".join(word))
    return words


def split_pairs(keyword: str, text: str, escape: str = "\\") -> list[tuple[str, str | None]]:
    """The raw (unexpanded) name/value pairs of an ENV, LABEL or ARG text; None for `ARG name`.

    ENV and LABEL also take the legacy form `ENV name value with spaces` (one pair, when the first
    word has no `=`).
    """
    words = _pair_words(text, escape)
    if not words:
        raise ValueError(f"{keyword} requires at least one argument")
    pairs: list[tuple[str, str | None]] = []
    if keyword in ("ENV", "LABEL") and "=" not in words[0]:
        parts = text.strip().split(None, 1)
        if len(parts) < 2:
            raise ValueError(f"{keyword} {parts[0]}: expected a value (NAME=VALUE or the legacy NAME VALUE)")
        return [(parts[0], parts[1])]
    for word in words:
        key, has_value, value = word.partition("=")
        if not key:
            raise ValueError(f"{keyword} names can not be blank: {word!r}")
        if keyword == "ARG":
            pairs.append((key, value if has_value else None))
        elif not has_value:
            raise ValueError(f"{keyword}: expected NAME=VALUE, can't find = in {word!r}")
        else:
            pairs.append((key, value))
    return pairs
