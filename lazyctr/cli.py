"""The `lazyctr` command line: the group, its options, and where each command lives.

A command's module is imported only when that command runs: importing every room costs several
times Python's own start, and `lazyctr run` of a present image should pay for the runtime only.
`lazyctr --help` lists the commands from the table below without importing any of them;
tests/lazyctr/test_cli_lazy.py holds the table to the commands themselves.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
from typing import NoReturn

import click

from lazyctr.context import COMMANDS, Context, default_root
from lazyctr.errors import run_with_error_mapping

POLICY_ENV = "LAZYCTR_POLICY"  # registry/policy.py's (not imported here: `--help` imports no room)

# name -> (the module that defines the command, its one-line help as `get_short_help_str` gives it)
COMMAND_TABLE: dict[str, tuple[str, str]] = {
    "bench": ("lazyctr.bench", "Benchmark suites (need root; plots need `pip install 'lazyctr[bench]'`)."),
    "build": (
        "lazyctr.build",
        "Build an image from a Dockerfile and the CONTEXT directory; prints the image ID.",
    ),
    "cat": ("lazyctr.images", "Print a file of an image, reading only the byte ranges that hold it."),
    "commit": (
        "lazyctr.containers",
        "Make a new image NAME[:TAG] of CONTAINER's image plus what the container changed.",
    ),
    "create": (
        "lazyctr.lifecycle",
        "Create a container of IMAGE to run COMMAND, without starting it; prints its ID.",
    ),
    "cp": ("lazyctr.cp", "Copy SOURCE to DESTINATION, one of them CONTAINER:PATH, as `docker cp` does."),
    "exec": ("lazyctr.containers", "Run COMMAND in a running container, joining its namespaces and cgroup."),
    "export": (
        "lazyctr.images",
        "Write IMAGE to an OCI layout, oci:DIR[:REF], that skopeo, umoci and podman read.",
    ),
    "gc": (
        "lazyctr.images",
        "Delete blobs no image refers to, and extracted layers no image or container uses.",
    ),
    "generate-key-pair": (
        "lazyctr.signing",
        "Make an ECDSA P-256 key pair to sign images with: PREFIX.key (private) and PREFIX.pub.",
    ),
    "history": (
        "lazyctr.images",
        "Show how IMAGE was made, newest step first: from its config's history, as `docker history`.",
    ),
    "images": ("lazyctr.images", "List the images in the store."),
    "import": ("lazyctr.images", "Import SOURCE as image NAME[:TAG]."),
    "info": (
        "lazyctr.containers",
        "What lazyctr runs with here: root, images, containers, cgroups, drivers, security features.",
    ),
    "inspect": ("lazyctr.images", "Show an image's configuration and layers."),
    "kill": ("lazyctr.containers", "Send a signal to containers' main process."),
    "load": (
        "lazyctr.archive",
        "Load the images of a docker-archive or oci-archive tar (`docker save`, `podman save`).",
    ),
    "login": (
        "lazyctr.distribution",
        "Check USERNAME's password with REGISTRY (HOST[:PORT]) and save it for push and pull.",
    ),
    "logout": ("lazyctr.distribution", "Forget the credentials saved for REGISTRY."),
    "logs": ("lazyctr.containers", "Print what a detached container wrote to stdout and stderr."),
    "ls": ("lazyctr.images", "List files of an image, read from its layers' tables of contents."),
    "mount": ("lazyctr.mounts", "Mount IMAGE read-only at DIR; file contents are fetched when first read."),
    "pause": ("lazyctr.lifecycle", "Freeze every process of containers (their cgroup's freezer)."),
    "network": ("lazyctr.networks", "Manage networks: create, ls, inspect, rm."),
    "ps": ("lazyctr.containers", "List containers."),
    "pull": (
        "lazyctr.distribution",
        "Pull the image REF (HOST[:PORT]/NAME[:TAG|@DIGEST]) and name it REF; prints its ID.",
    ),
    "push": (
        "lazyctr.distribution",
        "Push IMAGE to REF (default: IMAGE's own name, which must then name a registry host).",
    ),
    "rename": ("lazyctr.lifecycle", "Give CONTAINER the name NAME."),
    "restart": (
        "lazyctr.lifecycle",
        "Stop containers (SIGTERM, SIGKILL after the timeout) and start them again.",
    ),
    "rm": ("lazyctr.containers", "Remove containers."),
    "rmi": ("lazyctr.images", "Remove images (by name, or every name of an image ID) and free their blobs."),
    "rootfs": (
        "lazyctr.images",
        "Make a base root file system tarball from Debian packages (busybox-static or debootstrap).",
    ),
    "run": (
        "lazyctr.containers",
        "Run COMMAND in a new container of IMAGE (its own root and namespaces); exits with its status.",
    ),
    "save": (
        "lazyctr.archive",
        "Write IMAGES to the tar archive OUTPUT, which `docker load` and `podman load` read.",
    ),
    "serve": (
        "lazyctr.distribution",
        "Serve an OCI distribution registry (pull, push, ranges) until interrupted.",
    ),
    "serve-token": (
        "lazyctr.distribution",
        "Serve a Docker token endpoint (GET /token?service=&scope=) until interrupted.",
    ),
    "service": (
        "lazyctr.mounts",
        "Keep the lazy engine loaded for the root: lazy pulls and mounts start warm (until interrupted).",
    ),
    "sign": (
        "lazyctr.signing",
        "Sign IMAGE (kept in the store, pushed with it) or REF (in its registry) with a sigstore signature.",
    ),
    "snapshotter": (
        "lazyctr.mounts",
        "Serve containerd's snapshots API on ADDRESS (a remote snapshotter) until interrupted.",
    ),
    "start": (
        "lazyctr.lifecycle",
        "Start created or stopped containers (in the background, under their restart policy).",
    ),
    "stats": (
        "lazyctr.lifecycle",
        "CPU, memory, network and block I/O, and process count of running containers, as docker stats.",
    ),
    "stop": ("lazyctr.containers", "Stop containers: SIGTERM, then SIGKILL after the timeout."),
    "tag": ("lazyctr.images", "Give the image SOURCE another name TARGET."),
    "top": (
        "lazyctr.lifecycle",
        "The processes of a running container, as `ps` lists them (default options: -ef).",
    ),
    "umount": ("lazyctr.mounts", "Unmount the lazyfs mount at DIRECTORY."),
    "unpause": ("lazyctr.lifecycle", "Let the processes of paused containers run again."),
    "volume": (
        "lazyctr.volumes",
        "Manage named volumes: directories under the root that containers mount with -v NAME:/path.",
    ),
    "verify": (
        "lazyctr.signing",
        "Check that IMAGE (in the store) or REF (in its registry) has a signature made with KEY's pair.",
    ),
    "wait": ("lazyctr.lifecycle", "Wait until containers end for good, and print their exit statuses."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported from COMMAND_TABLE's modules on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_TABLE)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMAND_TABLE:
            return None
        importlib.import_module(COMMAND_TABLE[cmd_name][0])
        return next(command for command in COMMANDS if command.name == cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        limit = formatter.width - 6 - max(len(name) for name in COMMAND_TABLE)
        rows = [
            (name, click.Command(name, help=short_help).get_short_help_str(limit))  # click's own cut
            for name, (_, short_help) in sorted(COMMAND_TABLE.items())
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    envvar="LAZYCTR_ROOT",
    default=default_root,
    show_default="/var/lib/lazyctr for root",
    help="Where images, chunks and containers live.",
)
@click.option(
    "--policy",
    type=click.Path(dir_okay=False),
    envvar=POLICY_ENV,
    help=f"Trust policy (containers-policy.json) for pulls [env {POLICY_ENV}; default: "
    "/etc/containers/policy.json, or accept anything without it].",
)
@click.option("--debug", is_flag=True, help="Show a traceback on errors.")
@click.pass_context
def cli(ctx: click.Context, root: str, policy: str | None, debug: bool) -> None:
    """Build, ship and lazily start OCI containers."""
    from pathlib import Path  # here: `--help` returns before this runs, and needs no paths

    if policy:  # the registry room reads it from there, in this process and in those it starts
        os.environ[POLICY_ENV] = policy
    ctx.obj = Context(Path(root))


def main() -> None:
    def invoke() -> None:
        status = cli.main(standalone_mode=False, prog_name="lazyctr")
        if isinstance(status, int) and status:
            sys.exit(status)

    try:
        run_with_error_mapping(invoke)
        status: object = 0
    except SystemExit as e:
        status = e.code
    _exit(status)


def _exit(status: object) -> NoReturn:
    """Leave as sys.exit would, but without tearing the interpreter's modules down one by one.

    That teardown frees nothing the kernel would not, and costs 15-20 ms of every command once the
    runtime is loaded (a tenth of `lazyctr run --rm IMAGE true`). Exit handlers still run."""
    if isinstance(status, str):
        print(status, file=sys.stderr)
        status = 1
    code = status if isinstance(status, int) else 0 if status is None else 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away (`| head`) is not our error
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
