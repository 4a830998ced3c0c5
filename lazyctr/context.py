"""What every command shares: the --root and the store under it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pathlib import Path  # not imported for real: `--help` needs no paths (pathlib is ~4 ms)

    from storage.store import Store


def default_root() -> str:
    if os.geteuid() == 0:
        return "/var/lib/lazyctr"
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(data_home, "lazyctr")


class Context:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            from storage.store import Store  # here, not at import: `--help` and `ps` need no store

            self._store = Store(self.root)
        return self._store


pass_context = click.make_pass_decorator(Context)

COMMANDS: list[click.Command] = []  # every command of lazyctr, added to the group by cli.py


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """`click.command`, also listing the command for the group."""

    def register(f: Callable[..., Any]) -> click.Command:
        cmd: click.Command = click.command(*args, **kwargs)(f)
        COMMANDS.append(cmd)
        return cmd

    return register
