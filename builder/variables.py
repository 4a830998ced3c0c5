"""ARG and ENV scoping of a build stage, and where BuildKit expands variables in instructions.

Scoping follows BuildKit: ARGs before the first FROM are global and only FROM lines see them; a
stage sees a global ARG only after re-declaring it (`ARG NAME`); `--build-arg` values override
defaults; ENV wins over ARG; the base image's Env is the stage's starting environment.
"""

from __future__ import annotations

import csv
import io
import platform
from collections.abc import Callable
from dataclasses import replace

from builder.errors import BuildError
from builder.syntax import Dockerfile, Heredoc, Instruction, parse_heredoc_word, split_pairs
from builder.words import SubstitutionError, expand_heredoc, expand_word, expand_words, unquote_word

Lookup = Callable[[str], str | None]

# Instructions whose arguments are a list of words, split on blanks *before* expansion (so a value
# with spaces stays one word), each word then expanded on its own.
_WORD_LISTS = frozenset({"ADD", "COPY", "VOLUME"})
# Instructions whose argument is one word, expanded whole.
_SINGLE_WORD = frozenset({"STOPSIGNAL", "USER", "WORKDIR"})
# Flags BuildKit expands; RUN --mount values are expanded field by field.
_EXPANDED_FLAGS = {
    "ADD": ("chown", "chmod", "checksum", "exclude"),
    "COPY": ("from", "chown", "chmod", "exclude"),
}


def _machine() -> tuple[str, str]:
    """The host's platform as OCI names it (architecture, variant)."""
    names = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", ""),
        "arm64": ("arm64", ""),
        "armv7l": ("arm", "v7"),
        "armv6l": ("arm", "v6"),
        "i686": ("386", ""),
        "i386": ("386", ""),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }
    machine = platform.machine().lower()
    return names.get(machine, (machine, ""))


def platform_args() -> dict[str, str]:
    """BuildKit's automatic platform ARGs (build and target are the host: no cross builds)."""
    arch, variant = _machine()
    plat = f"linux/{arch}" + (f"/{variant}" if variant else "")
    values: dict[str, str] = {}
    for prefix in ("BUILD", "TARGET"):
        values |= {
            f"{prefix}PLATFORM": plat,
            f"{prefix}OS": "linux",
            f"{prefix}ARCH": arch,
            f"{prefix}VARIANT": variant,
        }
    return values


class StageVariables:
    """The ARGs and ENVs visible at one point of one stage."""

    def __init__(
        self, global_args: dict[str, str | None], build_args: dict[str, str], env: dict[str, str]
    ) -> None:
        self._globals = dict(global_args)
        self._build_args = dict(build_args)
        self._env = env  # insertion order is the image config's order
        self._args: dict[str, str | None] = {}

    @classmethod
    def for_stage(
        cls, global_args: dict[str, str | None], build_args: dict[str, str], base_env: list[str]
    ) -> StageVariables:
        """global_args: from `global_args()`; base_env: the FROM image's config Env ("K=V" strings)."""
        env: dict[str, str] = {}
        for item in base_env:
            key, _, value = item.partition("=")
            env[key] = value
        return cls(global_args, build_args, env)

    def lookup(self, name: str) -> str | None:
        """The value `$name` has here: ENV wins over ARG; None when unset."""
        if name in self._env:
            return self._env[name]
        return self._args.get(name)

    def declare_arg(self, name: str, default: str | None) -> None:
        """`ARG name[=default]` in the stage (default already expanded).

        A --build-arg wins over the default; without one, `ARG name` takes the global ARG's value
        (or the automatic platform ARG's); an ARG with neither stays unset.
        """
        if name in self._build_args:
            value: str | None = self._build_args[name]
        elif default is not None:
            value = default
        else:
            value = self._globals.get(name)
            if value is None:
                value = platform_args().get(name)
        self._args[name] = value

    def set_env(self, pairs: list[tuple[str, str]]) -> None:
        """The pairs of one ENV instruction, already expanded with the values before it."""
        for key, value in pairs:
            self._env[key] = value

    def image_env(self) -> list[str]:
        """The image config's Env: the base image's, then the stage's ENVs, in order."""
        return [f"{key}={value}" for key, value in self._env.items()]

    def run_env(self) -> list[str]:
        """The environment of a RUN: the image env plus the declared ARGs that ENV does not override."""
        args = [
            f"{key}={value}"
            for key, value in self._args.items()
            if value is not None and key not in self._env
        ]
        return [*self.image_env(), *args]

    def used_args(self) -> dict[str, str]:
        """The declared ARGs that have values; they belong in a RUN's cache key."""
        return {key: value for key, value in self._args.items() if value is not None}


