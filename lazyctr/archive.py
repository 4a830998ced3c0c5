"""`lazyctr save` and `lazyctr load`: images as a docker-archive or oci-archive tar (storage/archive.py)."""

from __future__ import annotations

from pathlib import Path

import click

from lazyctr.context import Context, command, pass_context
from storage.archive import FORMATS
from storage.archive import load as load_archive
from storage.archive import save as save_archive
from storage.errors import NotFound


@command()
@click.argument("images", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The archive to write.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="docker-archive", show_default=True,
              help="docker-archive (docker save's) or oci-archive (an OCI layout in a tar).")  # fmt: skip
@pass_context
def save(ctx: Context, images: tuple[str, ...], output: Path, fmt: str) -> None:
    """Write IMAGES to the tar archive OUTPUT, which `docker load` and `podman load` read."""
    save_archive(ctx.store, [ctx.store.image(text) for text in images], output, fmt)


@command()
@click.option("-i", "--input", "archive", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The archive to read (docker-archive or oci-archive: found by its contents).")  # fmt: skip
@pass_context
def load(ctx: Context, archive: Path) -> None:
    """Load the images of a docker-archive or oci-archive tar (`docker save`, `podman save`)."""
    if not archive.is_file():
        raise NotFound(f"{archive}: no such file")
    for name in load_archive(ctx.store, archive):
        click.echo(f"Loaded image: {name}")
