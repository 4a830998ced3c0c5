"""The instructions that change only the image config (and the variables in scope): ARG, ENV, LABEL,
MAINTAINER, USER, EXPOSE, VOLUME, STOPSIGNAL, SHELL, CMD, ENTRYPOINT, HEALTHCHECK and ONBUILD.

Each applies its typed instruction to the stage's state and returns the history's `created_by`, as
BuildKit writes it; none of them gives a layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from builder.instructions import (
    Arg,
    Cmd,
    Command,
    Entrypoint,
    Env,
    Expose,
    Healthcheck,
    Label,
    Maintainer,
    Onbuild,
    Shell,
    Stopsignal,
    User,
    Volume,
)
from builder.state import State


def _pairs_text(pairs: list[tuple[str, str]]) -> str:
    return " ".join(f"{k}={v}" for k, v in pairs)


def _add_to_set(state: State, key: str, names: list[str]) -> dict[str, Any]:
    """Names added to one of the config's sets (ExposedPorts, Volumes): objects of names to {}."""
    members = dict(state.config.get(key) or {})
    for name in names:
        members[name] = {}
    state.config[key] = members
    return members


def declare_args(state: State, command: Arg) -> str:
    for name, default in command.declarations:
        state.variables.declare_arg(name, default)
    return f"ARG {' '.join(command.node.args)}"


def set_env(state: State, command: Env) -> str:
    state.variables.set_env(command.pairs)
    state.config["Env"] = state.variables.image_env()
    return f"ENV {_pairs_text(command.pairs)}"


def add_labels(state: State, command: Label) -> str:
    state.config["Labels"] = {**(state.config.get("Labels") or {}), **dict(command.pairs)}
    return f"LABEL {_pairs_text(command.pairs)}"


def set_author(state: State, command: Maintainer) -> str:
    state.author = command.author
    return f"MAINTAINER {state.author}"


def set_user(state: State, command: User) -> str:
    state.user = command.word
    state.config["User"] = state.user
    return f"USER {state.user}"


def expose(state: State, command: Expose) -> str:
    ports = _add_to_set(state, "ExposedPorts", command.ports)
    return f"EXPOSE map[{' '.join(sorted(ports))}:{{}}]"


def add_volumes(state: State, command: Volume) -> str:
    _add_to_set(state, "Volumes", command.paths)
    return f"VOLUME {json.dumps(command.paths)}"


def set_stop_signal(state: State, command: Stopsignal) -> str:
    state.config["StopSignal"] = command.word
    return f"STOPSIGNAL {command.word}"


def set_shell(state: State, command: Shell) -> str:
    state.shell = list(command.shell)
    state.config["Shell"] = state.shell
    return f"SHELL {json.dumps(state.shell)}"


def set_cmd(state: State, command: Cmd) -> str:
    state.config["Cmd"] = command.argv(state.shell)
    state.cmd_set = True
    return f"CMD {json.dumps(state.config['Cmd'])}"


def set_entrypoint(state: State, command: Entrypoint) -> str:
    state.config["Entrypoint"] = command.argv(state.shell)
    # docker: an ENTRYPOINT resets a CMD inherited from the base (one set in this stage stays).
    if not state.cmd_set:
        state.config.pop("Cmd", None)
    return f"ENTRYPOINT {json.dumps(state.config['Entrypoint'])}"


def set_healthcheck(state: State, command: Healthcheck) -> str:
    state.config["Healthcheck"] = dict(command.check)
    return f"HEALTHCHECK {json.dumps(command.check, sort_keys=True)}"


def add_trigger(state: State, command: Onbuild) -> str:
    state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), command.trigger]
    return f"ONBUILD {command.trigger}"


# Keyed by the exact type: an Entrypoint is a Cmd too, and must not be taken for one.
_APPLY: dict[type[Command], Callable[[State, Any], str]] = {
    Arg: declare_args,
    Env: set_env,
    Label: add_labels,
    Maintainer: set_author,
    User: set_user,
    Expose: expose,
    Volume: add_volumes,
    Stopsignal: set_stop_signal,
    Shell: set_shell,
    Cmd: set_cmd,
    Entrypoint: set_entrypoint,
    Healthcheck: set_healthcheck,
    Onbuild: add_trigger,
}


def apply(state: State, command: Command) -> str:
    """Apply a config-only instruction to the stage's state; returns its history's `created_by`."""
    return _APPLY[type(command)](state, command)
