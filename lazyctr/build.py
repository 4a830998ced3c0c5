"""`lazyctr build`: the builder wired to the runtime (RUN steps) and the registry (FROM images).

The builder room cannot import the rooms to its right, so it asks for two things, and they are
handed to it here: runtime's `ContainerStepRunner` runs each RUN in a container, and an
`ImageResolver` finds a FROM image in the store or pulls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from builder.build import Builder, BuildOptions
from builder.dockerfile import parse_dockerfile
from builder.errors import BuildError
from builder.progress import PlainProgress, TerminalProgress
from lazyctr.context import Context, command, pass_context
from runtime.buildstep import ContainerStepRunner
from storage.errors import StorageError
from storage.reference import ImageRef
from storage.store import Image, Store

if TYPE_CHECKING:
    from lazyfs.lineage import Ancestor


class StoreResolver:
    """FROM images: one in the store by that name, else pulled from the registry the name points at."""

    def __init__(self, store: Store, insecure: bool = False) -> None:
        self.store = store
        self.insecure = insecure

    def resolve(self, reference: str) -> Image:
        from registry.pull_policy import image_or_pull

        return image_or_pull(self.store, reference, lazy=False, insecure=self.insecure)


def _pairs(values: tuple[str, ...], option: str, from_env: bool = False) -> dict[str, str]:
    out = {}
    for text in values:
        key, eq, value = text.partition("=")
        if not key:
            raise BuildError(f"{option} {text!r}: expected KEY=VALUE")
        if not eq:
            if not from_env:
                raise BuildError(f"{option} {text!r}: expected KEY=VALUE")
            if key not in os.environ:
                continue  # docker: --build-arg NAME takes NAME from the environment, if set
            value = os.environ[key]
        out[key] = value
    return out


def _secrets(values: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for text in values:
        fields = dict(part.partition("=")[::2] for part in text.split(","))
        identifier = fields.get("id", "")
        source = fields.get("src") or fields.get("source") or ""
        if fields.get("type", "file") != "file" or not identifier or not source:
            raise BuildError(f"--secret {text!r}: expected id=ID,src=FILE")
        path = Path(source)
        if not path.is_file():
            raise BuildError(f"--secret {text!r}: {source} is not a file")
        out[identifier] = path.resolve()
    return out


def _progress(mode: str, out: object) -> PlainProgress:
    stream = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, errors="replace")
    if mode == "tty" or (mode == "auto" and stream.isatty()):
        return TerminalProgress(stream)
    return PlainProgress(stream)


@contextlib.contextmanager
def _closing(progress: PlainProgress) -> Iterator[PlainProgress]:
    try:
        yield progress
    finally:
        progress.out.close()


@command()
@click.option("-t", "--tag", "tags", multiple=True, help="Name the image NAME[:TAG] (several allowed).")
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False, path_type=Path),
              help="The Dockerfile (default: CONTEXT/Dockerfile).")  # fmt: skip
@click.option("--target", help="Build up to this stage.")
@click.option(
    "--build-arg", "build_args", multiple=True, help="KEY=VALUE for an ARG (KEY alone: from the env)."
)
@click.option("--label", "labels", multiple=True, help="KEY=VALUE label on the image.")
@click.option("--no-cache", is_flag=True, help="Run every step again (the cache is still filled).")
@click.option("--network", type=click.Choice(["host", "none"]), default="host", show_default=True,
              help="The network RUN steps get.")  # fmt: skip
@click.option("--secret", "secrets", multiple=True, help="id=ID,src=FILE for RUN --mount=type=secret,id=ID.")
@click.option("--progress", "progress_mode", type=click.Choice(["auto", "plain", "tty"]), default="auto",
              show_default=True, help="How steps are shown (on stdout).")  # fmt: skip
@click.option("--print-ast", is_flag=True, help="Print the parsed Dockerfile as JSON and build nothing.")
@click.option("--insecure", is_flag=True, help="Plain HTTP to pull FROM images (always so for 127.0.0.1).")
@click.option("--profile-from", metavar="IMAGE",
              help="Record an access profile for the image, derived from IMAGE's (in the store, or "
                   "pulled lazily from the registry its name names).")  # fmt: skip
@click.option("--profile-order", is_flag=True,
              help="Write new layers with the profiled files first, so a start fetches them in one "
                   "range: the profile of --profile-from, else of the store's image of the -t "
                   "repository that has one (also recorded for the image, derived).")  # fmt: skip
@click.argument("context_dir", metavar="CONTEXT", type=click.Path(file_okay=False, path_type=Path))
@pass_context
def build(
    ctx: Context, tags: tuple[str, ...], dockerfile: Path | None, target: str | None,
    build_args: tuple[str, ...], labels: tuple[str, ...], no_cache: bool, network: str,
    secrets: tuple[str, ...], progress_mode: str, print_ast: bool, insecure: bool, profile_from: str | None,
    profile_order: bool, context_dir: Path,
) -> None:  # fmt: skip
    """Build an image from a Dockerfile and the CONTEXT directory; prints the image ID."""
    path = dockerfile or context_dir / "Dockerfile"
    if print_ast:
        try:
            text = path.read_text()
        except OSError as e:
            raise BuildError(f"cannot read the Dockerfile {path}: {e.strerror or e}") from None
        click.echo(json.dumps(parse_dockerfile(text, path.name).to_json(), indent=2))
        return
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch_text and not epoch_text.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH={epoch_text!r}: expected seconds since 1970")
    options = BuildOptions(
        context=context_dir,
        dockerfile=path,
        tags=list(tags),
        target=target,
        build_args=_pairs(build_args, "--build-arg", from_env=True),
        labels=_pairs(labels, "--label"),
        no_cache=no_cache,
        network=network,
        secrets=_secrets(secrets),
        source_date_epoch=int(epoch_text) if epoch_text else None,
    )
    for tag in tags:
        ImageRef.parse(tag)  # a bad name fails before anything is built
    store = ctx.store
    ancestor = _profile_ancestor(store, profile_from, profile_order, tags, insecure)  # before building
    if ancestor is not None and profile_order:
        from lazyfs.lineage import profiled_paths

        options.first_files = profiled_paths(store, ancestor.layers, ancestor.pieces)
    with _closing(_progress(progress_mode, sys.stdout)) as progress:
        builder = Builder(
            store, options, ContainerStepRunner(store), StoreResolver(store, insecure), progress
        )
        result = builder.build()
        for name in result.tags:
            progress.note(f"naming to {name} done")
        if ancestor is not None and ancestor.digest != result.image.descriptor.digest:
            from lazyfs.lineage import record_inherited

            inherited = record_inherited(store, result.image, ancestor)
            progress.note(inherited.line() if inherited else f"no file of {ancestor.name}'s profile is here")
    click.echo(result.image.id)


def _profile_ancestor(
    store: Store, profile_from: str | None, profile_order: bool, tags: tuple[str, ...], insecure: bool
) -> Ancestor | None:
    """The image whose profile the build inherits (and orders its layers by), if it is to."""
    from lazyfs.lineage import Ancestor, store_ancestor
    from lazyfs.profile import load_profile
    from registry.pull_policy import image_or_pull

    if profile_from is not None:
        try:
            image = image_or_pull(store, profile_from, lazy=True, insecure=insecure)
        except StorageError as e:
            raise BuildError(f"--profile-from: {e}") from None
        pieces = load_profile(store, image)
        if not pieces:
            raise BuildError(
                f"--profile-from: {profile_from} has no access profile (record one with"
                " `lazyctr run --record-profile`)"
            )
        return Ancestor(image.name, image.descriptor.digest, image.manifest.layers, pieces)
    if not profile_order:
        return None
    found = store_ancestor(store, tags[0]) if tags else None
    if found is None:
        raise BuildError(
            "--profile-order: no profile to order by: name an image with --profile-from, or tag the"
            " build (-t) in a repository whose image in the store has one"
        )
    return found
