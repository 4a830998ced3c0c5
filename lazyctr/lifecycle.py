"""The commands of a container's life after `run`, and of what it uses: create, start, restart, wait,
pause, unpause, rename, stats and top (the work is runtime/lifecycle.py's and runtime/accounting.py's)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any

import click

from lazyctr.containers import run
from lazyctr.context import COMMANDS, Context, command, pass_context
from lazyctr.display import human_size
from runtime import lifecycle
from runtime.accounting import Usage, cpu_percent, read_usage, system_cpu_ns
from runtime.cgroups import Cgroup, CgroupError
from runtime.state import ContainerState, all_states, containers_dir, find
from storage.errors import LazyctrError

STATS_INTERVAL = 1.0  # seconds between two readings, as docker's
_NOT_FOR_CREATE = ("detach", "timings", "create_only")


def _create(**options: object) -> None:
    """`run` with its options, up to the container's creation (so both take the same options)."""
    click.get_current_context().invoke(run, **options, create_only=True)


create = click.Command(
    "create",
    callback=_create,
    params=[param for param in run.params if param.name not in _NOT_FOR_CREATE],
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    help="Create a container of IMAGE to run COMMAND, without starting it; prints its ID.\n\n"
    "It takes the options of run.",
)
COMMANDS.append(create)


@command()
@click.option(
    "-a", "--attach", is_flag=True, help="Stay attached: print the container's output, exit with its status."
)
@click.argument("containers", nargs=-1, required=True)
@pass_context
def start(ctx: Context, attach: bool, containers: tuple[str, ...]) -> None:
    """Start created or stopped containers (in the background, under their restart policy)."""
    if attach and len(containers) > 1:
        raise click.UsageError("you cannot start and attach multiple containers at once")
    for text in containers:
        state = find(containers_dir(ctx.root), text)
        status = lifecycle.start(ctx.store, ctx.root, state, attach)
        if attach:
            sys.exit(status or 0)
        click.echo(text)


