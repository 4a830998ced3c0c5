"""Builds without RUN, in this process and without root: the builder with a real store, a real
busybox image and a real context, and a `StepRunner` that refuses every RUN. Layers, the image
config, the history, the cache and bad input are the builder's own; RUN in containers is
test_build.py's (privileged)."""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.build import Builder, BuildOptions, BuildResult
from builder.errors import BuildError
from builder.image_files import ImageFiles
from builder.progress import PlainProgress
from builder.run import RunRequest
from storage.importer import import_tarball
from storage.store import Image, Store
from tests.builder.trees import write_tree

EPOCH = 1_700_000_000


class RefusingRunner:
    """A StepRunner for builds that must not run anything: it keeps each request and refuses it."""

    def __init__(self) -> None:
        self.requests: list[RunRequest] = []

    def run(self, request: RunRequest, upper: Path, output: Callable[[str], None]) -> int:
        self.requests.append(request)
        raise BuildError(f"this build runs no RUN: {' '.join(request.argv)}")


class StoreImages:
    """FROM images from the store only."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def resolve(self, reference: str) -> Image:
        return self.store.image(reference)


@pytest.fixture
def store(tmp_path: Path, busybox_tar: Path) -> Store:
    store = Store(tmp_path / "root")
    with open(busybox_tar, "rb") as f:
        import_tarball(store, f, "busybox")
    return store


def build(
    store: Store,
    context: Path,
    runner: RefusingRunner | None = None,
    **options: object,
) -> tuple[BuildResult, str]:
    """Build `context`'s Dockerfile; the result and the plain progress output."""
    out = io.StringIO()
    settings = BuildOptions(context=context, dockerfile=context / "Dockerfile", **options)  # type: ignore[arg-type]
    builder = Builder(store, settings, runner or RefusingRunner(), StoreImages(store), PlainProgress(out))
    return builder.build(), out.getvalue()


def context_with(tmp_path: Path, dockerfile: str, files: dict[str, bytes | str] | None = None) -> Path:
    return write_tree(tmp_path / "ctx", {"Dockerfile": dockerfile.encode(), **(files or {})})


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under the root with its inode, size and mtime: any write shows."""
    return {
        str(path.relative_to(root)): (path.lstat().st_ino, path.lstat().st_size, path.lstat().st_mtime_ns)
        for path in root.rglob("*")
    }


def step_status(out: str) -> dict[str, str]:
    """Each file step's text -> CACHED or DONE, from the plain progress output (FROM is not one)."""
    numbers = {n: text for n, text in re.findall(r"^#(\d+) \[(?:\S+ )?\d+/\d+\] (.*)$", out, re.M)}
    numbers = {n: text for n, text in numbers.items() if not text.startswith("FROM ")}
    return {
        numbers[n]: status for n, status in re.findall(r"^#(\d+) (CACHED|DONE)", out, re.M) if n in numbers
    }


EVERY_CONFIG_STEP = """\
FROM busybox
ARG VERSION=1
ENV APP=/app MODE=test
LABEL org.example.title="demo app" version=$VERSION
WORKDIR $APP
COPY app.sh ./
ADD bundle.tar /opt/
COPY --chown=nobody:nogroup --chmod=0750 tool.sh /usr/local/bin/tool
USER nobody
EXPOSE 8080 53/udp
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --retries=3 CMD ["cat", "/app/app.sh"]
SHELL ["/bin/sh", "-ec"]
MAINTAINER someone
ENTRYPOINT ["sh"]
CMD ["/app/app.sh"]
"""


def bundle(tmp_path: Path) -> bytes:
    path = tmp_path / "bundle.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("bundle/readme")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return path.read_bytes()


