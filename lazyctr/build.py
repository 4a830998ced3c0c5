"""`lazyctr build`: the builder wired to the runtime (RUN steps) and the registry (FROM images).

The builder room cannot import the rooms to its right, so it asks for two things, and they are
made here: a `StepRunner` that runs a RUN in a container on an overlay of the step's layers and
hands back the overlay's upper directory, and an `ImageResolver` that finds a FROM image in the
store or pulls it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from builder.build import Builder, BuildOptions
from builder.cache import LayerRef
from builder.dockerfile import parse_dockerfile
from builder.errors import BuildError
from builder.progress import PlainProgress, TerminalProgress
from builder.run import RunMount, RunRequest
from lazyctr.context import Context, command, pass_context
from runtime import seccomp
from runtime.cgroups import Limits
from runtime.container import Container, Spec, Volume
from runtime.drivers import OverlayDriver
from runtime.layers import extract_verified
from runtime.mountpoints import prune_mount_points
from runtime.process import run_in_child, wait_status
from storage.digest import Digest
from storage.oci import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor, ImageConfig, Manifest
from storage.paths import resolve_in_root
from storage.reference import ImageRef
from storage.store import Image, Store

HOSTNAME = "buildkitsandbox"  # what BuildKit names its RUN containers


class StoreResolver:
    """FROM images: one in the store by that name, else pulled from the registry the name points at."""

    def __init__(self, store: Store, insecure: bool = False) -> None:
        self.store = store
        self.insecure = insecure

    def resolve(self, reference: str) -> Image:
        from registry.pull_policy import image_or_pull

        return image_or_pull(self.store, reference, lazy=False, insecure=self.insecure)


class BuildDriver(OverlayDriver):
    """The overlay driver over a build state's layers; FROM scratch gets an empty lower directory."""

    name = "build"

    def prepare(self, image: Image, container_dir: Path) -> None:
        super().prepare(image, container_dir)
        if not self.lowers:
            empty = container_dir / "empty"
            empty.mkdir(exist_ok=True)
            self.lowers = [empty]


class ContainerStepRunner:
    """Runs a RUN step in a container of our runtime and keeps its upper directory."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def run(self, request: RunRequest, upper: Path, output: Callable[[str], None]) -> int:
        image = _image_of(request.layers)
        spec = Spec(list(request.argv), list(request.env), cwd=request.cwd, hostname=HOSTNAME)
        spec.user, spec.network, spec.seccomp = request.user, request.network, seccomp.available()
        driver = BuildDriver(self.store)
        container = Container(self.store, image, spec, driver, Limits())
        container.create()
        try:
            with contextlib.ExitStack() as stack:
                spec.volumes = [self._volume(mount, stack) for mount in request.mounts]
                spec.volumes += self._scripts(request.scripts, stack)
                status = _capturing_output(container.run, output)
            prune_mount_points(container.dir / "upper", driver.lowers, [v.target for v in spec.volumes])
            os.rename(container.dir / "upper", upper)
            return status
        finally:
            container.remove()

    def _volume(self, mount: RunMount, stack: contextlib.ExitStack) -> Volume:
        source = mount.source
        if mount.layers is not None:
            tree = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.store.tmp, prefix="mount-")))
            for layer in mount.layers:
                extract_verified(self.store, layer.descriptor, tree, "apply")
            source = resolve_in_root(tree, mount.subpath or "/", follow_last=True)
            if not source.exists():
                raise BuildError(f"--mount from=: {mount.subpath} does not exist in that stage or image")
        assert source is not None
        if mount.scratch_copy:  # a writable bind: the step may write, the writes are thrown away
            copy = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.store.tmp, prefix="mount-")))
            target = copy / "data"
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target)
            source = target
        return Volume(source, mount.target, mount.read_only)

    def _scripts(self, scripts: dict[str, bytes], stack: contextlib.ExitStack) -> list[Volume]:
        volumes = []
        if scripts:
            directory = Path(
                stack.enter_context(tempfile.TemporaryDirectory(dir=self.store.tmp, prefix="heredoc-"))
            )
            for index, (path, data) in enumerate(sorted(scripts.items())):
                script = directory / str(index)
                script.write_bytes(data)
                script.chmod(0o755)
                volumes.append(Volume(script, path, True))
        return volumes


def _image_of(layers: list[LayerRef]) -> Image:
    config = ImageConfig(diff_ids=[layer.diff_id for layer in layers])
    config_bytes = config.to_bytes()
    manifest = Manifest(
        Descriptor(MEDIA_CONFIG, Digest.of(config_bytes), len(config_bytes)), [la.descriptor for la in layers]
    )
    data = manifest.to_bytes()
    return Image("build", Descriptor(MEDIA_MANIFEST, Digest.of(data), len(data)), manifest, config)


def _capturing_output(run: Callable[[], int], output: Callable[[str], None]) -> int:
    """Run in a forked child whose stdout and stderr (which the container inherits) go to `output`,
    line by line; our own descriptors stay as they are, so progress can keep printing."""
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        run_in_child(run)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as stream:
            for raw in stream:
                output(raw.decode(errors="replace").rstrip("\n"))
    except BaseException:  # Ctrl-C: the container is stopped and waited for before its files go
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
        wait_status(child)
        raise
    return wait_status(child)


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
@click.argument("context_dir", metavar="CONTEXT", type=click.Path(file_okay=False, path_type=Path))
@pass_context
def build(
    ctx: Context, tags: tuple[str, ...], dockerfile: Path | None, target: str | None,
    build_args: tuple[str, ...], labels: tuple[str, ...], no_cache: bool, network: str,
    secrets: tuple[str, ...], progress_mode: str, print_ast: bool, insecure: bool, context_dir: Path,
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
    with _closing(_progress(progress_mode, sys.stdout)) as progress:
        builder = Builder(
            store, options, ContainerStepRunner(store), StoreResolver(store, insecure), progress
        )
        result = builder.build()
        for name in result.tags:
            progress.note(f"naming to {name} done")
    click.echo(result.image.id)
