"""`lazyctr build` end to end: stages, RUN in real containers, COPY, the image config and history,
the cache, reproducibility, progress, and every kind of bad input."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from builder.cache import BuildCache
from storage.store import Image, Store
from tests.conftest import CliRunner, Result, assert_clean_error

pytestmark = pytest.mark.privileged


@pytest.fixture
def based(lazyctr: CliRunner, busybox_tar: Path) -> CliRunner:
    """The CLI with a busybox image in the store."""
    lazyctr("import", str(busybox_tar), "busybox")
    return lazyctr


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def build(lazyctr: CliRunner, context: Path, *args: str, ok: bool = True) -> Result:
    return lazyctr("build", "--progress", "plain", *args, str(context), ok=ok)


def image(root: Path, name: str) -> Image:
    return Store(root).image(name)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under the root with its inode, size and mtime: any write shows."""
    out = {}
    for path in root.rglob("*"):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def assert_nothing_left(root: Path) -> None:
    """After a failed build: no container, no temporary file, and every blob is named by an image
    or by a cache entry (the layers of the steps that worked are cached, as BuildKit keeps them)."""
    store = Store(root)
    assert not list((root / "containers").glob("*")) if (root / "containers").exists() else True
    assert not [p for p in store.tmp.iterdir()], list(store.tmp.iterdir())
    wanted = {e.layer.descriptor.digest.hex for e in BuildCache(store).entries() if e.layer is not None}
    images, _ = store.images()
    for found in images:
        wanted |= {found.descriptor.digest.hex, found.manifest.config.digest.hex}
        wanted |= {layer.digest.hex for layer in found.manifest.layers}
    stray = {p.name for p in store.blobs.iterdir()} - wanted
    assert not stray, stray


MULTI_STAGE = """\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM $BASE AS build
ARG GREETING=hello
ENV APP_DIR=/src
WORKDIR $APP_DIR
COPY greeting.txt ./
RUN cat greeting.txt > out.txt && echo "$GREETING from build" >> out.txt && echo built
RUN <<EOF
echo heredoc ran > /src/heredoc.txt
EOF

FROM busybox AS unused
RUN exit 1

FROM ${BASE}
LABEL org.example.title="demo app" version=1
COPY --from=build /src/out.txt /src/heredoc.txt /app/
EXPOSE 8080 53/udp
USER nobody
WORKDIR /app
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s CMD ["cat", "/app/out.txt"]
ENTRYPOINT ["cat"]
CMD ["/app/out.txt"]
"""


def test_multi_stage_busybox_image_builds_is_tagged_and_runs(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    context = write(tmp_path / "ctx", {"Dockerfile": MULTI_STAGE, "greeting.txt": "greetings\n"})
    result = build(based, context, "-t", "demo:1", "-t", "demo:latest", "--build-arg", "GREETING=hi")
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", result.out.strip().splitlines()[-1])
    assert "[build 4/5] RUN cat greeting.txt" in result.out
    assert re.search(r"#\d+ \d+\.\d{3} built", result.out)
    assert "unused" not in result.out  # a stage the target does not need is not built
    run = based("run", "--rm", "demo:1")
    assert run.out == "greetings\nhi from build\n"
    assert based("run", "--rm", "demo:latest", "/app/heredoc.txt").out == "heredoc ran\n"
    config = image(root, "demo:1").config.config
    assert config["Entrypoint"] == ["cat"] and config["Cmd"] == ["/app/out.txt"]
    assert config["User"] == "nobody" and config["WorkingDir"] == "/app"
    assert config["Labels"] == {"org.example.title": "demo app", "version": "1"}
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["StopSignal"] == "SIGTERM"
    assert config["Healthcheck"] == {"Test": ["CMD", "cat", "/app/out.txt"], "Interval": 30 * 10**9}
    assert image(root, "demo:1").id == image(root, "demo:latest").id


def test_history_records_every_instruction_and_only_file_steps_have_layers(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    dockerfile = """\
FROM busybox
ENV A=1
RUN true
RUN echo x > /x
LABEL a=b
COPY f /f
CMD ["sh"]
"""
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile, "f": "f\n"})
    build(based, context, "-t", "hist")
    built, base = image(root, "hist"), image(root, "busybox")
    history = built.config.history[len(base.config.history) :]
    assert [h["created_by"].split()[0] for h in history] == ["ENV", "RUN", "RUN", "LABEL", "COPY", "CMD"]
    assert [bool(h.get("empty_layer")) for h in history] == [True, True, False, True, False, True]
    assert len(built.manifest.layers) == len(base.manifest.layers) + 2  # `RUN true` changed nothing
    assert based("run", "--rm", "hist", "cat", "/x", "/f").out == "x\nf\n"
    assert based("run", "--rm", "hist", "sh", "-c", "echo $A").out == "1\n"


