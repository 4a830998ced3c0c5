"""`lazyctr volume create|ls|inspect|rm`: named volumes (runtime/volumes.py)."""

from __future__ import annotations

import json

import click

from lazyctr.context import COMMANDS, Context, pass_context


@click.group("volume")
def volume() -> None:
    """Manage named volumes: directories under the root that containers mount with -v NAME:/path."""


COMMANDS.append(volume)


@volume.command()
@click.argument("name", required=False)
@click.option("-l", "--label", "labels", multiple=True, help="A label KEY=VALUE.")
@pass_context
def create(ctx: Context, name: str | None, labels: tuple[str, ...]) -> None:
    """Create the volume NAME (a random name if none is given); prints its name."""
    from runtime.volumes import create as create_volume

    pairs = {key: value for key, _, value in (label.partition("=") for label in labels)}
    click.echo(create_volume(ctx.root, name, pairs).name)


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Print only the names.")
@pass_context
def ls(ctx: Context, quiet: bool) -> None:
    """List the volumes."""
    from runtime.volumes import all_volumes

    if not quiet:
        click.echo(f"{'DRIVER':<10}VOLUME NAME")
    for found in all_volumes(ctx.root):
        click.echo(found.name if quiet else f"{'local':<10}{found.name}")


@volume.command()
@click.argument("names", nargs=-1, required=True)
@pass_context
def inspect(ctx: Context, names: tuple[str, ...]) -> None:
    """Show volumes as JSON: where their data is, when they were made, which containers use them."""
    from runtime.volumes import find

    click.echo(json.dumps([find(ctx.root, name).inspect() for name in names], indent=2))


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="A volume that does not exist is no error.")
@click.argument("names", nargs=-1, required=True)
@pass_context
def rm(ctx: Context, names: tuple[str, ...], force: bool) -> None:
    """Remove volumes and their data; one that a container (running or not) uses is refused."""
    from runtime.volumes import remove

    for name in names:
        remove(ctx.root, name, force)
        click.echo(name)
