"""`lazyctr cp`: copy files between a container (running or stopped) and the host."""

from __future__ import annotations

import click

from lazyctr.context import Context, command, pass_context


@command("cp")
@click.argument("source")
@click.argument("destination")
@pass_context
def cp(ctx: Context, source: str, destination: str) -> None:
    """Copy SOURCE to DESTINATION, one of them CONTAINER:PATH, as `docker cp` does.

    A directory is copied with what it holds; SRC/. copies only what it holds. Files land owned by
    whoever copies, their modes kept. On a lazily pulled image only the files copied are fetched.
    """
    from runtime.cp import CopyError, copy_from_container, copy_to_container, split_argument
    from runtime.state import containers_dir, find

    source_container, source_path = split_argument(source)
    dest_container, dest_path = split_argument(destination)
    if (source_container is None) == (dest_container is None):
        raise CopyError("copying between containers is not supported" if source_container else
                        "one of SOURCE and DESTINATION must be CONTAINER:PATH")  # fmt: skip
    containers = containers_dir(ctx.root)
    if source_container is not None:
        copy_from_container(ctx.store, find(containers, source_container), source_path, dest_path)
    else:
        assert dest_container is not None
        copy_to_container(ctx.store, find(containers, dest_container), source_path, dest_path)
