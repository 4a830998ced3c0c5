"""The `lazyctr` command line: parses arguments, calls the rooms, prints results."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from lazyctr.display import human_age, human_size, ls_line
from lazyctr.errors import run_with_error_mapping
from lazyctr.rootfs import busybox_tarball, debian_tarball
from runtime import seccomp
from runtime.cgroups import Limits, detect_layout, parse_cpus, parse_memory
from runtime.container import Container, ContainerError, Volume, spec_for
from runtime.drivers import DRIVERS
from runtime.enter import exec_in
from runtime.state import LOG_FILE, ContainerState, all_states, find
from storage.diff import upper_to_tar
from storage.errors import NotFound, StorageError, UnsafePath
from storage.files import atomic_path
from storage.importer import (
    EXPORT_COMPRESSIONS,
    OciSource,
    add_layer,
    export_oci,
    image_name,
    import_oci,
    import_tarball,
)
from storage.store import Image, Store
from storage.tree import ImageTree


def default_root() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/lazyctr")
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data_home) / "lazyctr"


class Context:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.root)
        return self._store


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="LAZYCTR_ROOT",
    default=default_root,
    show_default="/var/lib/lazyctr for root",
    help="Where images, chunks and containers live.",
)
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, root: Path, debug: bool) -> None:
    """Build, ship and lazily start OCI containers."""
    ctx.obj = Context(root)


@cli.command("import")
@click.argument("source")
@click.argument("name", required=False)
@pass_context
def import_(ctx: Context, source: str, name: str | None) -> None:
    """Import SOURCE as image NAME[:TAG].

    SOURCE is a root file system tarball (.tar, .tar.gz, .tar.zst; - for stdin) or an OCI
    layout, oci:DIR[:REF]. Layers are stored as zstd:chunked.
    """
    if source.startswith("oci:"):
        image = import_oci(ctx.store, OciSource.parse(source), name)
    else:
        if name is None:
            raise click.UsageError("importing a tarball needs a NAME[:TAG]")
        image_name(name)  # refuse a bad name before reading anything
        if source == "-":
            image = import_tarball(ctx.store, sys.stdin.buffer, name)
        else:
            with open(source, "rb") as f:
                image = import_tarball(ctx.store, f, name)
    click.echo(image.id)


def _image_size(image: Image) -> int:
    return image.manifest.config.size + sum(layer.size for layer in image.manifest.layers)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def images(ctx: Context, as_json: bool) -> None:
    """List the images in the store."""
    found = sorted(ctx.store.images(), key=lambda image: image.name)
    if as_json:
        rows = [
            {
                "Name": image.name,
                "Id": image.id,
                "Digest": image.descriptor.digest,
                "Created": image.config.created,
                "Size": _image_size(image),
            }
            for image in found
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'REPOSITORY':<40} {'TAG':<16} {'IMAGE ID':<12}  {'CREATED':<24} SIZE")
    for image in found:
        repository, _, tag = image.name.rpartition(":")
        click.echo(
            f"{repository:<40} {tag:<16} {image.id.hex[:12]:<12}  {human_age(image.config.created):<24} "
            f"{human_size(_image_size(image))}"
        )


def _inspect(store: Store, image: Image) -> dict[str, Any]:
    layers = []
    for layer, diff_id in zip(image.manifest.layers, image.config.diff_ids, strict=False):
        with store.open_layer(layer) as reader:
            entries = reader.toc.entries
            layers.append(
                {
                    "Digest": layer.digest,
                    "MediaType": layer.media_type,
                    "Size": layer.size,
                    "DiffID": diff_id,
                    "TOCDigest": reader.toc_digest,
                    "TOCEntries": len(entries),
                    "UncompressedFileSize": sum(e.size for e in entries if e.type == "reg"),
                }
            )
    return {
        "Id": image.id,
        "Digest": image.descriptor.digest,
        "RepoTags": [i.name for i in store.resolve(image.id.hex)],
        "Created": image.config.created,
        "Architecture": image.config.architecture,
        "Os": image.config.os,
        "Config": image.config.config,
        "History": image.config.history,
        "Layers": layers,
        "Size": _image_size(image),
    }


@cli.command()
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def inspect(ctx: Context, image: str, as_json: bool) -> None:
    """Show an image's configuration and layers."""
    info = _inspect(ctx.store, ctx.store.image(image))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"Name:         {', '.join(info['RepoTags'])}")
    click.echo(f"ID:           {info['Id']}")
    click.echo(f"Digest:       {info['Digest']}")
    click.echo(f"Created:      {info['Created']}")
    click.echo(f"Platform:     {info['Os']}/{info['Architecture']}")
    click.echo(f"Size:         {human_size(info['Size'])}")
    for key, value in sorted(info["Config"].items()):
        click.echo(f"{key + ':':<14}{json.dumps(value)}")
    click.echo("Layers:")
    for layer in info["Layers"]:
        click.echo(
            f"  {layer['Digest']}  {human_size(layer['Size']):>8}  "
            f"{layer['TOCEntries']} entries, {human_size(layer['UncompressedFileSize'])} of files"
        )


