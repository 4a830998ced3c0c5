"""The command line imports a command's module only when that command runs."""

from __future__ import annotations

import importlib
import subprocess
import sys

from lazyctr.cli import COMMAND_TABLE, cli
from lazyctr.context import COMMANDS
from tests.conftest import CliRunner

ROOMS = ("storage", "builder", "registry", "lazyfs", "runtime", "benchmarks")


def test_the_table_matches_every_command() -> None:
    for module in {module for module, _ in COMMAND_TABLE.values()}:
        importlib.import_module(module)
    registered = {command.name: command for command in COMMANDS}
    assert set(registered) == set(COMMAND_TABLE)
    for name, (module, short_help) in COMMAND_TABLE.items():
        command = registered[name]
        assert command.callback is not None
        assert command.callback.__module__ == module, name
        assert command.get_short_help_str(limit=10**6) == short_help, name


def _modules_loaded_by(*args: str) -> set[str]:
    probe = (
        "import sys\n"
        "from lazyctr.cli import cli\n"
        f"try: cli.main({list(args)!r}, standalone_mode=False)\n"
        "except SystemExit: pass\n"
        f"print('MODULES', *(m for m in sys.modules if m.split('.')[0] in {(*ROOMS, 'lazyctr')!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(proc.stdout.rpartition("MODULES")[2].split())


def test_help_imports_no_command_and_no_room() -> None:
    loaded = _modules_loaded_by("--help")
    assert not {m for m in loaded if m.split(".")[0] in ROOMS} - {"storage", "storage.errors"}
    assert not loaded & {module for module, _ in COMMAND_TABLE.values()}


def test_a_command_imports_its_own_module_only() -> None:
    loaded = _modules_loaded_by("images", "--help")
    commands = {module for module, _ in COMMAND_TABLE.values()}
    assert loaded & commands == {"lazyctr.images"}


def test_help_lists_every_command(lazyctr: CliRunner) -> None:
    out = lazyctr("--help").out
    for name in COMMAND_TABLE:
        assert f"\n  {name} " in out, name
    assert cli.name is not None


def test_an_unknown_command_is_one_line(lazyctr: CliRunner) -> None:
    result = lazyctr("nosuch", ok=False)
    assert result.code == 2
    assert "No such command 'nosuch'" in result.stderr
    assert "Traceback" not in result.stderr
