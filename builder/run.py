"""RUN: the command line of a step (shell or exec form, heredoc scripts), its `--mount`s, and what the
builder asks of whoever runs it.

The builder does not isolate processes (that is `runtime/`, to its right): it describes the step as a
`RunRequest` and hands it to a `StepRunner` that `lazyctr build` injects. The runner runs the
command on top of the step's layers and leaves the step's file system changes, an overlayfs upper
directory, where the builder asked.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from builder.cache import LayerRef
from builder.errors import BuildError
from builder.syntax import Instruction

DEFAULT_SHELL = ["/bin/sh", "-c"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MOUNT_TYPES = ("bind", "cache", "secret")
NETWORKS = ("default", "host", "none")


@dataclass
class RunMount:
    """One file system a RUN sees besides its root: a host path, or another stage's or image's files."""

    target: str
    read_only: bool = True
    source: Path | None = None  # a host directory or file: a cache dir, the context, a secret
    layers: list[LayerRef] | None = None  # with `from=`: the files of these layers (bottom first)
    subpath: str = ""  # with `layers`: the directory of that tree to mount
    scratch_copy: bool = False  # `rw` bind: writes go to a throw-away copy, never to the source


@dataclass
class RunRequest:
    argv: list[str]
    env: list[str]
    cwd: str
    user: str
    network: str  # host or none
    layers: list[LayerRef]  # the step's root file system, bottom layer first
    mounts: list[RunMount] = field(default_factory=list)
    scripts: dict[str, bytes] = field(default_factory=dict)  # path in the container -> heredoc script


class StepRunner(Protocol):
    def run(self, request: RunRequest, upper: Path, output: Callable[[str], None]) -> int:
        """Run the step; returns its exit status. `output` gets each line it prints. Its file system
        changes are left in `upper` (a path that does not exist yet), overlayfs style."""
        ...


@dataclass(frozen=True)
class MountSpec:
    """A parsed `--mount=...` of RUN (before its sources are found)."""

    type: str
    target: str
    source: str = ""
    from_: str = ""
    id: str = ""
    read_only: bool = True
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    def describe(self) -> list[str]:
        """What of it goes into the step's cache key."""
        return [self.type, self.target, self.source, self.from_, self.id, str(self.read_only),
                str(self.mode), str(self.uid), str(self.gid)]  # fmt: skip


def parse_mount(text: str, workdir: str) -> MountSpec:
    """`type=cache,target=/root/.cache,id=x,ro`: BuildKit's --mount syntax (a CSV of key=value)."""
    values: dict[str, str] = {}
    for field_text in text.split(","):
        key, eq, value = field_text.strip().partition("=")
        key = key.lower()
        if not key:
            continue
        if not eq:
            if key in ("ro", "readonly", "rw", "readwrite", "required"):
                values[key] = "true"
                continue
            raise BuildError(f"invalid --mount {text!r}: {key!r} needs a value")
        values[{"dst": "target", "destination": "target", "src": "source"}.get(key, key)] = value
    kind = values.pop("type", "bind")
    if kind not in MOUNT_TYPES:
        raise BuildError(f"unsupported --mount type {kind!r}: expected one of {', '.join(MOUNT_TYPES)}")
    target = values.pop("target", "")
    identifier = values.pop("id", "")
    if kind == "secret":
        if not identifier:
            identifier = posixpath.basename(target) if target else ""
        if not identifier:
            raise BuildError(f"invalid --mount {text!r}: a secret needs an id or a target")
        target = target or f"/run/secrets/{identifier}"
    if not target:
        raise BuildError(f"invalid --mount {text!r}: no target")
    target = posixpath.normpath(posixpath.join(workdir, target))
    read_only = kind == "bind"
    if _true(values.pop("rw", values.pop("readwrite", "false"))):
        read_only = False
    if _true(values.pop("ro", values.pop("readonly", "false"))):
        read_only = True
    if kind == "cache":
        read_only = _true(values.get("readonly", "false"))
    try:
        mode = int(values.pop("mode"), 8) if "mode" in values else None
        uid = int(values.pop("uid")) if "uid" in values else None
        gid = int(values.pop("gid")) if "gid" in values else None
    except ValueError:
        raise BuildError(f"invalid --mount {text!r}: mode is octal, uid and gid are numbers") from None
    return MountSpec(
        type=kind,
        target=target,
        source=values.pop("source", ""),
        from_=values.pop("from", ""),
        id=identifier,
        read_only=read_only,
        required=_true(values.pop("required", "false")),
        mode=mode,
        uid=uid,
        gid=gid,
    )


def _true(value: str) -> bool:
    return value.lower() in ("true", "1", "yes", "")


def command_line(instruction: Instruction, shell: list[str]) -> tuple[list[str], dict[str, bytes]]:
    """The argv of a RUN (SHELL + command for the shell form) and the heredoc scripts to mount.

    As BuildKit does: a RUN that is only one heredoc runs it as a script (with its `#!` line if it has
    one); otherwise the heredocs are given to the shell with the command line, which reads them as
    here-documents.
    """
    if instruction.exec_form:
        return list(instruction.args), {}
    text = " ".join(instruction.args)
    if instruction.heredocs:
        first = instruction.heredocs[0]
        if len(instruction.heredocs) == 1 and _only_heredoc(text, first.name):
            script = first.body
            if script.startswith("#!"):
                path = f"/run/lazyctr-heredoc/{first.name}"  # a bind mount, removed after the step
                return [path], {path: script.encode()}
            return [*shell, script], {}
        parts = [text]
        for heredoc in instruction.heredocs:
            body = heredoc.body
            parts.append(body if body.endswith("\n") or not body else f"{body}\n")
            parts.append(heredoc.name)
        # "\n" between the command line, each body and its delimiter: the shell's here-document form.
        text = parts[0] + "\n" + "".join(p if p.endswith("\n") else f"{p}\n" for p in parts[1:])
    return [*shell, text], {}


def _only_heredoc(text: str, name: str) -> bool:
    body = text.strip()
    for prefix in ("<<-", "<<"):
        if body.startswith(prefix):
            rest = body[len(prefix) :].strip().strip("'\"")
            return rest == name
    return False


def with_default_path(env: list[str]) -> list[str]:
    """A RUN without PATH (FROM scratch, odd bases) gets BuildKit's default one."""
    if any(item.startswith("PATH=") for item in env):
        return env
    return [DEFAULT_PATH, *env]