def arg_declarations(instruction: Instruction) -> list[tuple[str, str | None]]:
    """The (name, default) pairs of an ARG instruction after `expand_instruction`; None: no default.

    `key_value_pairs` cannot tell `ARG name` from `ARG name=` (it returns "" for both); this can,
    and the difference matters: `ARG name` takes the global ARG's value, `ARG name=` sets "".
    """
    if instruction.keyword != "ARG":
        raise BuildError(f"expected an ARG instruction, got {instruction.keyword}")
    if not _is_expanded(instruction):
        return [
            (_unquote(k), None if v is None else _unquote(v))
            for k, v in split_pairs("ARG", instruction.args[0])
        ]
    out: list[tuple[str, str | None]] = []
    for item in instruction.args:
        key, has_value, value = item.partition("=")
        out.append((key, value if has_value else None))
    return out


def global_args(dockerfile: Dockerfile, build_args: dict[str, str]) -> dict[str, str | None]:
    """The ARGs before the first FROM, expanded in order (a global ARG may use an earlier one).

    The automatic platform ARGs (TARGETARCH...) are included, as BuildKit lets every FROM use them.
    """
    values: dict[str, str | None] = dict(platform_args())
    for instruction in dockerfile.instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword != "ARG":
            continue
        expanded = expand_instruction(instruction, values.get, dockerfile.escape)
        for name, default in arg_declarations(expanded):
            values[name] = build_args.get(name, default)
    return values


def _is_expanded(instruction: Instruction) -> bool:
    return instruction.expanded


def _unquote(word: str) -> str:
    """A raw pair's key or value with quotes and escapes processed and variables left as written."""
    return unquote_word(word)


def _expand_mount(spec: str, expand: Callable[[str], str]) -> str:
    """A RUN --mount=k=v,k=v spec with each value expanded (BuildKit expands values, never keys)."""
    fields = next(csv.reader([spec]), [])
    out: list[str] = []
    for item in fields:
        key, has_value, value = item.partition("=")
        out.append(f"{key}={expand(value)}" if has_value else key)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(out)
    return buffer.getvalue()


