"""RUN steps of a build in containers of our runtime: builder's `StepRunner`.

Each step runs in a container on an overlay of the step's layers (an empty lower directory for
FROM scratch), its `--mount`s and heredoc scripts bound in as volumes, its output handed to the
builder line by line; the overlay's upper directory, without the mount points its set-up made,
becomes the step's changes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from builder.cache import LayerRef
from builder.errors import BuildError
from builder.run import RunMount, RunRequest
from runtime.cgroups import Limits
from runtime.container import Container
from runtime.drivers import OverlayDriver
from runtime.mountpoints import prune_mount_points
from runtime.process import run_in_child, wait_status
from runtime.spec import Spec, Volume
from storage.digest import Digest
from storage.layers import extract_verified
from storage.oci import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor, ImageConfig, Manifest
from storage.paths import resolve_in_root
from storage.store import Image, Store

HOSTNAME = "buildkitsandbox"  # what BuildKit names its RUN containers


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
        spec = Spec(list(request.argv), list(request.env), cwd=request.cwd, hostname=HOSTNAME)
        spec.user, spec.network = request.user, request.network
        driver = BuildDriver(self.store)
        container = Container(self.store, image_of(request.layers), spec, driver, Limits())
        container.create()
        try:
            with contextlib.ExitStack() as stack:
                spec.volumes = [self._volume(mount, stack) for mount in request.mounts]
                spec.volumes += self._scripts(request.scripts, stack)
                status = capturing_output(container.run, output)
            prune_mount_points(container.dir / "upper", driver.lowers, [v.target for v in spec.volumes])
            os.rename(container.dir / "upper", upper)
            return status
        finally:
            container.remove()

    def _volume(self, mount: RunMount, stack: contextlib.ExitStack) -> Volume:
        source = mount.source
        if mount.layers is not None:
            tree = self._temporary_directory(stack, "mount-")
            for layer in mount.layers:
                extract_verified(self.store, layer.descriptor, tree, "apply")
            source = resolve_in_root(tree, mount.subpath or "/", follow_last=True)
            if not source.exists():
                raise BuildError(f"--mount from=: {mount.subpath} does not exist in that stage or image")
        assert source is not None
        if mount.scratch_copy:  # a writable bind: the step may write, the writes are thrown away
            target = self._temporary_directory(stack, "mount-") / "data"
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target)
            source = target
        return Volume(source, mount.target, mount.read_only)

    def _scripts(self, scripts: dict[str, bytes], stack: contextlib.ExitStack) -> list[Volume]:
        volumes = []
        if scripts:
            directory = self._temporary_directory(stack, "heredoc-")
            for index, (path, data) in enumerate(sorted(scripts.items())):
                script = directory / str(index)
                script.write_bytes(data)
                script.chmod(0o755)
                volumes.append(Volume(script, path, True))
        return volumes

    def _temporary_directory(self, stack: contextlib.ExitStack, prefix: str) -> Path:
        """In the store's own temporary directory, removed when the step is done."""
        return Path(stack.enter_context(tempfile.TemporaryDirectory(dir=self.store.tmp, prefix=prefix)))


def image_of(layers: list[LayerRef]) -> Image:
    """An image of a build state's layers, not stored: all a container needs of one."""
    config = ImageConfig(diff_ids=[layer.diff_id for layer in layers])
    config_bytes = config.to_bytes()
    manifest = Manifest(
        Descriptor(MEDIA_CONFIG, Digest.of(config_bytes), len(config_bytes)), [la.descriptor for la in layers]
    )
    data = manifest.to_bytes()
    return Image("build", Descriptor(MEDIA_MANIFEST, Digest.of(data), len(data)), manifest, config)


def capturing_output(run: Callable[[], int], output: Callable[[str], None]) -> int:
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