def test_a_rebuild_with_nothing_changed_reuses_every_step_and_writes_nothing(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    context = write(tmp_path / "ctx", {"Dockerfile": MULTI_STAGE, "greeting.txt": "greetings\n"})
    first = build(based, context, "-t", "demo")
    before = snapshot(root)
    second = build(based, context, "-t", "demo")
    assert snapshot(root) == before
    assert second.out.splitlines()[-1] == first.out.splitlines()[-1]
    steps = re.findall(r"^#(\d+) \[(?:\S+ )?\d+/\d+\] (RUN|COPY|WORKDIR)", second.out, re.M)
    assert steps and all(f"#{n} CACHED" in second.out for n, _ in steps)
    assert " DONE" not in "\n".join(line for line in second.out.splitlines() if "RUN" in line)


def test_changing_one_file_reruns_only_the_steps_from_the_first_copy_that_reads_it(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    dockerfile = """\
FROM busybox
COPY a.txt /a.txt
RUN cat /proc/sys/kernel/random/uuid > /first
COPY b.txt /b.txt
RUN cat /proc/sys/kernel/random/uuid > /second
"""
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile, "a.txt": "a\n", "b.txt": "b\n"})
    build(based, context, "-t", "app")
    first = based("run", "--rm", "app", "cat", "/first", "/second").out.split()
    (context / "b.txt").write_text("b changed\n")
    out = build(based, context, "-t", "app").out
    status = dict(re.findall(r"^#(\d+) (CACHED|DONE)", out, re.M))
    numbers = {text: n for n, text in re.findall(r"^#(\d+) \[(?:\S+ )?\d+/\d+\] (.*)$", out, re.M)}
    assert status[numbers["COPY a.txt /a.txt"]] == "CACHED"
    assert status[numbers["RUN cat /proc/sys/kernel/random/uuid > /first"]] == "CACHED"
    assert status[numbers["COPY b.txt /b.txt"]] == "DONE"
    assert status[numbers["RUN cat /proc/sys/kernel/random/uuid > /second"]] == "DONE"
    second = based("run", "--rm", "app", "cat", "/first", "/second", "/b.txt").out.split()
    assert second[0] == first[0] and second[1] != first[1] and second[2:] == ["b", "changed"]
    (context / "b.txt").touch()  # a new mtime, the same content: still cached
    assert build(based, context, "-t", "app").out.count("CACHED") == 4


def test_no_cache_runs_every_step_again(based: CliRunner, root: Path, tmp_path: Path) -> None:
    context = write(
        tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN cat /proc/sys/kernel/random/uuid >/t\n"}
    )
    build(based, context, "-t", "t")
    first = based("run", "--rm", "t", "cat", "/t").out
    out = build(based, context, "-t", "t", "--no-cache").out
    assert "CACHED" not in out
    assert based("run", "--rm", "t", "cat", "/t").out != first


