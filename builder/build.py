"""The build: a Dockerfile's stages, built in dependency order, step by step, into an image.

Each stage starts from its FROM (scratch, an image, or an earlier stage), runs its base image's
ONBUILD triggers, then its instructions. Each instruction is expanded in the stage's scope, made a
typed instruction (builder/instructions.py) and dispatched on its type: RUN, COPY, ADD and WORKDIR
are file system steps (builder/steps.py), each giving one content-addressed layer or none when it
changed nothing; the others only change the image config (builder/image_config.py). Every
instruction is recorded in the history, as BuildKit records it. Only the stages the target needs
are built (builder/plan.py).

Running a RUN and finding a FROM image are asked of injected objects (`StepRunner`,
`ImageResolver`): the builder imports `storage/` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from builder import image_config, instructions
from builder.cache import BuildCache, cache_key
from builder.context import BuildContext
from builder.copier import make_dirs
from builder.copy import CopyRequest, copy_digest, copy_step
from builder.dockerfile import parse_dockerfile
from builder.dockerignore import DockerIgnore
from builder.errors import BuildError, DockerfileSyntaxError
from builder.image_files import ImageFiles
from builder.plan import Plan, Stage
from builder.progress import PlainProgress
from builder.run import (
    DEFAULT_SHELL,
    MountSpec,
    RunMount,
    RunRequest,
    StepRunner,
    command_line,
    parse_mount,
    with_default_path,
)
from builder.state import State, layer_refs
from builder.steps import Steps
from builder.syntax import Dockerfile, Instruction
from builder.variables import StageVariables, expand_instruction, global_args
from builder.words import expand_word
from storage.errors import StorageError
from storage.importer import host_architecture, image_name
from storage.oci import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor, ImageConfig, Manifest
from storage.store import Image, Store

__all__ = ["BuildOptions", "BuildResult", "Builder", "ImageResolver", "StepRunner"]


class ImageResolver(Protocol):
    def resolve(self, reference: str) -> Image:
        """The image `reference` names: a local one, or pulled from its registry."""
        ...


@dataclass
class BuildOptions:
    context: Path
    dockerfile: Path
    tags: list[str] = field(default_factory=list)
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    network: str = "host"
    secrets: dict[str, Path] = field(default_factory=dict)
    source_date_epoch: int | None = None
    # Files the layers written place first, in this order (an access profile's: build --profile-order);
    # a cached step keeps its layer as it was.
    first_files: list[str] = field(default_factory=list)

    @property
    def platform(self) -> str:
        return f"linux/{host_architecture()}"


@dataclass
class BuildResult:
    image: Image
    tags: list[str]


class Builder:
    def __init__(
        self,
        store: Store,
        options: BuildOptions,
        runner: StepRunner,
        resolver: ImageResolver,
        progress: PlainProgress,
    ) -> None:
        self.store, self.options, self.runner, self.resolver = store, options, runner, resolver
        self.progress = progress
        self.cache = BuildCache(store, enabled=not options.no_cache)
        self.steps = Steps(
            store, self.cache, progress, options.platform, options.source_date_epoch, options.first_files
        )
        self.filename = options.dockerfile.name
        self.built: dict[int, State] = {}
        self.building: set[int] = set()
        self.images: dict[str, Image] = {}
        self.step_numbers: dict[int, tuple[int, Iterator[int]]] = {}
        self._context: BuildContext | None = None

    # -- the whole build -------------------------------------------------------------------------

    def build(self) -> BuildResult:
        if not self.options.context.is_dir():
            raise BuildError(f"the build context {self.options.context} is not a directory")
        try:
            text = self.options.dockerfile.read_text()
        except FileNotFoundError:
            raise BuildError(f"cannot read the Dockerfile: {self.options.dockerfile}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BuildError(f"cannot read the Dockerfile {self.options.dockerfile}: {e}") from None
        self.dockerfile: Dockerfile = parse_dockerfile(text, self.filename)
        self.plan = Plan.of(self.dockerfile, self.filename)
        self.globals = global_args(self.dockerfile, self.options.build_args)
        target = self.plan.target(self.options.target)
        with self.store.ingesting():  # gc must not take this build's layers before the image names them
            state = self._stage(target.index)
            if self._context is not None:
                self._context.save_digests()
            image = self._write_image(state)
            tags = self._tag(image)
        return BuildResult(image, tags)

    def _write_image(self, state: State) -> Image:
        config_obj = dict(state.config)
        if self.options.labels:
            config_obj["Labels"] = {**(config_obj.get("Labels") or {}), **self.options.labels}
        created = state.history[-1]["created"] if state.history else self.steps.now()
        config = ImageConfig(
            architecture=host_architecture(),
            os="linux",
            created=created,
            author=state.author,
            config=config_obj,
            diff_ids=[layer.diff_id for layer in state.layers],
            history=state.history,
        )
        config_bytes = config.to_bytes()
        config_descriptor = Descriptor(MEDIA_CONFIG, self.store.put_blob(config_bytes), len(config_bytes))
        manifest = Manifest(config_descriptor, [layer.descriptor for layer in state.layers])
        data = manifest.to_bytes()
        descriptor = Descriptor(MEDIA_MANIFEST, self.store.put_blob(data), len(data))
        return Image("", descriptor, manifest, config)

    def _tag(self, image: Image) -> list[str]:
        names = [image_name(tag) for tag in self.options.tags]
        current = dict(self.store.names())
        for name in names:
            # Re-tagging the same manifest would rewrite index.json: a cached rebuild writes nothing.
            if name not in current or current[name].digest != image.descriptor.digest:
                self.store.tag(name, image.descriptor)
        return names

    @property
    def context(self) -> BuildContext:
        if self._context is None:
            ignore = DockerIgnore.for_context(self.options.context, self.options.dockerfile)
            # File digests remembered between builds, by path, inode, size and times: an unchanged
            # context is not hashed again.
            name = cache_key(str(self.options.context.resolve()))[:32]
            digests = self.store.root / "cache" / "context" / f"{name}.json"
            digests.parent.mkdir(parents=True, exist_ok=True)
            self._context = BuildContext(self.options.context, ignore, digest_cache=digests)
        return self._context

    def _where(self, instruction: Instruction) -> str:
        return f"{self.filename}:{instruction.line}"

    # -- stages ------------------------------------------------------------------------------------

    def _stage(self, index: int) -> State:
        if index in self.built:
            return self.built[index]
        if index in self.building:
            raise BuildError(f"stage {self.plan.stages[index].label} depends on itself (a cycle of stages)")
        self.building.add(index)
        try:
            state = self._build_stage(self.plan.stages[index])
        finally:
            self.building.discard(index)
        self.built[index] = state
        return state

    def _build_stage(self, stage: Stage) -> State:
        base_name = self._expand_global(stage.origin.base, stage.origin.node)
        prefix = self.plan.prefix(stage)
        try:
            state = self._from(stage, base_name)
        except BaseException as e:
            steps = Plan.numbered_steps(stage.instructions)
            number = self.progress.start(f"[{prefix}1/{steps}] FROM {base_name}")
            self.progress.error(number, str(e) or type(e).__name__)
            raise
        triggers = [
            trigger
            for text in state.config.pop("OnBuild", None) or []
            for trigger in self._parse_trigger(str(text), stage.origin.node)
        ]
        steps = Plan.numbered_steps([*triggers, *stage.instructions])
        self.step_numbers[stage.index] = (steps, iter(range(2, steps + 1)))
        # Printed once the base is there: a base stage's own steps come first.
        self.progress.done(self.progress.start(f"[{prefix}1/{steps}] FROM {base_name}"))
        for trigger in triggers:
            self._dispatch(stage, state, trigger, where=stage.origin.node)
        for instruction in stage.instructions:
            self._dispatch(stage, state, instruction, where=instruction)
        return state

    def _expand_global(self, word: str, instruction: Instruction) -> str:
        try:
            return expand_word(word, self.globals.get, self.dockerfile.escape)
        except BuildError as e:
            raise BuildError(f"{self._where(instruction)}: {e}") from None

    def _parse_trigger(self, text: str, origin: Instruction) -> list[Instruction]:
        try:
            # The parser wants a FROM first: the trigger is parsed as the one instruction after it.
            parsed = parse_dockerfile(f"FROM scratch\n{text}\n", f"ONBUILD of {self.filename}")
        except BuildError as e:
            raise BuildError(f"{self._where(origin)}: the base image's ONBUILD {text!r}: {e}") from None
        triggers = parsed.instructions[1:]
        for trigger in triggers:
            if trigger.keyword.upper() in instructions.Onbuild.forbidden:
                raise BuildError(f"{self._where(origin)}: ONBUILD {trigger.keyword} is not allowed")
        return triggers

    def _from(self, stage: Stage, base_name: str) -> State:
        """The state a stage starts from: an earlier stage's, an image's, or scratch."""
        base_stage = self.plan.by_ref(base_name) if base_name.lower() != "scratch" else None
        if base_stage is not None and base_stage.index < stage.index:
            built = self._stage(base_stage.index)
            return replace(
                built,
                layers=list(built.layers),
                config=json.loads(json.dumps(built.config)),
                history=list(built.history),
                cmd_set=False,
                variables=StageVariables.for_stage(
                    self.globals, self.options.build_args, list(built.config.get("Env") or [])
                ),
            )
        base = self._image(base_name, stage.origin.node) if base_name.lower() != "scratch" else None
        config = json.loads(json.dumps(base.config.config)) if base else {}
        return State(
            layers=layer_refs(base),
            config=config,
            history=list(base.config.history) if base else [],
            variables=StageVariables.for_stage(
                self.globals, self.options.build_args, list(config.get("Env") or [])
            ),
            key=cache_key("FROM", str(base.descriptor.digest) if base else "scratch", self.options.platform),
            workdir=str(config.get("WorkingDir") or "/"),
            shell=list(config.get("Shell") or DEFAULT_SHELL),
            user=str(config.get("User") or ""),
        )

    def _image(self, reference: str, instruction: Instruction) -> Image:
        if reference not in self.images:
            try:
                self.images[reference] = self.resolver.resolve(reference)
            except StorageError as e:
                raise BuildError(f"{self._where(instruction)}: {reference}: {e}") from None
        return self.images[reference]

    # -- one instruction ---------------------------------------------------------------------------

    def _dispatch(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        """Expand the instruction in the stage's scope, make it typed, and run it by its type.

        `where` is the line errors name: the instruction's own, or for a trigger the FROM that ran it.
        """
        try:
            if instruction.keyword.upper() != "ONBUILD":  # triggers are expanded in the child's build
                instruction = expand_instruction(instruction, state.variables.lookup, self.dockerfile.escape)
            typed = instructions.command(instruction)
        except DockerfileSyntaxError:
            raise
        except BuildError as e:
            raise BuildError(f"{self._where(where)}: {e}") from None
        config = self.steps.config_step
        match typed:
            case instructions.Run():
                self._run(stage, state, typed, where)
            case instructions.Copy():  # and ADD
                self._copy(stage, state, typed, where)
            case instructions.Workdir():
                self._workdir(stage, state, typed, where)
            case instructions.From():
                raise BuildError(f"{self._where(where)}: FROM is not allowed here")
            case _:  # the instructions that change only the config
                config(state, image_config.apply(state, typed))

    def _step_label(self, stage: Stage, typed: instructions.Command) -> str:
        steps, counter = self.step_numbers[stage.index]
        number = next(counter, steps)
        return f"[{self.plan.prefix(stage)}{number}/{steps}] {typed.text[:200]}"

    # -- file system steps -------------------------------------------------------------------------

    def _workdir(self, stage: Stage, state: State, typed: instructions.Workdir, where: Instruction) -> None:
        path = "/" + posixpath.normpath(posixpath.join(state.workdir, typed.word)).lstrip("/")
        state.workdir = path
        state.config["WorkingDir"] = path

        def work(upper: Path, number: int) -> None:
            upper.mkdir()
            with ImageFiles.open(self.store, state.files_image()) as files:
                make_dirs(files, upper, path, self.steps.clamp_ns)

        label = self._step_label(stage, typed)
        self.steps.file_step(state, label, self._where(where), ["WORKDIR", path], f"WORKDIR {path}", work)

    def _copy(self, stage: Stage, state: State, typed: instructions.Copy, where: Instruction) -> None:
        request = typed.request(state.workdir)
        with contextlib.ExitStack() as stack:
            source: BuildContext | ImageFiles
            source_key: str
            if typed.source_ref is None:
                source, source_key = self.context, "context"
            else:
                image, source_key = self._from_ref(typed.source_ref, where, typed.keyword)
                source = stack.enter_context(ImageFiles.open(self.store, image))
            heredocs = [(h.name, h.content, h.expand, h.chomp) for h in request.heredocs]

            def key_parts() -> list[Any]:
                digest = copy_digest(request, source)  # reads the sources: their errors are the step's
                return [typed.keyword, request.sources, request.dest, request.workdir, request.chown,
                        request.chmod, request.link, list(request.excludes), request.checksum,
                        source_key, digest, heredocs]  # fmt: skip

            def work(upper: Path, number: int) -> None:
                upper.mkdir()
                with ImageFiles.open(self.store, state.files_image()) as target:
                    copy_step(request, source, target, upper, self.steps.clamp_ns)

            label = self._step_label(stage, typed)
            self.steps.file_step(
                state, label, self._where(where), key_parts, f"{typed.text} # buildkit", work
            )

    def _from_ref(self, ref: str, where: Instruction, what: str) -> tuple[Image | None, str]:
        """The files `--from=REF` names: an earlier stage (by name or number) or an image."""
        stage = self.plan.by_ref(ref)
        if stage is not None:
            built = self._stage(stage.index)
            return built.files_image(), f"stage:{built.key}"
        if ref.lower() == "scratch":
            return None, "scratch"
        try:
            image = self.resolver.resolve(ref)
        except StorageError as e:
            raise BuildError(
                f"{self._where(where)}: {what} --from={ref}: no stage named {ref!r} in {self.filename}, "
                f"and no such image ({e})"
            ) from None
        return image, f"image:{image.descriptor.digest}"

    def _run(self, stage: Stage, state: State, typed: instructions.Run, where: Instruction) -> None:
        argv, scripts = command_line(typed.node, state.shell)
        network = self.options.network if typed.network == "default" else typed.network
        mounts: list[RunMount] = []
        mount_keys: list[Any] = []
        for text in typed.mounts:
            try:
                spec = parse_mount(text, state.workdir)
            except BuildError as e:
                raise BuildError(f"{self._where(where)}: {e}") from None
            mount, key = self._mount(spec, where)
            if mount is not None:
                mounts.append(mount)
            mount_keys.append(key)
        env = with_default_path(state.variables.run_env())
        request = RunRequest(
            argv, env, state.workdir, state.user, network, list(state.layers), mounts, scripts
        )
        shown = " ".join(argv)
        script_keys = [(path, data.decode(errors="replace")) for path, data in sorted(scripts.items())]
        key_parts = ["RUN", argv, sorted(env), state.workdir, state.user, network, mount_keys, script_keys]
        used = state.variables.used_args()
        prefix = f"|{len(used)} {' '.join(f'{k}={v}' for k, v in sorted(used.items()))} " if used else ""

        def work(upper: Path, number: int) -> None:
            tail: list[str] = []

            def output(line: str) -> None:
                tail.append(line)
                del tail[:-5]
                self.progress.output(number, line)

            status = self.runner.run(request, upper, output)
            if status != 0:
                last = " | ".join(line.strip() for line in tail if line.strip())
                raise BuildError(
                    f'process "{shown}" did not complete successfully: exit code: {status}'
                    + (f" (last output: {last})" if last else "")
                )

        label = self._step_label(stage, typed)
        self.steps.file_step(
            state, label, self._where(where), key_parts, f"RUN {prefix}{shown} # buildkit", work
        )

    def _mount(self, spec: MountSpec, where: Instruction) -> tuple[RunMount | None, list[Any]]:
        key: list[Any] = spec.describe()
        if spec.type == "cache":
            source = self.cache.mount_dir(spec.id or spec.target)
            if spec.mode is not None and not any(source.iterdir()):
                source.chmod(spec.mode)
            if (spec.uid is not None or spec.gid is not None) and not any(source.iterdir()):
                os.chown(
                    source, spec.uid if spec.uid is not None else -1, spec.gid if spec.gid is not None else -1
                )
            return RunMount(spec.target, read_only=spec.read_only, source=source), key
        if spec.type == "secret":
            path = self.options.secrets.get(spec.id)
            if path is None:
                if spec.required:
                    raise BuildError(
                        f"{self._where(where)}: secret {spec.id!r} is required: "
                        f"give --secret id={spec.id},src=FILE"
                    )
                return None, key
            return RunMount(spec.target, read_only=True, source=path), key  # its content is never in the key
        # bind
        if spec.from_:
            image, source_key = self._from_ref(spec.from_, where, "RUN --mount")
            return RunMount(spec.target, spec.read_only, layers=layer_refs(image), subpath=spec.source,
                            scratch_copy=not spec.read_only), [*key, source_key]  # fmt: skip
        source = self._context_path(spec.source, where)
        digest = copy_digest(CopyRequest(sources=[spec.source or "."], dest="/"), self.context)
        return RunMount(spec.target, spec.read_only, source=source, scratch_copy=not spec.read_only), [
            *key,
            digest,
        ]

    def _context_path(self, relative: str, where: Instruction) -> Path:
        root = self.options.context.resolve()
        path = (root / relative.lstrip("/")).resolve()
        if path != root and root not in path.parents:
            raise BuildError(
                f"{self._where(where)}: --mount source {relative!r} is outside the build context"
            )
        if not path.exists():
            raise BuildError(
                f"{self._where(where)}: --mount source {relative!r}: no such file in the build context"
            )
        return path
