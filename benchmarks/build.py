"""Build benchmark: `lazyctr build` against `buildah bud`, the same Dockerfiles, cold and fully cached.

Two Dockerfiles on busybox (made by `lazyctr rootfs busybox`, given to buildah through an OCI layout):
  - app: a multi-stage build that copies a context of 300 small files and one of 4 MiB, runs over
    it, and copies the result into a second stage;
  - steps: eight small RUN steps with ENV and LABEL between them.
Each is built `cold` (--no-cache: every step runs, the base image is already there) and `cached`
(nothing changed since the last build: every step comes from the cache). One untimed check build
per tool and case, then the timed builds go round-robin in rotating order, so that drift in the
machine's load falls on both tools alike.
Usage: python -m benchmarks.build [--runs N]. Needs root. Everything lives in one temporary
directory (buildah's storage too), removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import (
    Unavailable,
    isolate_var,
    lazyctr_executable,
    rotating_rounds,
    run_main,
    run_quietly,
    stderr_tail,
    workspace,
)

BUILD_TIMEOUT = 600

APP = """\
FROM busybox AS build
WORKDIR /src
COPY . .
RUN find . -type f | sort | xargs cat | sha256sum > /digest && tar cf /src.tar .

FROM busybox
COPY --from=build /digest /src.tar /out/
RUN ls -l /out > /out/listing
ENV MODE=bench
CMD ["cat", "/out/digest"]
"""

STEPS = "FROM busybox\n" + "".join(
    f"RUN echo step {n} > /step{n}\nENV STEP={n}\n" + (f"LABEL step{n}=yes\n" if n % 2 else "")
    for n in range(8)
)


@dataclass
class Tool:
    name: str
    does: str
    argv: Callable[[str, bool], list[str]]  # (case, cold) -> the build command
    env: dict[str, str] | None = None
    skipped: str = ""
    times: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def build(self, case: str, cold: bool) -> float:
        start = time.perf_counter()
        proc = subprocess.run(self.argv(case, cold), env=self.env, capture_output=True, timeout=BUILD_TIMEOUT)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise Unavailable(f"{case} build exited {proc.returncode}: {stderr_tail(proc.stderr)}")
        return elapsed


def make_contexts(base: Path) -> dict[str, Path]:
    rng = random.Random(7)  # the same context every run
    app = base / "ctx-app"
    for i in range(300):
        path = app / f"pkg{i % 10}" / f"file{i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randrange(200, 8000)))
    (app / "big.bin").write_bytes(rng.randbytes(4 << 20))
    (app / "Dockerfile").write_text(APP)
    steps = base / "ctx-steps"
    steps.mkdir()
    (steps / "Dockerfile").write_text(STEPS)
    return {"app": app, "steps": steps}


def setup_lazyctr(base: Path, rootfs: Path, contexts: dict[str, Path]) -> Tool:
    root = base / "lazyctr-root"
    exe = lazyctr_executable()
    run_quietly([exe, "--root", str(root), "import", str(rootfs), "busybox"])

    def argv(case: str, cold: bool) -> list[str]:
        return [exe, "--root", str(root), "build", "--progress", "plain", "-t", f"bench-{case}",
                *(["--no-cache"] if cold else []), str(contexts[case])]  # fmt: skip

    return Tool("lazyctr", "overlay steps in our runtime, host network, zstd:chunked layers", argv)


def setup_buildah(base: Path, contexts: dict[str, Path]) -> Tool:
    if shutil.which("buildah") is None:
        raise Unavailable("buildah is not installed")
    home = base / "buildah"
    tmp = home / "tmp"
    tmp.mkdir(parents=True)
    storage_conf = home / "storage.conf"
    storage_conf.write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{home}/run"\ngraphroot = "{home}/storage"\n'
    )
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(storage_conf), TMPDIR=str(tmp), BUILDAH_LAYERS="true")
    root = base / "lazyctr-root"
    run_quietly([lazyctr_executable(), "--root", str(root), "export", "busybox", f"oci:{home}/busybox"])
    # buildah names an image pulled from oci:PATH after PATH: pulled as "busybox", it is localhost/busybox.
    run_quietly(["buildah", "pull", "--quiet", "oci:busybox"], env=env, cwd=home)

    def argv(case: str, cold: bool) -> list[str]:
        context = contexts[case]
        return ["buildah", "bud", "--quiet", "--isolation", "chroot", "--layers", "--network", "host",
                *(["--no-cache"] if cold else []), "-t", f"bench-{case}", "-f", str(context / "Dockerfile"),
                str(context)]  # fmt: skip

    return Tool("buildah", "--isolation chroot, --layers, overlay storage, uncompressed layers", argv, env)


CASES = [(case, mode) for case in ("app", "steps") for mode in ("cold", "cached")]


def measure(tools: list[Tool], runs: int) -> None:
    for tool in tools:
        for case, mode in CASES:
            try:
                tool.build(case, mode == "cold")  # check run; for `cached`, it fills the cache
            except Unavailable as e:
                tool.skipped = f"check build failed: {e}"
                break
    for n, tool in rotating_rounds(tools, runs, lambda t: not t.skipped):
        for case, mode in CASES:
            try:
                tool.times.setdefault((case, mode), []).append(tool.build(case, mode == "cold"))
            except Unavailable as e:
                tool.skipped = f"timed build {n} failed: {e}"
                break


def report(tools: list[Tool], runs: int, isolation: str) -> int:
    load = os.getloadavg()
    print(f"{runs} timed builds per tool and case, round-robin, after one check build each")
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}:"
          " noisy, compare ratios rather than absolute times")  # fmt: skip
    print(f"buildah's host paths: {isolation}")
    for tool in tools:
        print(f"  {tool.name}: {('SKIP ' + tool.skipped) if tool.skipped else tool.does}")
    done = [t for t in tools if not t.skipped]
    if not done:
        return 1
    print()
    print(f"{'case':<14}" + "".join(f"{t.name + ' s':>14}" for t in done) + f"{'buildah/lazyctr':>18}")
    by_name = {t.name: t for t in done}
    for case, mode in CASES:
        medians = {t.name: statistics.median(t.times[(case, mode)]) for t in done}
        ratio = ""
        if "lazyctr" in medians and "buildah" in medians:
            ratio = f"{medians['buildah'] / medians['lazyctr']:.2f}x"
        cells = "".join(f"{medians[t.name]:>14.3f}" for t in done)
        print(f"{case + ' ' + mode:<14}{cells}{ratio:>18}")
    if "lazyctr" in by_name and "buildah" in by_name:
        print()
        print("buildah/lazyctr > 1: lazyctr is faster by that factor; < 1: slower")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed builds per tool and case (default 5)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        sys.exit("build.py needs root (RUN steps in containers, buildah as root)")
    with workspace("lazyctr-build-bench-") as base:
        isolation = isolate_var(base, ("/var/lib", "/var/tmp"))
        print(f"setting up in {base} ...", flush=True)
        rootfs = base / "busybox.tar"
        contexts = make_contexts(base)
        tools: list[Tool] = []
        try:
            run_quietly([lazyctr_executable(), "rootfs", "busybox", str(rootfs)])
            tools.append(setup_lazyctr(base, rootfs, contexts))
        except Unavailable as e:
            sys.exit(f"cannot set up lazyctr: {e}")
        try:
            tools.append(setup_buildah(base, contexts))
        except Unavailable as e:
            tools.append(Tool("buildah", "-", lambda _c, _k: [], skipped=f"setup failed: {e}"))
        measure(tools, args.runs)
        status = report(tools, args.runs, isolation)
    sys.exit(status)


if __name__ == "__main__":
    run_main(main)