def test_a_cache_entry_whose_layer_was_collected_runs_the_step_again(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    context = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo x > /x\n"})
    build(based, context)  # untagged: nothing names the layer
    based("gc")
    out = build(based, context, "-t", "x").out
    assert "CACHED" not in out
    assert based("run", "--rm", "x", "cat", "/x").out == "x\n"


def test_source_date_epoch_gives_byte_identical_manifests(
    busybox_tar: Path, tmp_path: Path, lazyctr: CliRunner
) -> None:
    dockerfile = "FROM busybox\nCOPY f /f\nRUN echo run > /r && mkdir -p /d && touch /d/x\nENV A=1\n"
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile, "f": "f\n"})
    digests = []
    for attempt in ("one", "two"):
        root = tmp_path / attempt
        env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
        for argv in (
            ["import", str(busybox_tar), "busybox"],
            ["build", "--progress", "plain", "-t", "repro", str(context)],
        ):
            proc = subprocess.run(
                [sys.executable, "-m", "lazyctr.cli", "--root", str(root), *argv],
                env=env,
                capture_output=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr.decode()
        built = Store(root).image("repro")
        digests.append(built.descriptor.digest)
        assert built.config.created == "2023-11-14T22:13:20Z"
        assert {h["created"] for h in built.config.history} == {"2023-11-14T22:13:20Z"}
    assert digests[0] == digests[1]


def test_target_builds_only_the_stages_it_needs(based: CliRunner, root: Path, tmp_path: Path) -> None:
    dockerfile = """\
FROM busybox AS base
RUN echo base > /base

FROM base AS test
RUN exit 7

FROM base AS release
RUN cat /base > /release
"""
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile})
    out = build(based, context, "--target", "release", "-t", "rel").out
    assert "exit 7" not in out
    assert based("run", "--rm", "rel", "cat", "/release").out == "base\n"
    result = build(based, context, "--target", "nope", ok=False)
    assert_clean_error(result, "target stage 'nope' could not be found")


def test_build_args_labels_and_env_scoping(based: CliRunner, root: Path, tmp_path: Path) -> None:
    dockerfile = """\
ARG VERSION=1.0
FROM busybox
ARG VERSION
ARG FLAVOR=plain
ENV FLAVOR=env-wins
RUN echo "$VERSION $FLAVOR" > /v
"""
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile})
    build(based, context, "-t", "args", "--build-arg", "VERSION=2.0", "--label", "team=build")
    assert based("run", "--rm", "args", "cat", "/v").out == "2.0 env-wins\n"
    assert image(root, "args").config.config["Labels"] == {"team": "build"}
    out = build(based, context, "-t", "args", "--build-arg", "VERSION=3.0").out
    assert "CACHED" not in out.split("RUN", 1)[1]  # another ARG value, another RUN
    assert based("run", "--rm", "args", "cat", "/v").out == "3.0 env-wins\n"


def test_entrypoint_resets_an_inherited_cmd_and_shell_changes_the_shell_form(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    write(tmp_path / "base", {"Dockerfile": 'FROM busybox\nCMD ["echo", "base"]\n'})
    build(based, tmp_path / "base", "-t", "with-cmd")
    dockerfile = (
        'FROM with-cmd\nSHELL ["/bin/sh", "-ec"]\nENTRYPOINT echo from-entrypoint\nRUN echo $0 > /shell\n'
    )
    build(based, write(tmp_path / "ctx", {"Dockerfile": dockerfile}), "-t", "ep")
    config = image(root, "ep").config.config
    assert config["Entrypoint"] == ["/bin/sh", "-ec", "echo from-entrypoint"]
    assert "Cmd" not in config
    assert config["Shell"] == ["/bin/sh", "-ec"]


def test_onbuild_triggers_run_in_the_child_image(based: CliRunner, root: Path, tmp_path: Path) -> None:
    write(
        tmp_path / "parent",
        {"Dockerfile": "FROM busybox\nONBUILD COPY hello /hello\nONBUILD RUN echo triggered > /t\n"},
    )
    build(based, tmp_path / "parent", "-t", "parent")
    assert image(root, "parent").config.config["OnBuild"] == ["COPY hello /hello", "RUN echo triggered > /t"]
    build(based, write(tmp_path / "child", {"Dockerfile": "FROM parent\n", "hello": "hi\n"}), "-t", "child")
    assert based("run", "--rm", "child", "cat", "/hello", "/t").out == "hi\ntriggered\n"
    assert "OnBuild" not in image(root, "child").config.config


def test_from_scratch_with_copy(based: CliRunner, root: Path, tmp_path: Path) -> None:
    context = write(
        tmp_path / "ctx",
        {"Dockerfile": "FROM scratch\nCOPY --from=busybox /bin/busybox /bin/\nCOPY f /\n", "f": "x"},
    )
    build(based, context, "-t", "mini")
    built = image(root, "mini")
    assert len(built.manifest.layers) == 2
    assert based("run", "--rm", "mini", "/bin/busybox", "cat", "/f").out == "x"


def test_run_mounts_cache_bind_and_secret(based: CliRunner, root: Path, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret-value")
    dockerfile = """\
FROM busybox AS tools
RUN echo tool > /tool

FROM busybox
RUN --mount=type=cache,target=/var/cache/app echo run >>/var/cache/app/log && wc -l </var/cache/app/log >/n
RUN --mount=type=bind,source=data,target=/data cat /data/input > /from-context
RUN --mount=type=bind,from=tools,source=/tool,target=/mnt/tool cat /mnt/tool > /from-stage
RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /secret-length
"""
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile, "data/input": "input\n"})
    build(based, context, "-t", "mounts", "--secret", f"id=token,src={secret}")
    out = based("run", "--rm", "mounts", "sh", "-c", "cat /n /from-context /from-stage /secret-length").out
    assert out.split() == ["1", "input", "tool", "12"]
    left = "for p in /run /var/cache /mnt /data; do test -e $p && echo $p; done; true"
    assert based("run", "--rm", "mounts", "sh", "-c", left).out == ""  # no mount point in a layer
    layers = [str(p) for p in (root / "store" / "blobs").rglob("*") if p.is_file()]
    assert not any(b"s3cret-value" in Path(p).read_bytes() for p in layers)
    # The cache mount is kept between builds; a new secret content does not change the key.
    secret.write_text("another-secret")
    build(based, context, "-t", "mounts", "--secret", f"id=token,src={secret}", "--no-cache")
    assert based("run", "--rm", "mounts", "cat", "/n").out.strip() == "2"