def expand_instruction(instruction: Instruction, lookup: Lookup, escape: str) -> Instruction:
    """The instruction with its variables expanded exactly where BuildKit expands them.

    Afterwards `args` is:
    - ADD/COPY/VOLUME: the list of words (shell form: split on blanks first, then each word
      expanded, so `COPY $x /d` with x="a b" copies one source "a b"); exec form: each item expanded;
      heredoc words (`<<EOF`) are kept, and unquoted COPY/ADD heredoc bodies are expanded;
    - EXPOSE: the list of ports (each blank-separated word expanded, and split again);
    - FROM: [image, "AS", name] or [image], only the image expanded (`lookup` should see the
      global ARGs only, as in BuildKit); `--platform` expanded;
    - USER/WORKDIR/STOPSIGNAL: [the expanded word];
    - ENV/LABEL: ["key=value", ...]; ARG: ["key=value" or "key", ...] (see `arg_declarations`);
    - RUN: unchanged except each `--mount` value; CMD/ENTRYPOINT/SHELL/HEALTHCHECK/MAINTAINER/ONBUILD:
      unchanged (the shell, or the stage that runs the trigger, expands them).
    COPY --from/--chown/--chmod/--exclude and ADD --chown/--chmod/--checksum/--exclude are expanded.
    """
    keyword = instruction.keyword
    if _is_expanded(instruction):
        return instruction

    def word(text: str) -> str:
        try:
            return expand_word(text, lookup, escape)
        except SubstitutionError as exc:
            raise SubstitutionError(f"line {instruction.line}: {keyword}: {exc}") from None

    flags = {name: list(values) for name, values in instruction.flags.items()}
    for name in _EXPANDED_FLAGS.get(keyword, ()):
        if name in flags:
            flags[name] = [word(value) for value in flags[name]]
    args = list(instruction.args)
    heredocs = instruction.heredocs

    if keyword in _WORD_LISTS:
        items = args if instruction.exec_form else args[0].split()
        args = [item if _is_heredoc_word(item, heredocs) else word(item) for item in items]
        if keyword in ("ADD", "COPY"):
            heredocs = tuple(
                _expand_heredoc(heredoc, lookup, keyword, instruction.line) for heredoc in heredocs
            )
    elif keyword == "EXPOSE":
        ports: list[str] = []
        for item in args[0].split():
            try:
                ports.extend(expand_words(item, lookup, escape))
            except SubstitutionError as exc:
                raise SubstitutionError(f"line {instruction.line}: EXPOSE: {exc}") from None
        args = ports
    elif keyword == "FROM":
        parts = args[0].split()
        args = [word(parts[0]), *parts[1:]]
        if "platform" in flags:
            flags["platform"] = [word(value) for value in flags["platform"]]
    elif keyword in _SINGLE_WORD:
        args = [word(args[0])]
    elif keyword in ("ENV", "LABEL", "ARG"):
        try:
            pairs = split_pairs(keyword, args[0], escape)
        except ValueError as exc:
            raise BuildError(f"line {instruction.line}: {exc}") from None
        args = [f"{word(key)}={word(value)}" if value is not None else word(key) for key, value in pairs]
    elif keyword == "RUN" and "mount" in flags:
        flags["mount"] = [_expand_mount(spec, word) for spec in flags["mount"]]
    else:
        return instruction
    return replace(instruction, args=args, flags=flags, heredocs=heredocs, expanded=True)


def _is_heredoc_word(item: str, heredocs: tuple[Heredoc, ...]) -> bool:
    parsed = parse_heredoc_word(item)
    return parsed is not None and any(heredoc.name == parsed[1] for heredoc in heredocs)


def _expand_heredoc(heredoc: Heredoc, lookup: Lookup, keyword: str, line: int) -> Heredoc:
    if not heredoc.expand:
        return heredoc
    try:
        return replace(heredoc, content=expand_heredoc(heredoc.content, lookup))
    except SubstitutionError as exc:
        raise SubstitutionError(f"line {line}: {keyword} heredoc {heredoc.name}: {exc}") from None


def key_value_pairs(instruction: Instruction) -> list[tuple[str, str]]:
    """The (key, value) pairs of an ENV, LABEL or ARG after `expand_instruction`.

    For ARG a name without a default gives "": use `arg_declarations` to tell the two apart.
    """
    if instruction.keyword not in ("ENV", "LABEL", "ARG"):
        raise BuildError(f"expected ENV, LABEL or ARG, got {instruction.keyword}")
    if not _is_expanded(instruction):
        return [
            (_unquote(k), "" if v is None else _unquote(v))
            for k, v in split_pairs(instruction.keyword, instruction.args[0])
        ]
    pairs: list[tuple[str, str]] = []
    for item in instruction.args:
        key, _, value = item.partition("=")
        pairs.append((key, value))
    return pairs