@command()
@click.option("-t", "--time", "timeout", default=10, show_default=True, help="Seconds before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
@pass_context
def restart(ctx: Context, timeout: int, containers: tuple[str, ...]) -> None:
    """Stop containers (SIGTERM, SIGKILL after the timeout) and start them again."""
    for text in containers:
        lifecycle.restart(ctx.store, ctx.root, find(containers_dir(ctx.root), text), timeout)
        click.echo(text)


@command()
@click.argument("containers", nargs=-1, required=True)
@pass_context
def wait(ctx: Context, containers: tuple[str, ...]) -> None:
    """Wait until containers end for good, and print their exit statuses."""
    for text in containers:
        click.echo(lifecycle.wait(ctx.root, find(containers_dir(ctx.root), text)))


@command()
@click.argument("containers", nargs=-1, required=True)
@pass_context
def pause(ctx: Context, containers: tuple[str, ...]) -> None:
    """Freeze every process of containers (their cgroup's freezer)."""
    for text in containers:
        lifecycle.pause(find(containers_dir(ctx.root), text))
        click.echo(text)


@command()
@click.argument("containers", nargs=-1, required=True)
@pass_context
def unpause(ctx: Context, containers: tuple[str, ...]) -> None:
    """Let the processes of paused containers run again."""
    for text in containers:
        lifecycle.unpause(find(containers_dir(ctx.root), text))
        click.echo(text)


@command()
@click.argument("container")
@click.argument("name")
@pass_context
def rename(ctx: Context, container: str, name: str) -> None:
    """Give CONTAINER the name NAME."""
    lifecycle.rename(ctx.store, ctx.root, find(containers_dir(ctx.root), container), name)


@command()
@click.option("--no-stream", is_flag=True, help="Print one reading (over a second) and exit.")
@click.option("--format", "output", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help="json: an object per container and line: docker's keys, and raw figures.")  # fmt: skip
@click.argument("containers", nargs=-1)
@pass_context
def stats(ctx: Context, no_stream: bool, output: str, containers: tuple[str, ...]) -> None:
    """CPU, memory, network and block I/O, and process count of running containers, as docker stats."""
    directory = containers_dir(ctx.root)

    def running() -> list[ContainerState]:
        """Read again at every refresh: a restarted container has a new PID 1, new ones may have come."""
        if not containers:
            return [state for state in all_states(directory) if state.running]
        states = [find(directory, text) for text in containers]
        for state in states:
            if not state.running:
                raise lifecycle.LifecycleError(f"container {state.name} is not running")
        return states

    states = running()
    before = _readings(states)
    while True:
        time.sleep(STATS_INTERVAL)
        after = _readings(states)
        rows = [_row(state, before, after) for state in states if state.id in after]
        if not no_stream and output == "table":
            click.echo("\033[2J\033[H", nl=False)  # docker's refresh: clear, then the table again
        if output == "json":
            for row in rows:
                click.echo(json.dumps(row))
        else:
            _table(rows)
        if no_stream:
            return
        with contextlib.suppress(LazyctrError):  # one that ended is left out, as docker does
            states = running()
        before = after


def _readings(states: list[ContainerState]) -> dict[str, tuple[Usage, int]]:
    """Each container's counters with the machine's CPU time beside them (ended containers left out)."""
    found = {}
    for state in states:
        try:
            usage = read_usage(Cgroup.open(state.id), state.pid)
        except (CgroupError, OSError):
            continue
        found[state.id] = (usage, system_cpu_ns())
    return found


def _row(
    state: ContainerState, before: dict[str, tuple[Usage, int]], after: dict[str, tuple[Usage, int]]
) -> dict[str, Any]:
    usage, system = after[state.id]
    first, first_system = before.get(state.id, (usage, system))
    cpu = cpu_percent(first, usage, first_system, system)
    memory_percent = usage.memory / usage.memory_limit * 100 if usage.memory_limit else 0.0
    return {
        "ID": state.id[:12],
        "Name": state.name,
        "CPUPerc": f"{cpu:.2f}%",
        "MemUsage": f"{binary_size(usage.memory)} / {binary_size(usage.memory_limit)}",
        "MemPerc": f"{memory_percent:.2f}%",
        "NetIO": f"{human_size(usage.net_rx)} / {human_size(usage.net_tx)}",
        "BlockIO": f"{human_size(usage.block_read)} / {human_size(usage.block_write)}",
        "PIDs": str(usage.pids),
        "Raw": {**asdict(usage), "cpu_percent": round(cpu, 3)},
    }


def _table(rows: list[dict[str, Any]]) -> None:
    click.echo(
        f"{'CONTAINER ID':<15}{'NAME':<20}{'CPU %':<10}{'MEM USAGE / LIMIT':<22}{'MEM %':<9}"
        f"{'NET I/O':<20}{'BLOCK I/O':<20}PIDS"
    )
    for row in rows:
        click.echo(
            f"{row['ID']:<15}{row['Name'][:19]:<20}{row['CPUPerc']:<10}{row['MemUsage']:<22}{row['MemPerc']:<9}"
            f"{row['NetIO']:<20}{row['BlockIO']:<20}{row['PIDs']}"
        )


def binary_size(size: float) -> str:
    """Sizes in binary units with four significant digits, as docker prints memory (`1.5MiB`)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.4g}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


@command(context_settings={"ignore_unknown_options": True})
@click.argument("container")
@click.argument("ps_options", nargs=-1, type=click.UNPROCESSED)
@pass_context
def top(ctx: Context, container: str, ps_options: tuple[str, ...]) -> None:
    """The processes of a running container, as `ps` lists them (default options: -ef)."""
    state = find(containers_dir(ctx.root), container)
    if not state.running:
        raise lifecycle.LifecycleError(f"container {state.name} is not running")
    try:
        pids = set(Cgroup.open(state.id).pids())
    except CgroupError:
        raise lifecycle.LifecycleError(f"container {state.name} is not running") from None
    # -ww: whole command lines, whatever COLUMNS says (ps cuts them at its width when it is set).
    listing = subprocess.run(["ps", *(ps_options or ("-ef",)), "-ww"], capture_output=True, text=True)
    if listing.returncode != 0:
        raise lifecycle.LifecycleError(f"ps {' '.join(ps_options)} failed: {listing.stderr.strip()}")
    header, *lines = listing.stdout.splitlines()
    columns = header.split()
    if "PID" not in columns:
        raise lifecycle.LifecycleError(f"ps {' '.join(ps_options)} lists no PID column")
    where = columns.index("PID")
    click.echo(header)
    for line in lines:
        fields = line.split(None, len(columns) - 1)
        if len(fields) > where and fields[where].isdigit() and int(fields[where]) in pids:
            click.echo(line)