def test_a_dockerfile_without_run_builds_its_layers_config_and_history(store: Store, tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {
        "app.sh": b"echo app\n",
        "tool.sh": b"echo tool\n",
        "bundle.tar": bundle(tmp_path),
    }
    runner = RefusingRunner()
    result, out = build(store, context_with(tmp_path, EVERY_CONFIG_STEP, files), runner, tags=["demo:1"])
    assert runner.requests == []
    built, base = store.image("demo:1"), store.image("busybox")
    assert result.image.descriptor.digest == built.descriptor.digest and result.tags == ["demo:1"]
    config = built.config.config
    assert "APP=/app" in config["Env"] and "MODE=test" in config["Env"]
    assert config["Labels"] == {"org.example.title": "demo app", "version": "1"}
    assert config["WorkingDir"] == "/app" and config["User"] == "nobody"
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}} and config["Volumes"] == {"/data": {}}
    assert config["StopSignal"] == "SIGTERM" and config["Shell"] == ["/bin/sh", "-ec"]
    assert config["Healthcheck"] == {
        "Test": ["CMD", "cat", "/app/app.sh"],
        "Interval": 30 * 10**9,
        "Retries": 3,
    }
    assert config["Entrypoint"] == ["sh"] and config["Cmd"] == ["/app/app.sh"]
    assert built.config.author == "someone"
    history = built.config.history[len(base.config.history) :]
    assert [h["created_by"].split()[0] for h in history] == [
        line.split()[0] for line in EVERY_CONFIG_STEP.splitlines()[1:]
    ]
    layered = [h["created_by"].split()[0] for h in history if not h.get("empty_layer")]
    assert layered == ["WORKDIR", "COPY", "ADD", "COPY"]
    assert len(built.manifest.layers) == len(base.manifest.layers) + 4
    assert re.search(r"^#\d+ \[5/5\] COPY --chown=nobody:nogroup", out, re.M)  # FROM and the 4 file steps
    with ImageFiles.open(store, built) as image_files:
        assert image_files.read("/app/app.sh") == b"echo app\n"
        assert image_files.read("/opt/bundle/readme") == b"hi\n"
        tool = image_files.tree.lookup("/usr/local/bin/tool").entry
        assert (tool.uid, tool.gid, tool.mode & 0o7777) == (65534, 65534, 0o750)


