"""The build: a Dockerfile's stages, built in dependency order, step by step, into an image.

Each stage starts from its FROM (scratch, an image, or an earlier stage), runs its base image's
ONBUILD triggers, then its instructions. Steps that change files (RUN, COPY, ADD, WORKDIR) each give
one content-addressed layer, the upper directory of the step turned into a zstd:chunked blob, or none
when they changed nothing; the others only change the image config. Every instruction is recorded in
the history, as BuildKit records it. Only the stages the target needs are built.

Running a RUN and finding a FROM image are asked of injected objects (`StepRunner`,
`ImageResolver`): the builder imports `storage/` only.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from builder.cache import BuildCache, CacheEntry, LayerRef, cache_key
from builder.context import BuildContext
from builder.copy import CopyRequest, copy_digest, copy_step
from builder.dockerfile import Dockerfile, Instruction, parse_dockerfile, parse_duration_ns
from builder.dockerignore import DockerIgnore
from builder.errors import BuildError, DockerfileSyntaxError
from builder.image_files import ImageFiles
from builder.progress import PlainProgress
from builder.run import (
    DEFAULT_SHELL,
    MountSpec,
    RunMount,
    RunRequest,
    StepRunner,
    command_line,
    parse_mount,
    parse_network,
    with_default_path,
)
from builder.variables import (
    StageVariables,
    arg_declarations,
    expand_instruction,
    global_args,
    key_value_pairs,
)
from builder.words import expand_word
from storage.diff import upper_to_tar
from storage.digest import Digest
from storage.errors import NotFound, StorageError
from storage.importer import host_architecture, image_name
from storage.layer_writer import write_chunked_layer
from storage.oci import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor, ImageConfig, Manifest
from storage.store import Image, Store

NS = 1_000_000_000
FILE_STEPS = ("RUN", "COPY", "ADD", "WORKDIR")  # the ones BuildKit shows as numbered steps
HISTORY_COMMENT = "buildkit.dockerfile.v0"
KNOWN = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
         "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR")  # fmt: skip
HEALTHCHECK_DURATIONS = (("interval", "Interval"), ("timeout", "Timeout"),
                         ("start-period", "StartPeriod"), ("start-interval", "StartInterval"))  # fmt: skip


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

    @property
    def platform(self) -> str:
        return f"linux/{host_architecture()}"


@dataclass
class Stage:
    index: int
    name: str | None
    base: str  # the FROM argument, its variables still unexpanded
    origin: Instruction  # the FROM
    instructions: list[Instruction]

    @property
    def label(self) -> str:
        return self.name or f"stage-{self.index}"


@dataclass
class State:
    """A stage as far as it is built: its layers and config, and the variables in scope."""

    layers: list[LayerRef]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    variables: StageVariables
    key: str  # cache key of the last file system step
    workdir: str = "/"
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    user: str = ""
    author: str | None = None
    cmd_set: bool = False  # a CMD in this stage: an ENTRYPOINT after it keeps it

    def image(self, name: str = "build") -> Image:
        """An image object for this state, not stored: what runners and file views read."""
        config = ImageConfig(
            architecture=host_architecture(),
            config=dict(self.config),
            diff_ids=[layer.diff_id for layer in self.layers],
            history=list(self.history),
        )
        config_bytes = config.to_bytes()
        manifest = Manifest(
            Descriptor(MEDIA_CONFIG, Digest.of(config_bytes), len(config_bytes)),
            [layer.descriptor for layer in self.layers],
        )
        data = manifest.to_bytes()
        return Image(name, Descriptor(MEDIA_MANIFEST, Digest.of(data), len(data)), manifest, config)


@dataclass
class BuildResult:
    image: Image
    tags: list[str]


def split_stages(dockerfile: Dockerfile, filename: str) -> tuple[list[Instruction], list[Stage]]:
    """The global ARGs before the first FROM, and the stages."""
    prelude: list[Instruction] = []
    stages: list[Stage] = []
    for instruction in dockerfile.instructions:
        keyword = instruction.keyword.upper()
        if keyword not in KNOWN:
            raise DockerfileSyntaxError(
                f"unknown instruction: {instruction.keyword}", instruction.line, filename
            )
        if keyword == "FROM":
            args = instruction.args if instruction.exec_form else " ".join(instruction.args).split()
            name = None
            if len(args) == 3 and args[1].upper() == "AS":
                name = args[2].lower()
            elif len(args) != 1:
                raise DockerfileSyntaxError("FROM takes IMAGE [AS NAME]", instruction.line, filename)
            if name is not None and any(stage.name == name for stage in stages):
                raise DockerfileSyntaxError(f"duplicate stage name {name!r}", instruction.line, filename)
            stages.append(Stage(len(stages), name, args[0], instruction, []))
        elif not stages:
            if keyword != "ARG":
                raise DockerfileSyntaxError(
                    f"{keyword} before the first FROM: only ARG may come before it",
                    instruction.line,
                    filename,
                )
            prelude.append(instruction)
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise DockerfileSyntaxError("no FROM instruction: a Dockerfile needs at least one stage", 1, filename)
    return prelude, stages


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(seconds)))


class Builder:
    def __init__(
        self,
        store: Store,
        options: BuildOptions,
        runner: StepRunner,
        resolver: ImageResolver,
        progress: PlainProgress,
    ) -> None:
        self.store = store
        self.options = options
        self.runner = runner
        self.resolver = resolver
        self.progress = progress
        self.cache = BuildCache(store, enabled=not options.no_cache)
        self.filename = options.dockerfile.name
        self.clamp_ns = None if options.source_date_epoch is None else options.source_date_epoch * NS
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
        dockerfile = parse_dockerfile(text, self.filename)
        self.dockerfile = dockerfile
        self.prelude, self.stages = split_stages(dockerfile, self.filename)
        self.globals = global_args(dockerfile, self.options.build_args)
        target = self._target_stage()
        with self.store.ingesting():  # gc must not take this build's layers before the image names them
            state = self._stage(target.index)
            if self._context is not None:
                self._context.save_digests()
            image = self._write_image(state)
            tags = self._tag(image)
        return BuildResult(image, tags)

    def _target_stage(self) -> Stage:
        if self.options.target is None:
            return self.stages[-1]
        for stage in self.stages:
            if stage.name == self.options.target.lower():
                return stage
        raise BuildError(f"target stage {self.options.target!r} could not be found in {self.filename}")

    def _write_image(self, state: State) -> Image:
        config_obj = dict(state.config)
        if self.options.labels:
            config_obj["Labels"] = {**(config_obj.get("Labels") or {}), **self.options.labels}
        created = state.history[-1]["created"] if state.history else self._now()
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

    def _now(self) -> str:
        if self.options.source_date_epoch is not None:
            return rfc3339(self.options.source_date_epoch)
        return rfc3339(time.time())

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

    def _stage_by_ref(self, ref: str) -> Stage | None:
        lowered = ref.lower()
        for stage in self.stages:
            if stage.name == lowered:
                return stage
        if ref.isdigit() and int(ref) < len(self.stages):
            return self.stages[int(ref)]
        return None

    def _stage(self, index: int) -> State:
        if index in self.built:
            return self.built[index]
        if index in self.building:
            raise BuildError(f"stage {self.stages[index].label} depends on itself (a cycle of stages)")
        self.building.add(index)
        try:
            state = self._build_stage(self.stages[index])
        finally:
            self.building.discard(index)
        self.built[index] = state
        return state

    def _build_stage(self, stage: Stage) -> State:
        base_name = self._expand_global(stage.base, stage.origin)
        try:
            state = self._from(stage, base_name)
        except BaseException as e:
            steps = 1 + sum(1 for i in stage.instructions if i.keyword.upper() in FILE_STEPS)
            number = self.progress.start(f"[{self._prefix(stage)}1/{steps}] FROM {base_name}")
            self.progress.error(number, str(e) or type(e).__name__)
            raise
        triggers = [
            trigger
            for text in state.config.pop("OnBuild", None) or []
            for trigger in self._parse_trigger(str(text), stage.origin)
        ]
        steps = 1 + sum(1 for i in [*triggers, *stage.instructions] if i.keyword.upper() in FILE_STEPS)
        self.step_numbers[stage.index] = (steps, iter(range(2, steps + 1)))
        # Printed once the base is there: a base stage's own steps come first.
        self.progress.done(self.progress.start(f"[{self._prefix(stage)}1/{steps}] FROM {base_name}"))
        for trigger in triggers:
            self._dispatch(stage, state, trigger, trigger_of=stage.origin)
        for instruction in stage.instructions:
            self._dispatch(stage, state, instruction)
        return state

    def _expand_global(self, word: str, instruction: Instruction) -> str:
        def lookup(name: str) -> str | None:
            return self.globals.get(name)

        try:
            return expand_word(word, lookup, self.dockerfile.escape)
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
            if trigger.keyword.upper() in ("FROM", "ONBUILD", "MAINTAINER"):
                raise BuildError(f"{self._where(origin)}: ONBUILD {trigger.keyword} is not allowed")
        return triggers

    def _from(self, stage: Stage, base_name: str) -> State:
        """The state a stage starts from: an earlier stage's, an image's, or scratch."""
        base: Image | None = None
        base_stage = self._stage_by_ref(base_name) if base_name.lower() != "scratch" else None
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
        if base_name.lower() != "scratch":
            base = self._image(base_name, stage.origin)
        config = json.loads(json.dumps(base.config.config)) if base else {}
        env = list(config.get("Env") or [])
        state = State(
            layers=[
                LayerRef(d, diff_id)
                for d, diff_id in zip(base.manifest.layers, base.config.diff_ids, strict=True)
            ]
            if base
            else [],
            config=config,
            history=list(base.config.history) if base else [],
            variables=StageVariables.for_stage(self.globals, self.options.build_args, env),
            key=cache_key("FROM", str(base.descriptor.digest) if base else "scratch", self.options.platform),
            workdir=str(config.get("WorkingDir") or "/"),
            shell=list(config.get("Shell") or DEFAULT_SHELL),
            user=str(config.get("User") or ""),
        )
        return state

    def _image(self, reference: str, instruction: Instruction) -> Image:
        if reference not in self.images:
            try:
                self.images[reference] = self.resolver.resolve(reference)
            except StorageError as e:
                raise BuildError(f"{self._where(instruction)}: {reference}: {e}") from None
        return self.images[reference]

    # -- one instruction ---------------------------------------------------------------------------

    def _dispatch(
        self, stage: Stage, state: State, instruction: Instruction, trigger_of: Instruction | None = None
    ) -> None:
        keyword = instruction.keyword.upper()
        where = instruction if trigger_of is None else trigger_of
        try:
            expanded = self._expand(state, instruction, keyword)
        except DockerfileSyntaxError:
            raise
        except BuildError as e:
            raise BuildError(f"{self._where(where)}: {e}") from None
        handler: Callable[[Stage, State, Instruction, Instruction], None] = getattr(
            self, f"_do_{keyword.lower()}"
        )
        handler(stage, state, expanded, where)

    def _expand(self, state: State, instruction: Instruction, keyword: str) -> Instruction:
        if keyword == "ONBUILD":
            return instruction  # triggers are expanded when they run, in the child image's build
        return expand_instruction(instruction, state.variables.lookup, self.dockerfile.escape)

    def _step_label(self, stage: Stage, instruction: Instruction) -> str:
        steps, counter = self.step_numbers[stage.index]
        number = next(counter, steps)
        text = " ".join(instruction.original.split()) if instruction.original else instruction.keyword
        return f"[{self._prefix(stage)}{number}/{steps}] {text[:200]}"

    def _prefix(self, stage: Stage) -> str:
        """BuildKit names the stage in a step's label unless the Dockerfile has one unnamed stage."""
        return "" if len(self.stages) == 1 and stage.name is None else f"{stage.label} "

    def _record(self, state: State, created_by: str, created: str, empty: bool) -> None:
        entry: dict[str, Any] = {"created": created, "created_by": created_by, "comment": HISTORY_COMMENT}
        if empty:
            entry["empty_layer"] = True
        state.history.append(entry)

    def _metadata(self, state: State, instruction: Instruction, created_by: str) -> None:
        """A step that only changes the config: its history time comes from the cache, so a rebuild
        gives the same config."""
        key = cache_key(state.key, "META", created_by, len(state.history))
        entry = self.cache.get(key)
        if entry is None:
            entry = CacheEntry(self._now(), None)
            self.cache.put(key, entry)
        self._record(state, created_by, entry.created, empty=True)

    def _file_step(
        self,
        stage: Stage,
        state: State,
        instruction: Instruction,
        where: Instruction,
        key_parts: list[Any] | Callable[[], list[Any]],
        created_by: str,
        work: Callable[[Path, int], None],
    ) -> None:
        """Run a file-changing step, or take it from the cache; its layer (if any) joins the state.

        `key_parts` may be a function: what reads the step's sources (a COPY's digest) then fails
        under the step's own progress line.
        """
        number = self.progress.start(self._step_label(stage, instruction))
        cached = False
        try:
            parts = key_parts() if callable(key_parts) else key_parts
            key = cache_key(state.key, *parts, self.options.platform)
            found = self.cache.get(key)
            if found is not None:
                entry, cached = found, True
            else:
                with self._scratch_dir() as scratch:
                    upper = scratch / "upper"
                    work(upper, number)
                    layer = self._store_upper(upper)
                entry = CacheEntry(self._now(), layer)
                self.cache.put(key, entry)
        except BuildError as e:
            self.progress.error(number, str(e))
            raise BuildError(f"{self._where(where)}: {e}") from None
        except BaseException as e:
            self.progress.error(number, str(e) or type(e).__name__)
            raise
        if cached:
            self.progress.cached(number)
        else:
            self.progress.done(number)
        state.key = key
        if entry.layer is not None:
            state.layers.append(entry.layer)
        self._record(state, created_by, entry.created, empty=entry.layer is None)

    @contextlib.contextmanager
    def _scratch_dir(self) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(dir=self.store.tmp, prefix="build-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _store_upper(self, upper: Path) -> LayerRef | None:
        """The step's upper directory as a zstd:chunked layer in the store; None if it is empty."""
        if not upper.is_dir() or not any(upper.iterdir()):
            return None
        with self.store.temp_file() as (tar_path, _):
            upper_to_tar(upper, tar_path, self.clamp_ns)
            with self.store.temp_file() as (blob_path, blob):
                written = write_chunked_layer(tar_path, blob)
                self.store.adopt(blob_path, blob, written.digest)
        return LayerRef(written.descriptor(), written.diff_id)

    # -- metadata instructions ---------------------------------------------------------------------

    def _do_arg(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        try:
            declarations = arg_declarations(instruction)
        except BuildError as e:
            raise BuildError(f"{self._where(where)}: {e}") from None
        for name, default in declarations:
            state.variables.declare_arg(name, default)
        self._metadata(state, instruction, f"ARG {' '.join(instruction.args)}")

    def _do_env(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        state.variables.set_env(self._pairs(instruction, where))
        state.config["Env"] = state.variables.image_env()
        self._metadata(state, instruction, f"ENV {_pairs_text(self._pairs(instruction, where))}")

    def _do_label(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        pairs = self._pairs(instruction, where)
        state.config["Labels"] = {**(state.config.get("Labels") or {}), **dict(pairs)}
        self._metadata(state, instruction, f"LABEL {_pairs_text(pairs)}")

    def _do_maintainer(
        self, stage: Stage, state: State, instruction: Instruction, where: Instruction
    ) -> None:
        state.author = " ".join(instruction.args)
        self._metadata(state, instruction, f"MAINTAINER {state.author}")

    def _do_user(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        self._need_args(instruction, where, 1, 1)
        state.user = instruction.args[0]
        state.config["User"] = state.user
        self._metadata(state, instruction, f"USER {state.user}")

    def _do_expose(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        self._need_args(instruction, where, 1, None)
        ports = dict(state.config.get("ExposedPorts") or {})
        for port in instruction.args:
            number, _, proto = port.partition("/")
            if not number.replace("-", "").isdigit() or (
                proto and proto.lower() not in ("tcp", "udp", "sctp")
            ):
                raise BuildError(f"{self._where(where)}: EXPOSE {port}: expected PORT[/tcp|udp|sctp]")
            ports[f"{number}/{(proto or 'tcp').lower()}"] = {}
        state.config["ExposedPorts"] = ports
        self._metadata(state, instruction, f"EXPOSE map[{' '.join(sorted(ports))}:{{}}]")

    def _do_volume(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        self._need_args(instruction, where, 1, None)
        volumes = dict(state.config.get("Volumes") or {})
        for path in instruction.args:
            volumes[path] = {}
        state.config["Volumes"] = volumes
        self._metadata(state, instruction, f"VOLUME {json.dumps(instruction.args)}")

    def _do_stopsignal(
        self, stage: Stage, state: State, instruction: Instruction, where: Instruction
    ) -> None:
        self._need_args(instruction, where, 1, 1)
        state.config["StopSignal"] = instruction.args[0]
        self._metadata(state, instruction, f"STOPSIGNAL {instruction.args[0]}")

    def _do_shell(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        if not instruction.exec_form or not instruction.args:
            raise BuildError(
                f'{self._where(where)}: SHELL requires the JSON form, e.g. SHELL ["/bin/sh", "-c"]'
            )
        state.shell = list(instruction.args)
        state.config["Shell"] = state.shell
        self._metadata(state, instruction, f"SHELL {json.dumps(state.shell)}")

    def _do_cmd(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        state.config["Cmd"] = self._command(state, instruction)
        state.cmd_set = True
        self._metadata(state, instruction, f"CMD {json.dumps(state.config['Cmd'])}")

    def _do_entrypoint(
        self, stage: Stage, state: State, instruction: Instruction, where: Instruction
    ) -> None:
        state.config["Entrypoint"] = self._command(state, instruction)
        # docker: an ENTRYPOINT resets a CMD inherited from the base (one set in this stage stays).
        if not state.cmd_set:
            state.config.pop("Cmd", None)
        self._metadata(state, instruction, f"ENTRYPOINT {json.dumps(state.config['Entrypoint'])}")

    def _do_healthcheck(
        self, stage: Stage, state: State, instruction: Instruction, where: Instruction
    ) -> None:
        args = instruction.args
        if (
            not args
            or args[0].upper() not in ("NONE", "CMD", "CMD-SHELL")
            or (args[0] != "NONE" and len(args) < 2)
        ):
            raise BuildError(f"{self._where(where)}: HEALTHCHECK needs CMD and a command, or NONE")
        check: dict[str, Any] = {"Test": list(args)}
        if args[0].upper() != "NONE":
            for flag, key in HEALTHCHECK_DURATIONS:
                if instruction.flags.get(flag):
                    check[key] = self._duration(instruction.flags[flag][-1], flag, where)
            if instruction.flags.get("retries"):
                value = instruction.flags["retries"][-1]
                if not value.isdigit():
                    raise BuildError(
                        f"{self._where(where)}: HEALTHCHECK --retries={value}: expected a number"
                    )
                check["Retries"] = int(value)
        state.config["Healthcheck"] = check
        self._metadata(state, instruction, f"HEALTHCHECK {json.dumps(check, sort_keys=True)}")

    def _do_onbuild(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        text = instruction.original.split(None, 1)[1] if instruction.original else " ".join(instruction.args)
        trigger = instruction.trigger
        if trigger is not None and trigger.keyword.upper() in ("ONBUILD", "FROM", "MAINTAINER"):
            raise BuildError(f"{self._where(where)}: ONBUILD {trigger.keyword} is not allowed")
        state.config["OnBuild"] = [*(state.config.get("OnBuild") or []), text.strip()]
        self._metadata(state, instruction, f"ONBUILD {text.strip()}")

    def _do_from(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        raise BuildError(f"{self._where(where)}: FROM is not allowed here")

    # -- file system instructions ------------------------------------------------------------------

    def _do_workdir(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        self._need_args(instruction, where, 1, 1)
        path = posixpath.normpath(posixpath.join(state.workdir, instruction.args[0]))
        path = "/" + path.lstrip("/")
        state.workdir = path
        state.config["WorkingDir"] = path

        def work(upper: Path, number: int) -> None:
            upper.mkdir()
            with ImageFiles.open(self.store, state.image() if state.layers else None) as files:
                make_dirs(files, upper, path, self.clamp_ns)

        self._file_step(stage, state, instruction, where, ["WORKDIR", path], f"WORKDIR {path}", work)

    def _do_copy(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        self._copy(stage, state, instruction, where, add=False)

    def _do_add(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        self._copy(stage, state, instruction, where, add=True)

    def _copy(
        self, stage: Stage, state: State, instruction: Instruction, where: Instruction, add: bool
    ) -> None:
        keyword = "ADD" if add else "COPY"
        if len(instruction.args) < 2:
            raise BuildError(f"{self._where(where)}: {keyword} needs at least one source and a destination")
        flags = instruction.flags
        request = CopyRequest(
            sources=list(instruction.args[:-1]),
            dest=instruction.args[-1],
            workdir=state.workdir,
            chown=_last(flags, "chown"),
            chmod=_last(flags, "chmod"),
            link=_flag_true(flags, "link"),
            excludes=tuple(flags.get("exclude", [])),
            heredocs=tuple(instruction.heredocs),
            add=add,
            checksum=_last(flags, "checksum"),
            keep_git_dir=_flag_true(flags, "keep-git-dir"),
        )
        if not add and (request.checksum or request.keep_git_dir):
            raise BuildError(f"{self._where(where)}: COPY has no --checksum or --keep-git-dir (ADD has)")
        source_ref = _last(flags, "from")
        with contextlib.ExitStack() as stack:
            source: BuildContext | ImageFiles
            source_key: str
            if source_ref is None:
                source, source_key = self.context, "context"
            else:
                image, source_key = self._from_ref(source_ref, where, keyword)
                source = stack.enter_context(ImageFiles.open(self.store, image))
            text = " ".join(instruction.original.split()) if instruction.original else keyword
            heredocs = [(h.name, h.content, h.expand, h.chomp) for h in request.heredocs]

            def key_parts() -> list[Any]:
                digest = copy_digest(request, source)  # reads the sources: their errors are the step's
                return [keyword, request.sources, request.dest, request.workdir, request.chown,
                        request.chmod, request.link, list(request.excludes), request.checksum,
                        source_key, digest, heredocs]  # fmt: skip

            def work(upper: Path, number: int) -> None:
                upper.mkdir()
                with ImageFiles.open(self.store, state.image() if state.layers else None) as target:
                    copy_step(request, source, target, upper, self.clamp_ns)

            self._file_step(stage, state, instruction, where, key_parts, f"{text} # buildkit", work)

    def _from_ref(self, ref: str, where: Instruction, what: str) -> tuple[Image | None, str]:
        """The files `--from=REF` names: an earlier stage (by name or number) or an image."""
        stage = self._stage_by_ref(ref)
        if stage is not None:
            built = self._stage(stage.index)
            return (built.image() if built.layers else None), f"stage:{built.key}"
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

    def _do_run(self, stage: Stage, state: State, instruction: Instruction, where: Instruction) -> None:
        if not instruction.args and not instruction.heredocs:
            raise BuildError(f"{self._where(where)}: RUN needs a command")
        argv, scripts = command_line(instruction, state.shell)
        network = parse_network(instruction, self.options.network)
        mounts: list[RunMount] = []
        mount_keys: list[Any] = []
        for text in instruction.flags.get("mount", []):
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

        self._file_step(stage, state, instruction, where, key_parts, f"RUN {prefix}{shown} # buildkit", work)

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
            layers = (
                [LayerRef(d, i) for d, i in zip(image.manifest.layers, image.config.diff_ids, strict=True)]
                if image
                else []
            )
            return RunMount(spec.target, spec.read_only, layers=layers, subpath=spec.source,
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

    # -- helpers -----------------------------------------------------------------------------------

    def _pairs(self, instruction: Instruction, where: Instruction) -> list[tuple[str, str]]:
        try:
            return key_value_pairs(instruction)
        except BuildError as e:
            raise BuildError(f"{self._where(where)}: {e}") from None

    def _need_args(self, instruction: Instruction, where: Instruction, least: int, most: int | None) -> None:
        count = len(instruction.args)
        if count < least or (most is not None and count > most):
            wanted = f"exactly {least}" if least == most else f"at least {least}"
            raise BuildError(
                f"{self._where(where)}: {instruction.keyword.upper()} takes {wanted} argument(s)"
            )

    def _command(self, state: State, instruction: Instruction) -> list[str]:
        if instruction.exec_form:
            return list(instruction.args)
        return [*state.shell, " ".join(instruction.args)]

    def _duration(self, text: str, flag: str, where: Instruction) -> int:
        try:
            return parse_duration_ns(text)
        except ValueError as e:
            raise BuildError(f"{self._where(where)}: HEALTHCHECK --{flag}: {e}") from None


def make_dirs(files: ImageFiles, upper: Path, path: str, clamp_ns: int | None) -> None:
    """Create `path` in `upper` unless the image has it; the existing parents on the way are copied
    up with their metadata, as overlayfs would."""
    try:
        node = files.tree.lookup(path)
        if node.is_dir:
            return
    except (NotFound, StorageError):
        pass
    parts = [p for p in path.split("/") if p]
    current = upper
    walked = ""
    for part in parts:
        walked = f"{walked}/{part}"
        current = current / part
        try:
            existing = files.tree.lookup(walked, follow_last=False)
        except (NotFound, StorageError):
            existing = None
        if existing is not None and not existing.is_dir:
            raise BuildError(f"WORKDIR {path}: {walked} exists and is not a directory")
        current.mkdir(exist_ok=True)
        if existing is not None:
            os.chmod(current, existing.entry.mode & 0o7777)
            os.chown(current, existing.entry.uid, existing.entry.gid)
        else:
            os.chmod(current, 0o755)
    if clamp_ns is not None:
        for directory in [upper, *upper.rglob("*")]:
            os.utime(directory, ns=(clamp_ns, clamp_ns), follow_symlinks=False)


def _last(flags: dict[str, list[str]], name: str) -> str | None:
    values = flags.get(name)
    return values[-1] if values else None


def _flag_true(flags: dict[str, list[str]], name: str) -> bool:
    values = flags.get(name)
    if not values:
        return False
    return values[-1].lower() in ("", "true", "1")


def _pairs_text(pairs: list[tuple[str, str]]) -> str:
    return " ".join(f"{k}={v}" for k, v in pairs)
