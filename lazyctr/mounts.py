"""The lazyfs commands: mount an image (fetching file contents as they are read), unmount it, and keep
the lazy engine resident (`service`) or serve it to containerd (`snapshotter`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lazyctr.context import Context, command, pass_context


@command()
@click.argument("args", nargs=-1, metavar="IMAGE DIR | --stats DIR")
@click.option("--stats", is_flag=True, help="Print the fetch statistics of the mount at DIR.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Seconds a read waits for the registry before it fails with EIO.",
)
@click.option("--fill", is_flag=True, help="Fetch the rest of the image in the background.")
@pass_context
def mount(ctx: Context, args: tuple[str, ...], stats: bool, timeout: float, fill: bool) -> None:
    """Mount IMAGE read-only at DIR; file contents are fetched when first read."""
    from lazyfs.mount import MountError, MountState
    from lazyfs.service import mount_here

    if stats:
        if len(args) != 1:
            raise click.UsageError("--stats takes one argument: the mount's DIR")
        state = MountState.of(ctx.root, Path(args[0]))
        if state.info is None:
            raise MountError(f"{args[0]}: not a lazyfs mount")
        click.echo(json.dumps(state.stats(), indent=2, sort_keys=True))
        return
    if len(args) != 2:
        raise click.UsageError("expected IMAGE DIR")
    mount_here(ctx.store, ctx.store.image(args[0]), Path(args[1]), timeout, fill=fill)


@command()
@pass_context
def service(ctx: Context) -> None:
    """Keep the lazy engine loaded for the root: lazy pulls and mounts start warm (until interrupted).

    `pull` (lazy) and `run` with the lazy driver ask it over its socket (/run/lazyctr/, named by
    the root) and do the work themselves when nothing listens there. It acts for root only, with
    each caller's environment. A lazy pull also mounts the image at once, so that its access
    profile comes while the `run` that usually follows starts; the mount waits a minute for a
    container, then goes.
    """
    from lazyfs.service import serve, socket_path
    from runtime.lazy import hold_for_a_start

    serve(ctx.store, lambda: click.echo(f"serving on {socket_path(ctx.root)}"), after_pull=hold_for_a_start)


@command()
@click.argument("directory", type=click.Path(path_type=Path))
@pass_context
def umount(ctx: Context, directory: Path) -> None:
    """Unmount the lazyfs mount at DIRECTORY."""
    from lazyfs.mount import umount as umount_image

    umount_image(ctx.root, directory)


@command()
@click.option(
    "--address",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/run/lazyctr/snapshotter.sock"),
    show_default=True,
    help="The unix socket containerd's proxy_plugins entry names.",
)
@click.option(
    "--snapshots",
    "snapshots_root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where snapshots and their records are kept.  [default: ROOT/snapshotter]",
)
@click.option(
    "--insecure-registry",
    "insecure",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Fetch lazily served layers from this registry over plain HTTP (always so for localhost).",
)
@click.option("--fill", is_flag=True, help="Fetch the rest of each lazily served image in the background.")
@click.option(
    "--timeout",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Seconds a read of a lazily served layer waits for the registry before it fails with EIO.",
)
@click.option(
    "--hosts-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/etc/containerd/certs.d"),
    show_default=True,
    help="containerd's registry configuration: HOST/hosts.toml naming an http:// server means plain HTTP.",
)
@pass_context
def snapshotter(
    ctx: Context,
    address: Path,
    snapshots_root: Path | None,
    insecure: tuple[str, ...],
    fill: bool,
    timeout: float,
    hosts_dir: Path,
) -> None:
    """Serve containerd's snapshots API on ADDRESS (a remote snapshotter) until interrupted."""
    from lazyfs.snapshotter.remote import RemoteImages
    from lazyfs.snapshotter.service import serve

    root = (snapshots_root or ctx.root / "snapshotter").resolve()
    # Forks the mounter: before gRPC is loaded.
    remote = RemoteImages(root, frozenset(insecure), fill, timeout, hosts_dir)
    try:
        serve(address, root, remote, lambda: click.echo(f"serving on {address}"))
    finally:
        remote.close()