def test_a_rebuild_takes_every_step_from_the_cache_and_writes_nothing(store: Store, tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {
        "app.sh": b"echo app\n",
        "tool.sh": b"echo tool\n",
        "bundle.tar": bundle(tmp_path),
    }
    context = context_with(tmp_path, EVERY_CONFIG_STEP, files)
    first, first_out = build(store, context, tags=["demo"])
    assert set(step_status(first_out).values()) == {"DONE"}
    before = snapshot(store.root)
    second, out = build(store, context, tags=["demo"])
    assert snapshot(store.root) == before
    assert second.image.descriptor.digest == first.image.descriptor.digest
    status = step_status(out)
    assert len(status) == 4 and set(status.values()) == {"CACHED"}
    _, out = build(store, context, tags=["demo"], no_cache=True)
    assert set(step_status(out).values()) == {"DONE"}


def test_a_changed_file_reruns_the_copy_that_reads_it_and_the_steps_after(
    store: Store, tmp_path: Path
) -> None:
    dockerfile = "FROM busybox\nCOPY a.txt /a.txt\nENV X=1\nCOPY b.txt /b.txt\nWORKDIR /w\n"
    context = context_with(tmp_path, dockerfile, {"a.txt": b"a\n", "b.txt": b"b\n"})
    build(store, context)
    (context / "b.txt").write_text("b changed\n")
    _, out = build(store, context, tags=["app"])
    assert step_status(out) == {
        "COPY a.txt /a.txt": "CACHED",
        "COPY b.txt /b.txt": "DONE",
        "WORKDIR /w": "DONE",
    }
    with ImageFiles.open(store, store.image("app")) as image_files:
        assert image_files.read("/b.txt") == b"b changed\n"
    (context / "b.txt").touch()  # a new mtime, the same content: still cached
    _, out = build(store, context, tags=["app"])
    assert set(step_status(out).values()) == {"CACHED"}


def test_stages_copy_from_each_other_and_only_those_the_target_needs_are_built(
    store: Store, tmp_path: Path
) -> None:
    dockerfile = """\
FROM busybox AS build
WORKDIR /src
COPY f .

FROM busybox AS unused
RUN exit 1

FROM scratch
COPY --from=build /src/f /f
COPY --from=busybox /bin/busybox /bin/
"""
    runner = RefusingRunner()
    _, out = build(store, context_with(tmp_path, dockerfile, {"f": b"x"}), runner, tags=["mini"])
    assert runner.requests == [] and "unused" not in out
    mini = store.image("mini")
    assert len(mini.manifest.layers) == 2
    with ImageFiles.open(store, mini) as image_files:
        assert image_files.read("/f") == b"x"
        assert image_files.tree.lookup("/bin/busybox").entry.mode & 0o111
    build(store, tmp_path / "ctx", tags=["src"], target="build")
    assert store.image("src").config.config["WorkingDir"] == "/src"


def test_onbuild_copy_runs_in_the_child_image(store: Store, tmp_path: Path) -> None:
    parent = write_tree(tmp_path / "parent", {"Dockerfile": b"FROM busybox\nONBUILD COPY hello /hello\n"})
    build(store, parent, tags=["parent"])
    assert store.image("parent").config.config["OnBuild"] == ["COPY hello /hello"]
    child = write_tree(tmp_path / "child", {"Dockerfile": b"FROM parent\n", "hello": b"hi\n"})
    build(store, child, tags=["child"])
    built = store.image("child")
    assert "OnBuild" not in built.config.config
    with ImageFiles.open(store, built) as image_files:
        assert image_files.read("/hello") == b"hi\n"


def test_source_date_epoch_gives_byte_identical_manifests(
    busybox_tar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(EPOCH))  # for the base image's import, as the CLI has it
    context = context_with(tmp_path, "FROM busybox\nCOPY f /f\nWORKDIR /d\nENV A=1\n", {"f": b"f\n"})
    digests = []
    for attempt in ("one", "two"):
        store = Store(tmp_path / attempt)
        with open(busybox_tar, "rb") as f:
            import_tarball(store, f, "busybox")
        result, _ = build(store, context, tags=["repro"], source_date_epoch=EPOCH)
        digests.append(result.image.descriptor.digest)
        assert result.image.config.created == "2023-11-14T22:13:20Z"
        assert {h["created"] for h in result.image.config.history} == {"2023-11-14T22:13:20Z"}
    assert digests[0] == digests[1]


def test_a_run_is_asked_of_the_step_runner(store: Store, tmp_path: Path) -> None:
    dockerfile = "FROM busybox\nWORKDIR /w\nARG V=2\nRUN --network=none echo $V\n"
    runner = RefusingRunner()
    with pytest.raises(BuildError) as raised:
        build(store, context_with(tmp_path, dockerfile), runner)
    assert str(raised.value) == "Dockerfile:4: this build runs no RUN: /bin/sh -c echo $V"
    [request] = runner.requests
    assert (request.cwd, request.network, request.user) == ("/w", "none", "")
    assert "V=2" in request.env and any(item.startswith("PATH=") for item in request.env)
    assert len(request.layers) == len(store.image("busybox").manifest.layers) + 1  # and WORKDIR's


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        ("FROM busybox\nEXPOSE 80/tcp http\n", "Dockerfile:2: EXPOSE http: expected PORT[/tcp|udp|sctp]"),
        ("FROM busybox\nARG P\nEXPOSE $P\n", "Dockerfile:3: EXPOSE takes at least 1 argument(s)"),
        ("FROM busybox\nRUN --network=bridge true\n", "Dockerfile:2: unsupported RUN --network=bridge"),
        (
            "FROM busybox\nHEALTHCHECK --retries=+1 CMD true\n",
            "Dockerfile:2: HEALTHCHECK --retries=+1: expected",
        ),
        ("FROM busybox AS a\nFROM busybox AS a\n", "Dockerfile:2: duplicate stage name 'a'"),
        ("FROM busybox\nCOPY --from=nowhere /x /x\n", "Dockerfile:2: COPY --from=nowhere: no stage named"),
        ("FROM busybox\nCOPY missing.txt /x\n", "Dockerfile:2: COPY failed: file not found in build context"),
        ("FROM busybox\nCOPY ../secret /x\n", "outside the build context"),
        ("FROM no-such-image\n", "Dockerfile:1: no-such-image"),
        ("FROM busybox\nFROBNICATE x\n", "Dockerfile:2: unknown instruction: FROBNICATE"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_line(
    store: Store, tmp_path: Path, dockerfile: str, message: str
) -> None:
    (tmp_path / "secret").write_text("outside the context")
    names = store.names()
    with pytest.raises(BuildError) as raised:
        build(store, context_with(tmp_path, dockerfile), tags=["bad"])
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert store.names() == names


def test_dockerignore_hides_files_from_copy(store: Store, tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {
        ".dockerignore": b"*.log\n!keep.log\n",
        "a.log": b"a",
        "keep.log": b"k",
        "src/main.c": b"int main;",
    }
    build(store, context_with(tmp_path, "FROM busybox\nCOPY . /ctx\n", files), tags=["ign"])
    with ImageFiles.open(store, store.image("ign")) as image_files:
        copied = sorted(image_files.tree.lookup("/ctx").children or {})
    assert copied == [".dockerignore", "Dockerfile", "keep.log", "src"]
