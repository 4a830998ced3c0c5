"""The container commands: run, ps, stop, kill, rm, logs, exec, commit, info."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lazyctr.context import Context, command, pass_context
from runtime import seccomp, supervise, systemd
from runtime.cgroups import Limits, detect_layout, parse_cpus, parse_memory
from runtime.container import Container
from runtime.drivers import DEFAULT_PROFILE_SECONDS, DRIVERS, choose_driver
from runtime.enter import exec_in
from runtime.lifecycle import Settings, paused, save_config
from runtime.process import ContainerError
from runtime.restart import RestartPolicy, mark_stopped
from runtime.spec import Spec, spec_for
from runtime.state import LOG_FILE, all_states, containers_dir, find
from runtime.volumes import volume_of
from storage import timeline
from storage.errors import StorageError
from storage.store import Image

if TYPE_CHECKING:
    import socket


@command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--rm", "remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the container ID.")
@click.option("--name", default="", help="A name for the container.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open for the container.")
@click.option("-t", "--tty", is_flag=True, help="Give the container a terminal (Ctrl-C reaches it).")
@click.option("--init", "use_init", is_flag=True, help="Run a minimal init as PID 1 that reaps zombies.")
@click.option(
    "--security-opt", "security_opts", multiple=True, help="seccomp=unconfined turns the filter off."
)
@click.option("-e", "--env", multiple=True, help="Set an environment variable (K=V).")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("--hostname", default="", help="Container host name (default: the ID's first 12 digits).")
@click.option(
    "-v",
    "--volume",
    "volumes",
    multiple=True,
    help="Bind SRC:DST[:ro], or the named volume NAME:DST[:ro] (made if missing).",
)
@click.option("-u", "--user", help="USER[:GROUP] to run as (names from the image, or numbers).")
@click.option("--entrypoint", help="Replace the image's entrypoint (and its default command).")
@click.option("--read-only", is_flag=True, help="Mount the container's root file system read-only.")
@click.option("--network", default="bridge", envvar="LAZYCTR_NETWORK", show_default=True, show_envvar=True,
              help="bridge (the default network), a network's NAME (`lazyctr network create`), none (only"
              " loopback) or host (the host's network).")  # fmt: skip
@click.option("-p", "--publish", multiple=True,
              help="Publish a container's port on the host: [IP:]HOST:CONTAINER[/tcp|/udp].")  # fmt: skip
@click.option("-m", "--memory", help="Memory limit (e.g. 256m), swap included.")
@click.option("--cpus", help="CPU limit (e.g. 0.5).")
@click.option("--pids-limit", type=int, help="Most processes the container may have.")
@click.option("--driver", type=click.Choice(sorted(DRIVERS)),
              help="How the root file system is made from the image (default: overlay for an image whose"
              " layers are all here, lazy for a lazily pulled one).")  # fmt: skip
@click.option("--record-profile", is_flag=True,
              help="Record what the container reads while it starts as the image's access profile (lazy"
              " driver, through a lazyfs mount of its own); later lazy runs prefetch it.")  # fmt: skip
@click.option("--profile-seconds", type=float,
              help=f"With --record-profile: record for this many seconds at most, or until the container"
              f" ends  [default: {DEFAULT_PROFILE_SECONDS:g}].")  # fmt: skip
@click.option(
    "--restart",
    "restart_policy",
    default="no",
    show_default=True,
    help="Restart a detached container when it exits: no, on-failure[:N], always, unless-stopped.",
)
@click.option("--create-only", is_flag=True, hidden=True)  # `lazyctr create` is `run` stopping here
@click.option("--timings", is_flag=True,
              help="When the command has ended, print on stderr how long each phase of the start took"
              " (pull, mount, exec, first read...) and the requests and bytes received in it.")  # fmt: skip
@click.option("--systemd", "systemd_mode", type=click.Choice(systemd.MODES), default="true",
              show_default=True, help="Mounts and stop signal for systemd as PID 1; true: when the command"
              " is an init.")  # fmt: skip
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_context
def run(
    ctx: Context,
    remove: bool,
    detach: bool,
    name: str,
    interactive: bool,
    tty: bool,
    use_init: bool,
    security_opts: tuple[str, ...],
    env: tuple[str, ...],
    workdir: str | None,
    hostname: str,
    volumes: tuple[str, ...],
    user: str | None,
    entrypoint: str | None,
    read_only: bool,
    network: str,
    publish: tuple[str, ...],
    memory: str | None,
    cpus: str | None,
    pids_limit: int | None,
    driver: str | None,
    record_profile: bool,
    profile_seconds: float | None,
    restart_policy: str,
    create_only: bool,
    timings: bool,
    systemd_mode: str,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a new container of IMAGE (its own root and namespaces); exits with its status.

    An IMAGE that is not here but names a registry (HOST[:PORT]/NAME[:TAG]) is pulled lazily first:
    the container starts once the image's tables of contents are here, and reads the rest on demand.
    """
    if timings:
        if detach:
            raise ContainerError("--timings shows the start when the command has ended: it needs a container"
                                 " in the foreground, not -d")  # fmt: skip
        timeline.enable()
        timeline.mark("imports done")
    settings = Settings(RestartPolicy.parse(restart_policy), remove)
    if remove and settings.restart.name != "no":
        raise ContainerError("--restart and --rm conflict: a container removed when it exits cannot restart")
    found = _image(ctx, image)
    try:
        limits = Limits(
            memory=parse_memory(memory) if memory else None,
            cpus=parse_cpus(cpus) if cpus else None,
            pids=pids_limit,
        )
    except ValueError as e:
        raise ContainerError(str(e)) from None
    spec = spec_for(found, list(command), list(env), workdir, entrypoint)
    spec.hostname, spec.name = hostname, name
    spec.volumes = [volume_of(ctx.root, text, spec.id) for text in volumes]
    spec.user = user if user is not None else spec.user
    spec.read_only, spec.network = read_only, network
    spec.interactive, spec.tty, spec.init = interactive and not detach, tty and not detach, use_init
    spec.seccomp = seccomp.profile_of(security_opts)
    if systemd.wanted(systemd_mode, spec.argv):
        systemd.configure(spec)
    held_ports = _network(ctx, spec, publish)  # held by the supervisor (forked below) while it runs
    if profile_seconds is not None and not record_profile:
        raise ContainerError("--profile-seconds only goes with --record-profile")
    if profile_seconds is not None and not profile_seconds > 0:
        raise ContainerError(f"--profile-seconds must be more than 0, not {profile_seconds:g}")
    record_seconds = (profile_seconds or DEFAULT_PROFILE_SECONDS) if record_profile else None
    container = Container(
        ctx.store, found, spec, choose_driver(ctx.store, found, driver, record_seconds), limits
    )
    container.create()
    if create_only or not remove:  # what `start` needs; `run --rm` (the quick path) cannot be started again
        save_config(container, settings)
    if create_only:
        click.echo(spec.id)
        return
    if detach:
        supervise.run_detached(container, remove, settings.restart)
        for port in held_ports:
            port.close()  # its supervisor holds its own copy
        click.echo(spec.id)
        return
    status = supervise.run_to_end(container, remove)
    if timings:
        click.echo(timeline.report(), err=True)
    note = supervise.recording_note(container)
    if note:
        click.echo(note, err=True)
    if container.oom_killed:
        click.echo(f"lazyctr: container {spec.id[:12]} was killed: out of memory (limit {memory})", err=True)
    sys.exit(status)