def test_network_none_leaves_only_loopback(based: CliRunner, tmp_path: Path) -> None:
    context = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN ls /sys/class/net > /nets\n"})
    build(based, context, "-t", "net", "--network", "none")
    assert based("run", "--rm", "net", "cat", "/nets").out.split() == ["lo"]


def test_run_steps_resolve_localhost_and_leave_no_network_file_in_a_layer(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    dockerfile = "FROM busybox\nRUN cat /etc/hosts > /hosts-at-build && cat /etc/resolv.conf > /dev/null\n"
    for network in ("none", "host"):
        context = write(tmp_path / network, {"Dockerfile": dockerfile})
        build(based, context, "-t", network, "--network", network)
        hosts = based("run", "--rm", network, "cat", "/hosts-at-build").out
        assert "localhost" in hosts  # BuildKit binds a hosts file into each RUN
        if network == "host":
            assert hosts == Path("/etc/hosts").read_text()
        store = Store(root)
        names = {
            entry.name.removeprefix("./")
            for entry in store.layer_toc(image(root, network).manifest.layers[-1]).entries
        }
        assert {"etc/hosts", "etc/resolv.conf"}.isdisjoint(names) and "hosts-at-build" in names


def test_dockerignore_hides_files_from_copy(based: CliRunner, tmp_path: Path) -> None:
    context = write(
        tmp_path / "ctx",
        {"Dockerfile": "FROM busybox\nCOPY . /ctx\n", ".dockerignore": "*.log\n!keep.log\n", "a.log": "a",
         "keep.log": "k", "src/main.c": "int main;"},
    )  # fmt: skip
    build(based, context, "-t", "ign")
    out = based("run", "--rm", "ign", "find", "/ctx", "-type", "f").out.split()
    assert sorted(out) == ["/ctx/.dockerignore", "/ctx/Dockerfile", "/ctx/keep.log", "/ctx/src/main.c"]


def test_print_ast(based: CliRunner, tmp_path: Path) -> None:
    context = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo \\\n  hi\n"})
    ast = json.loads(based("build", "--print-ast", str(context)).out)
    assert [item["keyword"] for item in ast] == ["FROM", "RUN"]
    assert ast[1]["line"] == 2 and ast[1]["end_line"] == 3


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dockerfile", "files", "message"),
    [
        ("FROM busybox\nRUN echo [\nCOPY\n", {}, "Dockerfile:3"),
        ("FROM busybox\nFROBNICATE x\n", {}, "unknown instruction"),
        ("FROM busybox\nCOPY --from=nowhere /x /x\n", {}, "--from=nowhere"),
        ("FROM busybox\nCOPY ../secret /x\n", {}, "outside"),
        ("FROM busybox\nCOPY missing.txt /x\n", {}, "missing.txt"),
        ("FROM no-such-image\n", {}, "no-such-image"),
        ("FROM busybox\nRUN echo step one && echo before failing && exit 3\n", {}, "exit code: 3"),
    ],
    ids=[
        "syntax",
        "unknown-instruction",
        "unknown-stage",
        "outside-context",
        "missing-file",
        "unknown-image",
        "failing-run",
    ],
)
def test_bad_input_fails_cleanly_and_leaves_nothing(
    based: CliRunner, root: Path, tmp_path: Path, dockerfile: str, files: dict[str, str], message: str
) -> None:
    (tmp_path / "secret").write_text("outside the context")
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile, **files})
    before = {name for name, _ in Store(root).names()}
    result = build(based, context, "-t", "bad", ok=False)
    assert_clean_error(result, message)
    assert {name for name, _ in Store(root).names()} == before
    assert_nothing_left(root)