@cli.command()
@click.argument("images", nargs=-1, required=True)
@pass_context
def rmi(ctx: Context, images: tuple[str, ...]) -> None:
    """Remove images (by name, or every name of an image ID) and free their blobs."""
    for text in images:
        names = [image.name for image in ctx.store.resolve(text)]
        ctx.store.untag(names)
        for name in names:
            click.echo(f"Untagged: {name}")
    ctx.store.gc()


@cli.command()
@click.argument("source")
@click.argument("target")
@pass_context
def tag(ctx: Context, source: str, target: str) -> None:
    """Give the image SOURCE another name TARGET."""
    ctx.store.tag(image_name(target), ctx.store.image(source).descriptor)


@cli.command()
@pass_context
def gc(ctx: Context) -> None:
    """Delete blobs that no image refers to."""
    removed, freed = ctx.store.gc()
    click.echo(f"removed {removed} blobs, freed {human_size(freed)}")


@cli.command()
@click.argument("image")
@click.argument("destination")
@click.option(
    "--compression",
    type=click.Choice(EXPORT_COMPRESSIONS),
    default="zstd:chunked",
    show_default=True,
    help="gzip for tools that cannot read zstd layers (umoci 0.4, older docker).",
)
@pass_context
def export(ctx: Context, image: str, destination: str, compression: str) -> None:
    """Write IMAGE to an OCI layout, oci:DIR[:REF], that skopeo, umoci and podman read."""
    if not destination.startswith("oci:"):
        raise click.UsageError(f"destination must be oci:DIR[:REF], not {destination!r}")
    ref = export_oci(ctx.store, ctx.store.image(image), OciSource.parse(destination), compression)
    click.echo(ref)


@cli.command()
@click.argument("image")
@click.argument("path", default="/")
@click.option("-R", "--recursive", is_flag=True, help="List subdirectories too.")
@pass_context
def ls(ctx: Context, image: str, path: str, recursive: bool) -> None:
    """List files of an image, read from its layers' tables of contents."""
    with ctx.store.open_layers(ctx.store.image(image)) as layers:
        tree = ImageTree.from_tocs([layer.toc for layer in layers])
    node = tree.lookup(path, follow_last=False)  # a dangling or looping symlink still lists
    if node.kind == "symlink":
        with contextlib.suppress(NotFound, UnsafePath):
            target = tree.lookup(path)
            node = target if target.is_dir else node
    if not node.is_dir:
        click.echo(ls_line(path, node.entry, node.kind, node.content.size))
        return
    if recursive:
        for child_path, child in tree.walk(node, path.strip("/")):
            if child is not node:
                click.echo(ls_line("/" + child_path, child.entry, child.kind, child.content.size))
        return
    for name, child in sorted((node.children or {}).items()):
        click.echo(ls_line(name, child.entry, child.kind, child.content.size))