def _network(ctx: Context, spec: Spec, publish: tuple[str, ...]) -> list[socket.socket]:
    """Check `--network` and `-p`, and bind the published host ports (taken ones are refused here)."""
    if spec.network in ("none", "host"):
        if publish:
            raise ContainerError(f"-p needs a bridge network: --network {spec.network} publishes no port")
        return []
    from runtime.network.networks import NetworkError, find_network  # only a bridged container pays
    from runtime.network.ports import PortMapping, reserve_ports

    try:
        find_network(ctx.root, spec.network)
    except NetworkError as e:
        raise ContainerError(str(e)) from None
    spec.ports = [PortMapping.parse(text) for text in publish]
    return reserve_ports(spec.ports)


def _image(ctx: Context, text: str) -> Image:
    """The image named `text`, pulled lazily from its registry if it is not here (as docker run pulls)."""
    from registry.pull_policy import image_or_pull

    try:
        return image_or_pull(ctx.store, text, lazy=True)
    except StorageError as e:
        raise ContainerError(str(e)) from None


def _containers(ctx: Context) -> Path:
    return containers_dir(ctx.root)


@command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show exited containers too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def ps(ctx: Context, show_all: bool, as_json: bool) -> None:
    """List containers."""
    states = [s for s in all_states(_containers(ctx)) if show_all or s.running]
    if as_json:
        click.echo(json.dumps([asdict(s) for s in states], indent=2))
        return
    click.echo(f"{'CONTAINER ID':<14}{'IMAGE':<24}{'COMMAND':<24}{'STATUS':<28}NAMES")
    for s in states:
        if s.running:
            status = "Up (Paused)" if paused(s) else "Up"
        elif s.exit_code is None:
            status = "Created"
        else:
            status = f"Exited ({s.exit_code})" + (" (OOM killed)" if s.oom_killed else "")
        command = " ".join(s.command)
        click.echo(f"{s.id[:12]:<14}{s.image[:22]:<24}{command[:22]:<24}{status:<28}{s.name}")