def test_a_failing_run_shows_its_exit_code_and_last_lines(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    dockerfile = "FROM busybox\nRUN echo ok > /ok\nRUN echo first line && echo last line && exit 3\n"
    result = build(based, write(tmp_path / "ctx", {"Dockerfile": dockerfile}), "-t", "bad", ok=False)
    assert_clean_error(result, "exit code: 3")
    assert "last line" in result.stderr and "Dockerfile:3" in result.stderr
    assert re.search(r"#\d+ ERROR: .*exit code: 3", result.out)
    assert_nothing_left(root)


def test_a_symlink_leading_out_of_the_context_is_refused(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    context = write(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nCOPY link /x\n"})
    (context / "link").symlink_to(tmp_path / "outside.txt")
    result = build(based, context, "-t", "bad", ok=False)
    assert_clean_error(result, "outside the build context")
    assert re.search(r"#\d+ ERROR: .*outside the build context", result.out)
    assert "bad:latest" not in dict(Store(root).names())
    assert_nothing_left(root)


def test_add_with_a_wrong_checksum_fails(based: CliRunner, root: Path, tmp_path: Path) -> None:
    served = write(tmp_path / "served", {"file.txt": "payload\n"})

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/file.txt"
        wrong = "sha256:" + "0" * 64
        context = write(tmp_path / "ctx", {"Dockerfile": f"FROM busybox\nADD --checksum={wrong} {url} /f\n"})
        result = build(based, context, "-t", "bad", ok=False)
        assert_clean_error(result, "checksum")
        assert "bad:latest" not in dict(Store(root).names())
        assert_nothing_left(root)
        right = "sha256:" + hashlib.sha256(b"payload\n").hexdigest()
        write(context, {"Dockerfile": f"FROM busybox\nADD --checksum={right} {url} /f\n"})
        build(based, context, "-t", "good")
        assert based("run", "--rm", "good", "cat", "/f").out == "payload\n"
    finally:
        server.shutdown()


def test_missing_dockerfile_and_bad_options(based: CliRunner, tmp_path: Path) -> None:
    context = write(tmp_path / "ctx", {})
    assert_clean_error(build(based, context, ok=False), "Dockerfile")
    write(context, {"Dockerfile": "FROM busybox\n"})
    assert_clean_error(build(based, context, "--secret", "id=x,src=/no/such/file", ok=False), "--secret")
    assert_clean_error(build(based, context, "-t", "Bad Name!", ok=False), "Bad Name!")


def test_from_a_registry_reference_pulls_the_base(
    lazyctr: CliRunner, busybox_tar: Path, root: Path, tmp_path: Path
) -> None:
    from tests.registry.conftest import Registry

    registry = Registry(tmp_path / "registry")
    try:
        publisher = tmp_path / "publisher"
        for argv in (
            ["import", str(busybox_tar), "busybox"],
            ["push", "busybox", f"{registry.address}/lib/busybox:1"],
        ):
            proc = subprocess.run([sys.executable, "-m", "lazyctr.cli", "--root", str(publisher), *argv],
                                  capture_output=True, timeout=300)  # fmt: skip
            assert proc.returncode == 0, proc.stderr.decode()
        context = write(
            tmp_path / "ctx", {"Dockerfile": f"FROM {registry.address}/lib/busybox:1\nRUN echo pulled > /p\n"}
        )
        build(lazyctr, context, "-t", "from-registry")
        assert lazyctr("run", "--rm", "from-registry", "cat", "/p").out == "pulled\n"
        assert f"{registry.address}/lib/busybox:1" in dict(Store(root).names())
    finally:
        registry.stop()


def test_heredocs_users_workdirs_and_per_step_network(based: CliRunner, root: Path, tmp_path: Path) -> None:
    dockerfile = """\
FROM busybox
RUN <<EOF
#!/bin/sh
echo "script as $(id -u)" > /script
EOF
RUN cat <<A > /a && cat <<-B > /b
first
A
	second
	B
COPY <<EOF /etc/app.conf
mode=$MODE
EOF
WORKDIR /srv/app/data
USER nobody
RUN id -u > /tmp/uid
USER root
RUN --network=none ls /sys/class/net > /nets
RUN --mount=type=bind,source=.,target=/ctx,rw echo scribble > /ctx/new && cat /ctx/f > /f
"""
    context = write(tmp_path / "ctx", {"Dockerfile": dockerfile, "f": "from context\n"})
    build(based, context, "-t", "misc", "--network", "host")
    out = based(
        "run", "--rm", "misc", "cat", "/script", "/a", "/b", "/etc/app.conf", "/tmp/uid", "/nets", "/f"
    ).out
    assert out == "script as 0\nfirst\nsecond\nmode=\n65534\nlo\nfrom context\n"
    assert not (context / "new").exists()  # a rw bind's writes are thrown away
    assert based("run", "--rm", "misc", "pwd").out == "/srv/app/data\n"
    listing = based("run", "--rm", "misc", "ls", "-ld", "/srv", "/tmp").out.split("\n")
    assert listing[0].startswith("drwxr-xr-x") and listing[1].startswith("drwxrwxrwt")  # /tmp kept its mode


def test_add_extracts_local_archives_copy_chown_chmod_and_another_dockerfile(
    based: CliRunner, root: Path, tmp_path: Path
) -> None:
    import tarfile

    context = write(tmp_path / "ctx", {"src/tool.sh": "echo tool\n", "notes.txt": "notes\n"})
    with tarfile.open(context / "bundle.tar.gz", "w:gz") as tar:
        tar.add(context / "src" / "tool.sh", arcname="bundle/tool.sh")
    dockerfile = """\
FROM busybox
ADD bundle.tar.gz /opt/
COPY --chown=nobody:nogroup --chmod=0750 src/tool.sh /usr/local/bin/tool
COPY --exclude=**/*.sh . /all/
"""
    write(
        context,
        {"build/Custom.Dockerfile": dockerfile, "build/Custom.Dockerfile.dockerignore": "notes.txt\n"},
    )
    build(based, context, "-f", str(context / "build" / "Custom.Dockerfile"), "-t", "custom")
    script = "cat /opt/bundle/tool.sh; stat -c '%U:%G %a' /usr/local/bin/tool; ls /all /all/src"
    out = based("run", "--rm", "custom", "sh", "-c", script).out
    lines = out.split("\n")
    assert lines[0] == "echo tool" and lines[1] == "nobody:nogroup 750"
    assert "notes.txt" not in out and "tool.sh" not in "\n".join(lines[2:]) and "bundle.tar.gz" in out


def test_a_run_that_replaces_a_directory_gives_an_opaque_whiteout(based: CliRunner, tmp_path: Path) -> None:
    # Not /etc: RUN sees the host's /etc/hosts and /etc/resolv.conf bound there, as with BuildKit.
    dockerfile = "FROM busybox\nRUN rm -rf /usr && mkdir /usr && echo only > /usr/only && rm /bin/vi\n"
    build(based, write(tmp_path / "ctx", {"Dockerfile": dockerfile}), "-t", "opaque")
    assert based("run", "--rm", "opaque", "ls", "/usr").out == "only\n"
    assert based("run", "--rm", "opaque", "sh", "-c", "test -e /bin/vi || echo gone").out == "gone\n"