@cli.command()
@click.argument("image")
@click.argument("path")
@pass_context
def cat(ctx: Context, image: str, path: str) -> None:
    """Print a file of an image, reading only the byte ranges that hold it."""
    found = ctx.store.image(image)
    with ctx.store.open_layers(found) as layers:
        node = ImageTree.from_tocs([layer.toc for layer in layers]).lookup(path)
        if node.kind != "reg":
            raise NotFound(f"{path} is not a regular file in {found.name}")
        for data in layers[node.layer].iter_file(node.content):
            sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
@click.option("-v", "--volume", "volumes", multiple=True, help="Bind mount SRC:DST[:ro].")
@click.option("-u", "--user", help="USER[:GROUP] to run as (names from the image, or numbers).")
@click.option("--entrypoint", help="Replace the image's entrypoint (and its default command).")
@click.option("--read-only", is_flag=True, help="Mount the container's root file system read-only.")
@click.option("--network", type=click.Choice(["none", "host", "private"]), default="none", show_default=True,
              help="none: only loopback; host: the host's network; private: as none for now.")  # fmt: skip
@click.option("-m", "--memory", help="Memory limit (e.g. 256m), swap included.")
@click.option("--cpus", help="CPU limit (e.g. 0.5).")
@click.option("--pids-limit", type=int, help="Most processes the container may have.")
@click.option("--driver", type=click.Choice(sorted(DRIVERS)), default="overlay", show_default=True,
              help="How the root file system is made from the image.")  # fmt: skip
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
    memory: str | None,
    cpus: str | None,
    pids_limit: int | None,
    driver: str,
    image: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a new container of IMAGE (overlay root, own namespaces); exits with its status."""
    try:
        found = ctx.store.image(image)
    except StorageError as e:
        raise ContainerError(str(e)) from None
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
    spec.volumes = [Volume.parse(text) for text in volumes]
    spec.user = user if user is not None else spec.user
    spec.read_only, spec.network = read_only, network
    spec.interactive, spec.tty, spec.init = interactive and not detach, tty and not detach, use_init
    for option in security_opts:
        if option != "seccomp=unconfined":
            raise ContainerError(f"unsupported --security-opt {option!r}: only seccomp=unconfined")
    spec.seccomp = seccomp.available() and "seccomp=unconfined" not in security_opts
    if network == "private":
        click.echo(
            "lazyctr: note: --network private has no bridge yet: the container has loopback only", err=True
        )
    container = Container(ctx.store, found, spec, DRIVERS[driver](ctx.store), limits)
    container.create()
    if detach:
        _run_detached(container, remove)
        click.echo(spec.id)
        return
    try:
        status = container.run()
    except BaseException:
        container.state.status, container.state.exit_code = "exited", 125
        container.state.save(container.dir)
        raise
    finally:
        if remove:
            container.remove()
    if container.oom_killed:
        click.echo(f"lazyctr: container {spec.id[:12]} was killed: out of memory (limit {memory})", err=True)
    sys.exit(status)


def _run_detached(container: Container, remove: bool) -> None:
    """Supervise the container from a child in its own session, its output going to the log."""
    if os.fork() == 0:
        os.setsid()
        log = os.open(container.dir / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        status = 125
        try:
            status = container.run()
        except BaseException as e:
            print(f"lazyctr: error: {e}", file=sys.stderr)
            container.state.status, container.state.exit_code = "exited", status
            container.state.save(container.dir)
        finally:
            if remove:
                container.remove()
            os._exit(status)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # return once it runs, as docker does
        with contextlib.suppress(NotFound):
            if ContainerState.load(container.dir).status != "created":
                return
        if not container.dir.exists():
            return
        time.sleep(0.02)


def _containers(ctx: Context) -> Path:
    return ctx.root / "containers"


def _wait_exited(ctx: Context, state: ContainerState, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(NotFound):
            if not ContainerState.load(_containers(ctx) / state.id).running:
                return True
        if not (_containers(ctx) / state.id).exists():
            return True
        time.sleep(0.05)
    return False


def _signal(state: ContainerState, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(state.pid, sig)


@cli.command()
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
            status = "Up"
        elif s.exit_code is None:
            status = "Created"
        else:
            status = f"Exited ({s.exit_code})" + (" (OOM killed)" if s.oom_killed else "")
        command = " ".join(s.command)
        click.echo(f"{s.id[:12]:<14}{s.image[:22]:<24}{command[:22]:<24}{status:<28}{s.name}")


@cli.command()
@click.option("-t", "--time", "timeout", default=10, show_default=True, help="Seconds before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
@pass_context
def stop(ctx: Context, timeout: int, containers: tuple[str, ...]) -> None:
    """Stop containers: SIGTERM, then SIGKILL after the timeout."""
    for text in containers:
        state = find(_containers(ctx), text)
        if state.running:
            _signal(state, signal.SIGTERM)
            if not _wait_exited(ctx, state, timeout):
                _signal(state, signal.SIGKILL)
                _wait_exited(ctx, state, 10)
        click.echo(text)


@cli.command()
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
        _signal(state, sig)
        click.echo(text)


@cli.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill a running container first.")
@click.argument("containers", nargs=-1, required=True)
@pass_context
def rm_container(ctx: Context, force: bool, containers: tuple[str, ...]) -> None:
    """Remove containers."""
    for text in containers:
        state = find(_containers(ctx), text)
        if state.running:
            if not force:
                raise ContainerError(f"container {text} is running: stop it first or use -f")
            _signal(state, signal.SIGKILL)
            _wait_exited(ctx, state, 10)
        shutil.rmtree(_containers(ctx) / state.id, ignore_errors=True)
        click.echo(text)


@cli.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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


@cli.command("commit")
@click.argument("container")
@click.argument("name")
@pass_context
def commit_container(ctx: Context, container: str, name: str) -> None:
    """Make a new image NAME[:TAG] of CONTAINER's image plus what the container changed."""
    state = find(_containers(ctx), container)
    upper = _containers(ctx) / state.id / "upper"
    if not upper.is_dir():
        raise ContainerError(f"container {container} has no upper layer: commit needs the overlay driver")
    base = ctx.store.image(state.image)
    with ctx.store.temp_file() as (tar_path, _):
        upper_to_tar(upper, tar_path)
        image = add_layer(
            ctx.store, base, tar_path, name, f"lazyctr commit {state.id[:12]}: {' '.join(state.command)}"
        )
    click.echo(image.id)


@cli.command()
@click.argument("container")
@pass_context
def logs(ctx: Context, container: str) -> None:
    """Print what a detached container wrote to stdout and stderr."""
    state = find(_containers(ctx), container)
    with contextlib.suppress(FileNotFoundError), open(_containers(ctx) / state.id / LOG_FILE, "rb") as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
    sys.stdout.buffer.flush()


@cli.command()
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


@cli.command()
@click.argument("kind", type=click.Choice(["busybox", "debian"]))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
def rootfs(kind: str, output: Path) -> None:
    """Make a base root file system tarball from Debian packages (busybox-static or debootstrap)."""
    make = busybox_tarball if kind == "busybox" else debian_tarball
    with atomic_path(output) as tmp:
        make(tmp)
    click.echo(output)


def main() -> None:
    def invoke() -> None:
        status = cli.main(standalone_mode=False, prog_name="lazyctr")
        if isinstance(status, int) and status:
            sys.exit(status)

    run_with_error_mapping(invoke)


if __name__ == "__main__":
    main()