@command()
@click.option("-t", "--time", "timeout", default=10, show_default=True, help="Seconds before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
@pass_context
def stop(ctx: Context, timeout: int, containers: tuple[str, ...]) -> None:
    """Stop containers: SIGTERM, then SIGKILL after the timeout."""
    for text in containers:
        supervise.stop(ctx.root, find(_containers(ctx), text), timeout)
        click.echo(text)


@command()
@click.option(
    "-s", "--signal", "signal_name", default="KILL", show_default=True, help="Signal name or number."
)
@click.argument("containers", nargs=-1, required=True)
@pass_context
def kill(ctx: Context, signal_name: str, containers: tuple[str, ...]) -> None:
    """Send a signal to containers' main process."""
    try:
        sig = (
            int(signal_name)
            if signal_name.isdigit()
            else signal.Signals["SIG" + signal_name.upper().removeprefix("SIG")]
        )
    except KeyError:
        raise click.BadParameter(f"unknown signal {signal_name!r}", param_hint="--signal") from None
    for text in containers:
        state = find(_containers(ctx), text)
        if not state.running:
            raise ContainerError(f"container {text} is not running")
        mark_stopped(_containers(ctx) / state.id)  # its restart policy no longer applies, as with docker
        supervise.send_signal(state, sig)
        click.echo(text)


@command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("containers", nargs=-1, required=True)
@pass_context
def rm_container(ctx: Context, force: bool, containers: tuple[str, ...]) -> None:
    """Remove containers."""
    for text in containers:
        state = find(_containers(ctx), text)
        if state.running and not force:
            raise ContainerError(f"container {text} is running: stop it first or use -f")
        supervise.remove(ctx.root, state)
        click.echo(text)


@command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-e", "--env", multiple=True, help="Set an environment variable (K=V).")
@click.option("-w", "--workdir", help="Working directory (default: that of the container's process).")
@click.option("-u", "--user", default="", help="USER[:GROUP] to run as.")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_context
def exec_(
    ctx: Context,
    env: tuple[str, ...],
    workdir: str | None,
    user: str,
    container: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a running container, joining its namespaces and cgroup."""
    state = find(_containers(ctx), container)
    sys.exit(exec_in(state, list(command), list(env), workdir, user))


@command("commit")
@click.argument("container")
@click.argument("name")
@pass_context
def commit_container(ctx: Context, container: str, name: str) -> None:
    """Make a new image NAME[:TAG] of CONTAINER's image plus what the container changed."""
    from runtime.commit import commit  # the layer writer and importer: only this command needs them

    image = commit(ctx.store, find(_containers(ctx), container), name)
    click.echo(image.id)


@command()
@click.argument("container")
@pass_context
def logs(ctx: Context, container: str) -> None:
    """Print what a detached container wrote to stdout and stderr."""
    state = find(_containers(ctx), container)
    with contextlib.suppress(FileNotFoundError), open(_containers(ctx) / state.id / LOG_FILE, "rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()


@command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def info(ctx: Context, as_json: bool) -> None:
    """What lazyctr runs with here: root, images, containers, cgroups, drivers, security features."""
    facts = {
        "Root": str(ctx.root),
        "Images": len(ctx.store.names()),
        "Containers": len(all_states(_containers(ctx))),
        "Kernel": os.uname().release,
        "CgroupLayout": detect_layout(),
        "Drivers": sorted(DRIVERS),
        "Namespaces": ["mount", "uts", "ipc", "net", "pid", "cgroup"],
        "Capabilities": "docker's default set",
        "NoNewPrivileges": True,
        "Seccomp": "docker's default denylist (libseccomp)"
        if seccomp.available()
        else "not applied: no libseccomp",
        "UserNamespaces": "not used",
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        click.echo(f"{key + ':':<18}{', '.join(value) if isinstance(value, list) else value}")
