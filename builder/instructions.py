"""Typed instructions, as BuildKit's frontend makes them (instructions.Parse): one class per keyword,
holding what its flags and arguments mean once checked.

Each class names its keyword and the flags it accepts (the parser reads both from here: the one list
of keywords); `command()` makes the typed instruction from a parsed node, after its variables were
expanded (`builder.variables.expand_instruction`), and checks what the parser could not (argument
counts and values known only after expansion). Its errors are one line without the place: the
builder prefixes the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from builder.errors import BuildError
from builder.run import NETWORKS
from builder.sources import CopyRequest
from builder.syntax import Heredoc, Instruction
from builder.variables import arg_declarations, key_value_pairs

# Go's time.ParseDuration, which BuildKit uses for HEALTHCHECK's durations.
_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "μs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
HEALTHCHECK_DURATIONS = (("interval", "Interval"), ("timeout", "Timeout"),
                         ("start-period", "StartPeriod"), ("start-interval", "StartInterval"))  # fmt: skip
EXPOSE_PROTOCOLS = ("tcp", "udp", "sctp")


def parse_duration_ns(text: str) -> int:
    """A Go duration ("1m30s", "1.5h", "300ms", "0") in nanoseconds; ValueError if it is not one."""
    body = text[1:] if text[:1] in "+-" else text
    sign = -1 if text.startswith("-") else 1
    if body == "0":
        return 0
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _DURATION_PART_RE.match(body, pos)
        if not match:
            raise ValueError(f"invalid duration {text!r}: expected a number and a unit (ns, us, ms, s, m, h)")
        total += float(match.group(1)) * _DURATION_UNITS_NS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f"invalid duration {text!r}")
    return sign * round(total)


@dataclass(frozen=True)
class Command:
    """One instruction, typed. `node` is the instruction it was made from (its line, its text)."""

    keyword: ClassVar[str]
    # Flags it accepts: name -> kind. "bool" flags may be given bare (`--link`) and then hold "true";
    # "multi" flags may repeat; "str" flags need a value and appear at most once.
    flags: ClassVar[dict[str, str]] = {}
    numbered: ClassVar[bool] = False  # a file system step: BuildKit numbers it in the progress output

    node: Instruction

    @classmethod
    def of(cls, node: Instruction) -> Self:
        return cls(node)

    @property
    def text(self) -> str:
        """The instruction as written, on one line."""
        return " ".join(self.node.original.split()) if self.node.original else self.keyword

    def last_flag(self, name: str) -> str | None:
        values = self.node.flags.get(name)
        return values[-1] if values else None

    def flag_true(self, name: str) -> bool:
        value = self.last_flag(name)
        return value is not None and value.lower() in ("", "true", "1")


def _words(node: Instruction, least: int, most: int | None) -> list[str]:
    count = len(node.args)
    if count < least or (most is not None and count > most):
        wanted = f"exactly {least}" if least == most else f"at least {least}"
        raise BuildError(f"{node.keyword.upper()} takes {wanted} argument(s)")
    return list(node.args)


@dataclass(frozen=True)
class From(Command):
    keyword = "FROM"
    flags: ClassVar[dict[str, str]] = {"platform": "str"}

    base: str  # the image, a stage or scratch; its variables expanded with the global ARGs only
    name: str | None  # `AS name`, lowered

    @classmethod
    def of(cls, node: Instruction) -> Self:
        args = node.args if node.exec_form else " ".join(node.args).split()
        if len(args) == 3 and args[1].upper() == "AS":
            return cls(node, args[0], args[2].lower())
        if len(args) != 1:
            raise BuildError("FROM takes IMAGE [AS NAME]")
        return cls(node, args[0], None)


@dataclass(frozen=True)
class Arg(Command):
    keyword = "ARG"

    declarations: list[tuple[str, str | None]]  # (name, default); None: no default

    @classmethod
    def of(cls, node: Instruction) -> Self:
        return cls(node, arg_declarations(node))


@dataclass(frozen=True)
class _Pairs(Command):
    """An instruction of NAME=VALUE pairs."""

    pairs: list[tuple[str, str]]

    @classmethod
    def of(cls, node: Instruction) -> Self:
        return cls(node, key_value_pairs(node))


@dataclass(frozen=True)
class Env(_Pairs):
    keyword = "ENV"


@dataclass(frozen=True)
class Label(_Pairs):
    keyword = "LABEL"


@dataclass(frozen=True)
class Maintainer(Command):
    keyword = "MAINTAINER"

    author: str

    @classmethod
    def of(cls, node: Instruction) -> Self:
        return cls(node, " ".join(node.args))


@dataclass(frozen=True)
class _Word(Command):
    """An instruction of exactly one word."""

    word: str

    @classmethod
    def of(cls, node: Instruction) -> Self:
        return cls(node, _words(node, 1, 1)[0])


@dataclass(frozen=True)
class User(_Word):
    keyword = "USER"


@dataclass(frozen=True)
class Workdir(_Word):
    """`word` is the path as written: relative to the workdir before it."""

    keyword = "WORKDIR"
    numbered = True


@dataclass(frozen=True)
class Stopsignal(_Word):
    keyword = "STOPSIGNAL"


@dataclass(frozen=True)
class Expose(Command):
    keyword = "EXPOSE"

    ports: list[str]  # "8080/tcp": the protocol given, or tcp

    @classmethod
    def of(cls, node: Instruction) -> Self:
        ports = []
        for port in _words(node, 1, None):
            number, _, proto = port.partition("/")
            if not number.replace("-", "").isdigit() or (proto and proto.lower() not in EXPOSE_PROTOCOLS):
                raise BuildError(f"EXPOSE {port}: expected PORT[/tcp|udp|sctp]")
            ports.append(f"{number}/{(proto or 'tcp').lower()}")
        return cls(node, ports)


@dataclass(frozen=True)
class Volume(Command):
    keyword = "VOLUME"

    paths: list[str]

    @classmethod
    def of(cls, node: Instruction) -> Self:
        return cls(node, _words(node, 1, None))


@dataclass(frozen=True)
class Shell(Command):
    keyword = "SHELL"

    shell: list[str]

    @classmethod
    def of(cls, node: Instruction) -> Self:
        if not node.exec_form or not node.args:
            raise BuildError('SHELL requires the JSON form, e.g. SHELL ["/bin/sh", "-c"]')
        return cls(node, list(node.args))


@dataclass(frozen=True)
class Cmd(Command):
    keyword = "CMD"

    args: list[str]  # the exec form's argv, or the shell form's command as one string
    exec_form: bool

    @classmethod
    def of(cls, node: Instruction) -> Self:
        return cls(node, list(node.args), node.exec_form)

    def argv(self, shell: list[str]) -> list[str]:
        return list(self.args) if self.exec_form else [*shell, " ".join(self.args)]


@dataclass(frozen=True)
class Entrypoint(Cmd):
    keyword = "ENTRYPOINT"


@dataclass(frozen=True)
class Healthcheck(Command):
    keyword = "HEALTHCHECK"
    flags: ClassVar[dict[str, str]] = {
        "interval": "str",
        "timeout": "str",
        "start-period": "str",
        "start-interval": "str",
        "retries": "str",
    }

    check: dict[str, Any]  # the image config's Healthcheck: Test, and the durations and retries given

    @classmethod
    def of(cls, node: Instruction) -> Self:
        args = node.args
        if (
            not args
            or args[0].upper() not in ("NONE", "CMD", "CMD-SHELL")
            or (args[0] != "NONE" and len(args) < 2)
        ):
            raise BuildError("HEALTHCHECK needs CMD and a command, or NONE")
        check: dict[str, Any] = {"Test": list(args)}
        if args[0].upper() != "NONE":
            for flag, key in HEALTHCHECK_DURATIONS:
                if node.flags.get(flag):
                    try:
                        check[key] = parse_duration_ns(node.flags[flag][-1])
                    except ValueError as e:
                        raise BuildError(f"HEALTHCHECK --{flag}: {e}") from None
            if node.flags.get("retries"):
                value = node.flags["retries"][-1]
                if not value.isdigit():
                    raise BuildError(f"HEALTHCHECK --retries={value}: expected a number")
                check["Retries"] = int(value)
        return cls(node, check)


@dataclass(frozen=True)
class Onbuild(Command):
    keyword = "ONBUILD"
    forbidden: ClassVar[tuple[str, ...]] = ("ONBUILD", "FROM", "MAINTAINER")  # as triggers

    trigger: str  # the trigger's text, as the image config keeps it

    @classmethod
    def of(cls, node: Instruction) -> Self:
        text = node.original.split(None, 1)[1] if node.original else " ".join(node.args)
        if node.trigger is not None and node.trigger.keyword.upper() in cls.forbidden:
            raise BuildError(f"ONBUILD {node.trigger.keyword} is not allowed")
        return cls(node, text.strip())


@dataclass(frozen=True)
class Copy(Command):
    keyword = "COPY"
    flags: ClassVar[dict[str, str]] = {
        "from": "str",
        "chown": "str",
        "chmod": "str",
        "link": "bool",
        "parents": "bool",
        "exclude": "multi",
    }
    numbered = True

    sources: list[str]  # expanded; heredoc words (`<<EOF`) name the heredocs
    dest: str
    heredocs: tuple[Heredoc, ...]

    @classmethod
    def of(cls, node: Instruction) -> Self:
        if len(node.args) < 2:
            raise BuildError(f"{cls.keyword} needs at least one source and a destination")
        return cls(node, list(node.args[:-1]), node.args[-1], tuple(node.heredocs))

    @property
    def source_ref(self) -> str | None:
        """`--from=`: a stage or an image to copy from, instead of the build context."""
        return self.last_flag("from")

    def request(self, workdir: str) -> CopyRequest:
        return CopyRequest(
            sources=list(self.sources),
            dest=self.dest,
            workdir=workdir,
            chown=self.last_flag("chown"),
            chmod=self.last_flag("chmod"),
            link=self.flag_true("link"),
            excludes=tuple(self.node.flags.get("exclude", [])),
            heredocs=self.heredocs,
            add=self.keyword == "ADD",
            checksum=self.last_flag("checksum"),
            keep_git_dir=self.flag_true("keep-git-dir"),
        )


@dataclass(frozen=True)
class Add(Copy):
    keyword = "ADD"
    flags: ClassVar[dict[str, str]] = {
        "chown": "str",
        "chmod": "str",
        "link": "bool",
        "keep-git-dir": "bool",
        "checksum": "str",
        "exclude": "multi",
        "unpack": "bool",
    }


@dataclass(frozen=True)
class Run(Command):
    keyword = "RUN"
    flags: ClassVar[dict[str, str]] = {
        "mount": "multi",
        "network": "str",
        "security": "str",
        "device": "multi",
    }
    numbered = True

    network: str  # default, host or none
    mounts: list[str]  # the --mount specs, parsed once the workdir is known

    @classmethod
    def of(cls, node: Instruction) -> Self:
        if not node.args and not node.heredocs:
            raise BuildError("RUN needs a command")
        values = node.flags.get("network", [])
        network = values[-1] if values else "default"
        if network not in NETWORKS:
            raise BuildError(f"unsupported RUN --network={network}: expected one of {', '.join(NETWORKS)}")
        return cls(node, network, list(node.flags.get("mount", [])))


COMMANDS: dict[str, type[Command]] = {
    cls.keyword: cls
    for cls in (
        Add,
        Arg,
        Cmd,
        Copy,
        Entrypoint,
        Env,
        Expose,
        From,
        Healthcheck,
        Label,
        Maintainer,
        Onbuild,
        Run,
        Shell,
        Stopsignal,
        User,
        Volume,
        Workdir,
    )
}
KEYWORDS = tuple(COMMANDS)


def command(node: Instruction) -> Command:
    """The typed instruction of `node` (expanded, but for FROM and ONBUILD); BuildError if it is wrong."""
    kind = COMMANDS.get(node.keyword.upper())
    if kind is None:
        raise BuildError(f"unknown instruction: {node.keyword}")
    return kind.of(node)
