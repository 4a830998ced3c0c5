"""Per-container memory of what supervises a detached container: lazyctr's supervisor against podman's
conmon, with 1 and 8 busybox containers running `sleep` (`python -m benchmarks.supervisor`, as root).

Neither has a daemon: a detached lazyctr container is watched by a forked lazyctr process (its state,
log, exit status, restart policy; runtime/supervise.py), a podman container by one conmon (a small C
program; podman itself exits). So the whole per-container overhead is that process. For each we read
`/proc/PID/smaps_rollup`: RSS counts every page the process maps, PSS divides the pages it shares (the
Python interpreter and its libraries, for us) among the processes sharing them: PSS summed over the
supervisors is what N containers cost the machine, and it is the figure compared (ratio to conmon).

podman runs with the configuration benchmarks/peers/podman.py gives it (runc, cgroupfs, its own
storage, lower default ulimits), in a private mount namespace where /var/lib and /var/tmp are empty.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path

from benchmarks.common import (
    CACHE,
    BenchError,
    isolate_var,
    lazyctr,
    run_main,
    unmount_under,
    unwind_on_sigterm,
)
from benchmarks.peers.podman import RUNROOT_PARENT, podman_environment
from builder.rootfs import busybox_tarball
from runtime.state import ContainerState, containers_dir

KiB = 1024
MiB = 1024 * 1024
COMMAND = ("sleep", "3600")


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of process `pid` in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * KiB
    return values["Rss"], values["Pss"]


def lazyctr_supervisors(work: Path, tarball: Path, count: int) -> Generator[list[int], None, None]:
    """The supervisors' PIDs of `count` detached containers (removed when the generator is closed)."""
    root = work / "lazyctr-root"
    lazyctr(root, "import", str(tarball), "lzl-busybox")
    ids = []
    try:
        for _ in range(count):
            ids.append(lazyctr(root, "run", "-d", "lzl-busybox", *COMMAND).strip())
        yield [ContainerState.load(containers_dir(root) / i).supervisor for i in ids]
    finally:
        for i in ids:
            with contextlib.suppress(RuntimeError):
                lazyctr(root, "rm", "-f", i)
        unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)


def podman_conmons(work: Path, tarball: Path, count: int) -> Generator[list[int], None, None]:
    """conmon's PIDs of `count` detached podman containers (removed when the generator is closed)."""
    base = work / "podman"
    runroot = Path(tempfile.mkdtemp(prefix="lzl-podman-", dir=RUNROOT_PARENT))  # short: see peers/podman.py
    env = podman_environment(base, runroot)

    def podman(*args: str) -> str:
        proc = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BenchError(f"podman {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
        return proc.stdout

    try:
        podman("import", "--quiet", str(tarball), "lzl-busybox:1")
        ids = [
            podman("run", "-d", "--network", "none", "lzl-busybox:1", *COMMAND).strip() for _ in range(count)
        ]
        yield [int(podman("inspect", "--format", "{{.State.ConmonPid}}", i)) for i in ids]
    finally:
        with contextlib.suppress(BenchError, subprocess.TimeoutExpired):
            podman("rm", "--force", "--time", "0", "--all")
            podman("rmi", "--all", "--force")
        for directory in (base, runroot):
            unmount_under(directory)
            shutil.rmtree(directory, ignore_errors=True)


def measure(pids: list[int]) -> dict[str, float]:
    """Per-container RSS and PSS in MiB (the mean over the supervisors), and their PSS summed."""
    rss, pss = zip(*(memory_of(pid) for pid in pids), strict=True)
    return {
        "rss_mib": sum(rss) / len(pids) / MiB,
        "pss_mib": sum(pss) / len(pids) / MiB,
        "pss_total_mib": sum(pss) / MiB,
    }


def run(counts: list[int]) -> list[dict[str, float | int | str]]:
    if shutil.which("podman") is None or shutil.which("runc") is None:
        raise BenchError("podman and runc must be installed (apt-get install podman runc)")
    rows: list[dict[str, float | int | str]] = []
    work = Path(tempfile.mkdtemp(prefix="lzl-supervisor-", dir=CACHE if CACHE.is_dir() else None))
    try:
        print(isolate_var(work, ["/var/lib", "/var/tmp"]), flush=True)
        tarball = work / "busybox.tar"
        busybox_tarball(tarball)
        for count in counts:
            for name, supervisors in (("lazyctr", lazyctr_supervisors), ("conmon", podman_conmons)):
                generator = supervisors(work, tarball, count)
                try:
                    rows.append({"supervisor": name, "containers": count, **measure(next(generator))})
                finally:
                    generator.close()
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def report(rows: list[dict[str, float | int | str]]) -> str:
    lines = [
        f"{'supervisor':<12}{'containers':>11}{'RSS/container':>15}{'PSS/container':>15}{'PSS total':>12}"
    ]
    for row in rows:
        lines.append(
            f"{row['supervisor']:<12}{row['containers']:>11}{row['rss_mib']:>12.2f}MiB"
            f"{row['pss_mib']:>12.2f}MiB{row['pss_total_mib']:>9.2f}MiB"
        )
    by = {(row["supervisor"], row["containers"]): row for row in rows}
    for count in sorted({int(row["containers"]) for row in rows}):
        ours, theirs = by[("lazyctr", count)], by[("conmon", count)]
        pss = float(ours["pss_mib"]) / float(theirs["pss_mib"])
        rss = float(ours["rss_mib"]) / float(theirs["rss_mib"])
        lines.append(
            f"{count} container(s): lazyctr's supervisor uses {pss:.1f}x conmon's PSS per container"
            f" ({rss:.1f}x its RSS)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--counts", default="1,8", help="comma-separated numbers of containers (default: 1,8)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    try:
        counts = [int(text) for text in args.counts.split(",")]
        if any(count < 1 for count in counts):
            raise ValueError
    except ValueError:
        sys.exit(f"supervisor: --counts takes positive numbers, not {args.counts!r}")
    unwind_on_sigterm()
    try:
        rows = run(counts)
    except BenchError as e:
        sys.exit(f"supervisor: {e}")
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    run_main(main)
