"""The image commands: import, images, inspect, history, rmi, tag, gc, export, ls, cat, rootfs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from builder.rootfs import busybox_tarball, debian_tarball
from lazyctr.context import Context, command, pass_context
from lazyctr.display import human_age, human_size, ls_line
from runtime.layers import collect_garbage
from storage.errors import StorageError
from storage.files import atomic_path
from storage.importer import (
    EXPORT_COMPRESSIONS,
    OciSource,
    export_oci,
    image_name,
    import_oci,
    import_tarball,
)
from storage.store import Image, Store
from storage.zstd_chunked import position_from_annotations


@command("import")
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


@command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def images(ctx: Context, as_json: bool) -> None:
    """List the images in the store."""
    loaded, broken = ctx.store.images()
    for line in broken:  # one bad image must not hide the others
        click.echo(f"lazyctr: warning: {line}", err=True)
    found = sorted(loaded, key=lambda image: image.name)
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
        entries = store.layer_toc(layer).entries  # a lazily pulled layer has only its TOC here
        promised = position_from_annotations(layer.annotations, layer.size)
        layers.append(
            {
                "Digest": layer.digest,
                "MediaType": layer.media_type,
                "Size": layer.size,
                "DiffID": diff_id,
                "TOCDigest": promised[0] if promised else None,
                "TOCEntries": len(entries),
                "UncompressedFileSize": sum(e.size for e in entries if e.type == "reg"),
                "Local": store.has_blob(layer.digest),
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


@command()
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


@command()
@click.argument("images", nargs=-1, required=True)
@pass_context
def rmi(ctx: Context, images: tuple[str, ...]) -> None:
    """Remove images (by name, or every name of an image ID) and free their blobs."""
    for text in images:
        names = [image.name for image in ctx.store.resolve(text)]
        ctx.store.untag(names)
        for name in names:
            click.echo(f"Untagged: {name}")
    collect_garbage(ctx.store)


@command()
@click.argument("source")
@click.argument("target")
@pass_context
def tag(ctx: Context, source: str, target: str) -> None:
    """Give the image SOURCE another name TARGET."""
    ctx.store.tag(image_name(target), ctx.store.image(source).descriptor)


@command()
@pass_context
def gc(ctx: Context) -> None:
    """Delete blobs no image refers to, and extracted layers no image or container uses."""
    removed, freed, layers, subvolumes = collect_garbage(ctx.store)
    line = f"removed {removed} blobs, freed {human_size(freed)}; removed {layers} extracted layers"
    click.echo(line + (f" and {subvolumes} btrfs image subvolumes" if subvolumes else ""))


@command()
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


@command()
@click.argument("image")
@click.argument("path", default="/")
@click.option("-R", "--recursive", is_flag=True, help="List subdirectories too.")
@pass_context
def ls(ctx: Context, image: str, path: str, recursive: bool) -> None:
    """List files of an image, read from its layers' tables of contents."""
    from lazyfs.source import ImageSource, image_tree

    found = ctx.store.image(image)
    for listed in ImageSource(image_tree(ctx.store, found), name=found.name).ls(path, recursive):
        click.echo(ls_line(*listed))


@command()
@click.argument("image")
@click.argument("path")
@pass_context
def cat(ctx: Context, image: str, path: str) -> None:
    """Print a file of an image, reading only the byte ranges that hold it."""
    from lazyfs.image import MountableImage

    found = ctx.store.image(image)
    mountable = MountableImage.load(ctx.store, found)  # a lazily pulled layer is read from its registry
    with mountable.serving(ctx.store) as source:
        for data in source.contents(source.resolve(path)):
            sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@command()
@click.argument("kind", type=click.Choice(["busybox", "debian"]))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
def rootfs(kind: str, output: Path) -> None:
    """Make a base root file system tarball from Debian packages (busybox-static or debootstrap)."""
    make = busybox_tarball if kind == "busybox" else debian_tarball
    with atomic_path(output) as tmp:
        make(tmp)
    click.echo(output)


@command()
@click.argument("image")
@click.option("--no-trunc", is_flag=True, help="Do not cut CREATED BY short.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def history(ctx: Context, image: str, no_trunc: bool, as_json: bool) -> None:
    """Show how IMAGE was made, newest step first: from its config's history, as `docker history`."""
    found = ctx.store.image(image)
    rows = _history(ctx.store, found)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'IMAGE':<14}{'CREATED':<24}{'CREATED BY':<48}{'SIZE':<10}COMMENT")
    for row in rows:
        created_by = (
            row["CreatedBy"] if no_trunc or len(row["CreatedBy"]) <= 45 else row["CreatedBy"][:44] + "…"
        )
        short_id = row["Id"].removeprefix("sha256:")[:12]
        click.echo(
            f"{short_id:<14}{human_age(row['Created']) if row['Created'] else '':<24}"
            f"{created_by:<48}{human_size(row['Size']):<10}{row['Comment']}"
        )


def _history(store: Store, image: Image) -> list[dict[str, Any]]:
    """One row per history step, newest first; a step that made a layer gets the layer's size (its
    files' uncompressed bytes, from its TOC: a lazily pulled image has them too)."""
    layers = iter(image.manifest.layers)
    rows: list[dict[str, Any]] = []
    for step in image.config.history:
        size = 0
        if not step.get("empty_layer"):
            layer = next(layers, None)
            if layer is not None:
                try:
                    size = sum(e.size for e in store.layer_toc(layer).entries if e.type == "reg")
                except StorageError:
                    size = layer.size
        rows.append(
            {
                "Id": "<missing>",
                "Created": str(step.get("created") or ""),
                "CreatedBy": str(step.get("created_by") or ""),
                "Size": size,
                "Comment": str(step.get("comment") or ""),
                "EmptyLayer": bool(step.get("empty_layer")),
            }
        )
    rows.reverse()
    if rows:
        rows[0]["Id"] = str(image.id)  # as docker: only the image itself has an ID here
    return rows
