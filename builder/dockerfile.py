"""The Dockerfile parser: directives, continuations, exec/shell forms, heredocs, flags, the AST.

It accepts what BuildKit's Dockerfile frontend accepts (parser/parser.go, parser/line_parsers.go and
instructions/parse.go) and keeps instructions unexpanded: variables are substituted later, per
stage, by `builder.variables.expand_instruction`.
"""

from __future__ import annotations

import difflib
import json
import re

from builder.errors import DockerfileSyntaxError
from builder.instructions import COMMANDS, KEYWORDS, parse_duration_ns
from builder.syntax import (
    Dockerfile,
    Heredoc,
    Instruction,
    parse_heredoc_word,
    remove_flag_quotes,
    replace_node,
    split_pairs,
)
from builder.words import SubstitutionError, raw_words, unquote_word

__all__ = ["Dockerfile", "Heredoc", "Instruction", "parse_dockerfile"]

DIRECTIVES = ("syntax", "escape", "check")

HEREDOC_KEYWORDS = frozenset({"ADD", "COPY", "RUN"})

_DIRECTIVE_RE = re.compile(r"^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$")
_STAGE_NAME_RE = re.compile(r"^[a-z][a-z0-9\-_.]*$")


def parse_dockerfile(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile; a DockerfileSyntaxError names the file, the line and what was expected."""
    return _Parser(text, filename).parse()


class _Parser:
    def __init__(self, text: str, filename: str) -> None:
        text = text.removeprefix("\ufeff")
        self.lines = [line.removesuffix("\r") for line in text.split("\n")]
        if self.lines and self.lines[-1] == "":
            self.lines.pop()  # the text's final newline ends the last line, it does not start one
        self.filename = filename
        self.pos = 0
        self.directives: dict[str, str] = {}
        self.escape = "\\"

    def error(self, message: str, line: int) -> DockerfileSyntaxError:
        return DockerfileSyntaxError(message, line, self.filename)

    def parse(self) -> Dockerfile:
        self.read_directives()
        instructions: list[Instruction] = []
        seen_from = False
        while (instruction := self.next_instruction()) is not None:
            if instruction.keyword == "FROM":
                seen_from = True
            elif not seen_from and instruction.keyword != "ARG":
                raise self.error(
                    f"expected FROM before {instruction.keyword} (only ARG may come before the first FROM)",
                    instruction.line,
                )
            instructions.append(instruction)
        if not instructions:
            raise self.error("expected at least one instruction, the file has none", max(len(self.lines), 1))
        if not seen_from:
            raise self.error("expected a FROM instruction, the file has only ARG", instructions[-1].line)
        return Dockerfile(dict(self.directives), self.escape, instructions)

    def read_directives(self) -> None:
        """Parser directives: `# name=value` lines at the very top, ended by any other line."""
        for number, raw in enumerate(self.lines, start=1):
            match = _DIRECTIVE_RE.match(raw.lstrip())
            if not match:
                return
            name, value = match.group(1).lower(), match.group(2)
            if name not in DIRECTIVES:
                return  # an unknown directive is a comment, and comments end the directives
            if name in self.directives:
                raise self.error(f"only one {name} parser directive can be used", number)
            if name == "escape":
                if value not in ("\\", "`"):
                    raise self.error(f"invalid escape token {value!r}: expected ` or \\", number)
                self.escape = value
            self.directives[name] = value

    def strip_continuation(self, line: str) -> tuple[str, bool]:
        """The line without a trailing escape character (and blanks after it); True if it ends there."""
        stripped = line.rstrip(" \t")
        if stripped.endswith(self.escape):
            return stripped[: -len(self.escape)], False
        return line, True

    def next_instruction(self) -> Instruction | None:
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            self.pos += 1
            start = self.pos
            first = raw.lstrip()
            if first.startswith("#"):
                continue  # comments, and directives already read
            text, complete = self.strip_continuation(first)
            if complete and not text.strip():
                continue
            while not complete and self.pos < len(self.lines):
                raw = self.lines[self.pos]
                self.pos += 1
                # Comment lines inside a continuation are dropped, and so are empty ones.
                if raw.lstrip().startswith("#") or not raw.strip():
                    continue
                part, complete = self.strip_continuation(raw)
                text += part
            instruction = replace_node(self.instruction(text.strip(), start), end_line=self.pos)
            if instruction.keyword in HEREDOC_KEYWORDS or (
                instruction.trigger and instruction.trigger.keyword in HEREDOC_KEYWORDS
            ):
                instruction = self.read_heredocs(instruction)
            return instruction
        return None

    def instruction(self, text: str, line: int) -> Instruction:
        word, *more = text.split(None, 1)
        keyword = word.upper()
        rest = more[0].strip() if more else ""
        if keyword not in KEYWORDS:
            hint = difflib.get_close_matches(keyword, KEYWORDS, n=1)
            suffix = f" (did you mean {hint[0]}?)" if hint else ""
            raise self.error(f"unknown instruction: {word}{suffix}", line)
        flag_words, rest = self.split_flags(rest, line)
        flags = self.parse_flags(keyword, flag_words, line)
        if keyword == "HEALTHCHECK":
            self.check_healthcheck_flags(flags, line)
        args, exec_form, trigger = self.arguments(keyword, rest, line)
        return Instruction(keyword, args, exec_form, flags, (), line, line, text, trigger)

    # --- flags -----------------------------------------------------------------------------

    def split_flags(self, rest: str, line: int) -> tuple[list[str], str]:
        """Leading `--name[=value]` words (quotes and escapes removed) and the text after them."""
        flags: list[str] = []
        pos = 0
        while True:
            while pos < len(rest) and rest[pos].isspace():
                pos += 1
            if not rest.startswith("--", pos):
                return flags, rest[pos:]
            end = pos
            quote = ""
            while end < len(rest) and (quote or not rest[end].isspace()):
                ch = rest[end]
                if quote and ch == quote:
                    quote = ""
                elif not quote and ch in "'\"":
                    quote = ch
                elif ch == "\\":
                    end += 1
                end += 1
            if quote:
                raise self.error(f"expected a closing {quote} in flag {rest[pos:]}", line)
            word = rest[pos:end]
            pos = end
            if word == "--":
                return flags, rest[pos:].lstrip()
            flags.append(remove_flag_quotes(word))

    def parse_flags(self, keyword: str, words: list[str], line: int) -> dict[str, list[str]]:
        allowed = COMMANDS[keyword].flags
        flags: dict[str, list[str]] = {}
        for word in words:
            name, has_value, value = word[2:].partition("=")
            kind = allowed.get(name)
            if kind is None:
                known = ", ".join(f"--{flag}" for flag in allowed) or "none"
                raise self.error(f"unknown flag --{name} for {keyword} (expected: {known})", line)
            if kind == "bool":
                if not has_value:
                    value = "true"
                elif value.lower() not in ("true", "false"):
                    raise self.error(f"expected true or false for --{name}, got {value!r}", line)
                value = value.lower()
            elif not has_value:
                raise self.error(f"expected a value for --{name} (--{name}=VALUE)", line)
            if name in flags and kind != "multi":
                raise self.error(f"duplicate flag specified: --{name}", line)
            flags.setdefault(name, []).append(value)
        return flags

    # --- arguments --------------------------------------------------------------------------

    def arguments(self, keyword: str, rest: str, line: int) -> tuple[list[str], bool, Instruction | None]:
        """The arguments of an instruction, read the way its keyword wants them, and an ONBUILD's trigger."""
        match keyword:
            case "RUN":
                return self.parse_run(rest, line)
            case "CMD" | "ENTRYPOINT":
                return (*self.maybe_json(rest, line), None)
            case "SHELL":
                return self.parse_shell(rest, line)
            case "COPY" | "ADD":
                return self.parse_copy(rest, line)
            case "VOLUME":
                return self.parse_volume(rest, line)
            case "FROM":
                return self.parse_from(rest, line)
            case "HEALTHCHECK":
                return self.parse_healthcheck(rest, line)
            case "ENV" | "LABEL" | "ARG":
                self.check_pairs(keyword, rest, line)
                return [rest], False, None
            case "ONBUILD":
                return self.parse_onbuild(rest, line)
        return self.parse_default(keyword, rest, line)

    def parse_default(self, keyword: str, rest: str, line: int) -> tuple[list[str], bool, None]:
        """Instructions whose argument is the rest of the line: EXPOSE MAINTAINER STOPSIGNAL USER WORKDIR."""
        if not rest:
            raise self.error(f"{keyword} requires at least one argument", line)
        return [rest], False, None

    def maybe_json(self, rest: str, line: int) -> tuple[list[str], bool]:
        """The exec form when the text is a JSON array of strings, else the shell form.

        Text that is not JSON is the shell form, but a JSON array holding anything else than
        strings is an error, as in BuildKit.
        """
        if rest.startswith("["):
            try:
                value = json.loads(rest)
            except ValueError:
                value = None
            if isinstance(value, list):
                if not all(isinstance(item, str) for item in value):
                    raise self.error("expected a JSON array of strings only (exec form)", line)
                return value, True
        return [rest], False

    def parse_run(self, rest: str, line: int) -> tuple[list[str], bool, None]:
        if not rest:
            raise self.error("RUN requires at least one argument", line)
        return (*self.maybe_json(rest, line), None)

    def parse_shell(self, rest: str, line: int) -> tuple[list[str], bool, None]:
        args, exec_form = self.maybe_json(rest, line)
        if not exec_form or not args:
            raise self.error('SHELL requires the arguments in JSON form, e.g. SHELL ["/bin/sh", "-c"]', line)
        return args, True, None

    def parse_copy(self, rest: str, line: int) -> tuple[list[str], bool, None]:
        args, exec_form = self.maybe_json(rest, line)
        count = len(args) if exec_form else len(rest.split())
        if count < 2:
            raise self.error(
                "COPY and ADD require at least two arguments: the sources and the destination", line
            )
        return args, exec_form, None

    def parse_volume(self, rest: str, line: int) -> tuple[list[str], bool, None]:
        args, exec_form = self.maybe_json(rest, line)
        if (exec_form and not args) or not rest:
            raise self.error("VOLUME requires at least one path", line)
        if exec_form and any(not item.strip() for item in args):
            raise self.error("VOLUME paths can not be empty strings", line)
        return args, exec_form, None

    def parse_from(self, rest: str, line: int) -> tuple[list[str], bool, None]:
        words = rest.split()
        if len(words) not in (1, 3):
            raise self.error("FROM requires either one or three arguments: FROM image [AS name]", line)
        if len(words) == 3:
            if words[1].lower() != "as":
                raise self.error(f"expected AS as the second argument of FROM, got {words[1]!r}", line)
            if not _STAGE_NAME_RE.match(words[2].lower()):
                raise self.error(
                    f"invalid name for build stage: {words[2]!r}, expected a letter, then letters, digits, "
                    "'-', '_' or '.'",
                    line,
                )
        return [rest], False, None

    def parse_healthcheck(self, rest: str, line: int) -> tuple[list[str], bool, None]:
        kind, *more = rest.split(None, 1) or [""]
        command = more[0].strip() if more else ""
        if kind.upper() == "NONE":
            if command:
                raise self.error("HEALTHCHECK NONE takes no arguments", line)
            return ["NONE"], False, None
        if kind.upper() != "CMD":
            raise self.error(
                f"expected HEALTHCHECK NONE or HEALTHCHECK [OPTIONS] CMD command, got {kind!r}", line
            )
        if not command:
            raise self.error("HEALTHCHECK CMD requires a command", line)
        args, exec_form = self.maybe_json(command, line)
        if exec_form:
            return ["CMD", *args], True, None
        return ["CMD-SHELL", command], False, None

    def check_healthcheck_flags(self, flags: dict[str, list[str]], line: int) -> None:
        for name in ("interval", "timeout", "start-period", "start-interval"):
            for value in flags.get(name, []):
                try:
                    nanoseconds = parse_duration_ns(value)
                except ValueError as exc:
                    raise self.error(f"HEALTHCHECK --{name}: {exc}", line) from None
                if nanoseconds < 0:
                    raise self.error(f"HEALTHCHECK --{name}={value} cannot be negative", line)
                if 0 < nanoseconds < 1_000_000:
                    raise self.error(f"HEALTHCHECK --{name}={value} cannot be less than 1ms", line)
        for value in flags.get("retries", []):
            try:
                retries = int(value)
            except ValueError:
                raise self.error(f"HEALTHCHECK --retries={value}: expected a whole number", line) from None
            if retries < 0:
                raise self.error(f"HEALTHCHECK --retries={value} cannot be negative", line)

    def check_pairs(self, keyword: str, rest: str, line: int) -> None:
        if not rest:
            raise self.error(f"{keyword} requires at least one argument", line)
        try:
            pairs = split_pairs(keyword, rest, self.escape)
        except ValueError as exc:
            raise self.error(str(exc), line) from None
        for key, _ in pairs:
            try:
                unquote_word(key, self.escape)
            except SubstitutionError as exc:
                raise self.error(f"{keyword}: {exc}", line) from None

    def parse_onbuild(self, rest: str, line: int) -> tuple[list[str], bool, Instruction]:
        if not rest:
            raise self.error("ONBUILD requires an instruction to trigger", line)
        word = rest.split(None, 1)[0].upper()
        if word == "ONBUILD":
            raise self.error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", line)
        if word in ("FROM", "MAINTAINER"):
            raise self.error(f"{word} isn't allowed as an ONBUILD trigger", line)
        trigger = self.instruction(rest, line)
        return [rest], False, trigger

    # --- heredocs ---------------------------------------------------------------------------

    def read_heredocs(self, instruction: Instruction) -> Instruction:
        target = instruction.trigger or instruction
        if target.exec_form or "<<" not in target.original:
            return instruction
        try:
            words = raw_words(target.original, self.escape)
        except SubstitutionError:
            return instruction  # unbalanced quotes: not heredocs (the shell will complain, as in BuildKit)
        heredocs: list[Heredoc] = []
        for word in words:
            heredoc = parse_heredoc_word(word)
            if heredoc is None:
                continue
            chomp, name, expand = heredoc
            body: list[str] = []
            while True:
                if self.pos >= len(self.lines):
                    raise self.error(
                        f"unterminated heredoc: expected a line {name!r} to end the here-document",
                        instruction.line,
                    )
                raw = self.lines[self.pos]
                self.pos += 1
                if (raw.lstrip("\t") if chomp else raw) == name:
                    break
                body.append((raw.lstrip("\t") if chomp else raw) + "\n")
            heredocs.append(Heredoc(name, "".join(body), expand, chomp))
        if not heredocs:
            return instruction
        docs = tuple(heredocs)
        trigger = None
        if instruction.trigger:
            trigger = replace_node(instruction.trigger, heredocs=docs, end_line=self.pos)
        return replace_node(instruction, heredocs=docs, end_line=self.pos, trigger=trigger)
