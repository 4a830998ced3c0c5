"""A lazy start with and without `lazyctr service`: CPU and wall time of `pull`, then `run --rm`.

busybox (the `lazyctr rootfs busybox` base) is pushed to `lazyctr serve` on 127.0.0.1; each sample
starts from a fresh, empty --root: `lazyctr pull` (lazy), then `lazyctr run --rm --driver lazy IMG
true`. With the service, `lazyctr service` runs on that root, loaded before the sample (its own
start is not counted, as a node's resident engine). The CPU of everything a sample runs (the CLI,
the mount daemon, the service's request children, the container) is a cpuacct cgroup's (v1). The
two ways alternate, round by round, so the machine's drift falls on both; medians and the ratio.

Usage: python -m benchmarks.service [--runs N] [--cache DIR]. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.common import (
    CACHE,
    base_tarball,
    compile_sources,
    free_port,
    lazyctr,
    rotating_rounds,
    serving,
    shielded,
    stop,
    unmount_under,
)
from lazyfs.service import ask_alive, socket_path

WAYS = ("alone", "service")
IMAGE = "bench/service:1"
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
JOIN = 'echo $$ > "$0/cgroup.procs"; exec "$@"'


@contextmanager
def cpu_group() -> Iterator[Path]:
    """A cpuacct cgroup of our own; removed after (its processes are gone by then)."""
    path = CPUACCT / f"lazyctr-bench-service-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        with shielded():
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def in_group(group: Path, argv: list[str]) -> list[str]:
    return ["sh", "-c", JOIN, str(group), *argv]


def cli(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "lazyctr.cli", "--root", str(root), *args]


def timed(group: Path, argv: list[str]) -> tuple[float, float]:
    """(CPU seconds of the group, wall seconds) of running `argv` in it; the group's count starts at 0."""
    (group / "cpuacct.usage").write_text("0\n")
    started = time.monotonic()
    proc = subprocess.run(in_group(group, argv), capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:6])} failed ({proc.returncode}): {proc.stderr.strip()}")
    return int((group / "cpuacct.usage").read_text()) / 1e9, wall


def sample(way: str, ref: str, work: Path, group: Path) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="root-", dir=work))
    service = None
    try:
        if way == "service":
            service = subprocess.Popen(in_group(group, cli(root, "service")), stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while not ask_alive(socket_path(root)):
                if service.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("lazyctr service did not come up")
                time.sleep(0.05)
        pull_cpu, pull_s = timed(group, cli(root, "pull", ref))
        run_cpu, run_s = timed(
            group, cli(root, "run", "--rm", "--network", "none", "--driver", "lazy", ref, "true")
        )
        return {"pull_cpu": pull_cpu, "pull_s": pull_s, "run_cpu": run_cpu, "run_s": run_s}
    finally:
        with shielded():
            if service is not None:
                stop(service)
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=CACHE)
    args = parser.parse_args()
    if args.runs < 1:
        sys.exit("--runs must be at least 1")
    if os.geteuid() != 0:
        sys.exit("benchmarks.service needs root (FUSE mounts, cgroups, /run/lazyctr)")
    compile_sources()
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="service-", dir=args.cache))
    samples: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    try:
        publisher = work / "publisher"
        tarball = base_tarball("busybox", publisher)
        address = f"127.0.0.1:{free_port()}"
        ref = f"{address}/{IMAGE}"
        with serving(work / "registry", address, log=work / "registry.log"), cpu_group() as group:
            lazyctr(publisher, "import", str(tarball), ref)
            lazyctr(publisher, "push", ref)
            for _, way in rotating_rounds(WAYS, args.runs, lambda _: True):
                samples[way].append(sample(way, ref, work, group))
    finally:
        with shielded():
            unmount_under(work)
            shutil.rmtree(work, ignore_errors=True)
    print(report(samples))


FIGURES = ("pull_cpu", "pull_s", "run_cpu", "run_s")


def report(samples: dict[str, list[dict[str, float]]]) -> str:
    """Medians per way (CPU seconds and wall seconds), and the service's over the CLI's own."""
    medians = {way: [statistics.median(s[k] for s in samples[way]) for k in FIGURES] for way in WAYS}
    ratios = [s / a for s, a in zip(medians["service"], medians["alone"], strict=True)]
    lines = [row("medians", ["pull CPU s", "pull s", "run CPU s", "run s"])]
    lines += [row(way, [f"{v:.3f}" for v in medians[way]]) for way in WAYS]
    lines.append(row("ratio", [f"{r:.2f}x" for r in ratios]))
    return "\n".join(lines)


def row(head: str, cells: list[str]) -> str:
    return f"{head:10}" + "".join(f"{cell:>12}" for cell in cells)


if __name__ == "__main__":
    main()
