"""Startup benchmark: `lazyctr run --rm busybox true` against podman and runc, measured in the same run.

Times the whole command, from exec to exit, for:
  - lazyctr: a private store (--root) holding busybox imported from `lazyctr rootfs busybox`;
  - podman: the same image (exported by lazyctr, pulled from an OCI layout) in private storage;
  - runc: an OCI bundle from `runc spec` whose rootfs is the same tarball, extracted;
  - and, for reference, `lazyctr --help`: what starting Python and our CLI costs before any container;
  - with --baseline DIR, lazyctr from the checkout DIR too (say, main's), on the same store: a
    change's before and after in one run.
Each tool gets one untimed check run (for lazyctr it extracts the layer; a peer that fails it is
skipped with the reason) and --warmup untimed runs; then the timed runs go round-robin, in a rotating
order, so that drift in the machine's load falls on every tool alike.
After the timed rounds, one more untimed run of each lazyctr measures its memory: the peak of the
summed RSS (and PSS, which shares a page among the processes mapping it) of the processes of its
session, sampled every few ms.
Usage: python -m benchmarks.startup [--runs N] [--warmup K] [--baseline DIR]. Needs root. Everything
lives in one temporary directory, removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from benchmarks.common import (
    Unavailable,
    compile_sources,
    isolate_var,
    lazyctr_executable,
    rotating_rounds,
    run_main,
    run_quietly,
    stderr_tail,
    workspace,
)
from benchmarks.peers.podman import podman_environment

IMAGE = "busybox"
COMMAND = "true"
RUN_TIMEOUT = 60


class Interruptions:
    """Ctrl-C and SIGTERM, held back while a container starts.

    A podman killed between creating its container and starting it leaves conmon and `runc init`
    behind, which `podman rm` then does not find; so a run (well under a second) is let finish and
    the signal acts after it. The tools run in sessions of their own, so Ctrl-C reaches only us.
    """

    def __init__(self) -> None:
        self.holding = False
        self.pending = 0
        self.stopping = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return  # the cleanup is under way: a second signal must not cut it short
        if self.holding:
            self.pending = signum
        else:
            self.stop(signum)

    def stop(self, signum: int) -> None:
        self.stopping = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    @contextmanager
    def held(self) -> Iterator[None]:
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
        if self.pending:
            self.stop(self.pending)


INTERRUPTIONS = Interruptions()


@dataclass
class Contender:
    """One tool under test: how to start the N-th container, and what it does on the way."""

    name: str
    does: str
    argv: Callable[[int], list[str]]
    env: dict[str, str] | None = None
    cwd: Path | None = None
    after: Callable[[int], None] | None = None  # untimed cleanup after each run
    teardown: Callable[[], None] | None = None  # stops what an interrupted run left behind
    peer: bool = True  # False for a reference figure that is not a container tool
    metered: bool = False  # measure its memory in one more run
    times: list[float] = field(default_factory=list)
    memory: tuple[int, int] | None = None  # peak summed (RSS, PSS) of its processes, bytes
    skipped: str = ""

    def start(self, n: int, stderr: int) -> subprocess.Popen[bytes]:
        """The N-th run, started in a session of its own (Ctrl-C reaches only us)."""
        return subprocess.Popen(
            self.argv(n),
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )

    def run(self, n: int) -> float:
        """Wall time of one run, from exec to exit; raises Unavailable when the run fails."""
        argv = self.argv(n)
        with INTERRUPTIONS.held():
            start = time.perf_counter()
            try:
                with self.start(n, subprocess.PIPE) as proc:
                    try:
                        _, errors = proc.communicate(timeout=RUN_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        raise
            except (OSError, subprocess.TimeoutExpired) as e:
                raise Unavailable(f"{argv[0]}: {e}") from None
            elapsed = time.perf_counter() - start
            if self.after is not None:
                self.after(n)
        if proc.returncode != 0:
            raise Unavailable(f"`{' '.join(argv)}` exited {proc.returncode}: {stderr_tail(errors)}")
        return elapsed

    def measure_memory(self) -> None:
        """One more run, its session's processes sampled: the peak of their summed RSS and PSS."""
        with INTERRUPTIONS.held():
            proc = self.start(-100, subprocess.DEVNULL)
            peak_rss = peak_pss = 0
            while proc.poll() is None:
                rss, pss = session_memory(proc.pid)
                peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
                time.sleep(0.002)
            if self.after is not None:
                self.after(-100)
        if proc.returncode == 0:
            self.memory = (peak_rss, peak_pss)


def session_memory(session: int) -> tuple[int, int]:
    """Summed RSS and PSS of the processes of `session`, bytes."""
    rss = pss = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[3]) != session:  # field 6, after the command's name
                continue
            for line in Path(entry.path, "smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kib = int(line.split()[1]) * 1024
                    rss, pss = (rss + kib, pss) if line.startswith("Rss:") else (rss, pss + kib)
    return rss, pss


def setup_lazyctr(base: Path, rootfs: Path, baseline: Path | None) -> list[Contender]:
    exe = lazyctr_executable()
    root = base / "lazyctr-root"
    run_quietly([exe, "--root", str(root), "import", str(rootfs), IMAGE])
    does = (
        "Python CLI; overlay root on the extracted layer; new mount/UTS/IPC/net/PID namespaces, lo up;"
        " a cgroup per container"
    )
    run = Contender(
        name="lazyctr",
        does=does,
        argv=lambda _: [exe, "--root", str(root), "run", "--rm", "--network", "none", IMAGE, COMMAND],
        metered=True,
    )
    contenders = [run]
    if baseline is not None:
        contenders.append(
            Contender(
                name="baseline",
                does=f"lazyctr from {baseline}, the same store and command",
                argv=run.argv,
                env={**os.environ, "PYTHONPATH": str(baseline)},
                cwd=baseline,
                peer=False,
                metered=True,
            )
        )
    cli = Contender(
        name="cli only",
        does="`lazyctr --help`: the interpreter's start and the CLI's imports, no container: "
        "the floor under lazyctr's figure",
        argv=lambda _: [exe, "--help"],
        peer=False,
    )
    return [*contenders, cli]


def setup_podman(base: Path) -> Contender:
    if shutil.which("podman") is None:
        raise Unavailable("podman is not installed")
    home = base / "podman"
    env = podman_environment(home, home / "run")
    # podman names an image pulled from oci:PATH after PATH (and refuses capitals), so the layout
    # is pulled by the relative path "busybox" and becomes localhost/busybox.
    run_quietly(
        [lazyctr_executable(), "--root", str(base / "lazyctr-root"), "export", IMAGE, f"oci:{home}/{IMAGE}"]
    )
    run_quietly(["podman", "pull", "--quiet", f"oci:{IMAGE}"], env=env, cwd=home)

    def remove_containers() -> None:
        # A podman killed mid-run leaves conmon and `runc init` waiting, and their cgroups.
        subprocess.run(
            ["podman", "rm", "--all", "--force", "--time", "0"],
            env=env,
            capture_output=True,
            timeout=RUN_TIMEOUT,
        )

    return Contender(
        name="podman",
        does="--network none: new net namespace with lo only; overlay storage; runc via conmon; "
        "cgroupfs; events to a file",
        argv=lambda _: ["podman", "run", "--rm", "--network", "none", f"localhost/{IMAGE}", COMMAND],
        env=env,
        teardown=remove_containers,
    )


def setup_runc(base: Path, rootfs: Path) -> Contender:
    if shutil.which("runc") is None:
        raise Unavailable("runc is not installed")
    bundle = base / "runc-bundle"
    state = base / "runc-state"
    (bundle / "rootfs").mkdir(parents=True)
    with tarfile.open(rootfs) as tar:
        tar.extractall(bundle / "rootfs", filter="tar")
    run_quietly(["runc", "spec", "--bundle", str(bundle)])
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = [COMMAND]
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config, indent=2))

    def delete(n: int) -> None:
        # `runc run` deletes the container when it exits; this catches one that did not.
        subprocess.run(
            ["runc", "--root", str(state), "delete", "--force", f"startup-{n}"],
            capture_output=True,
            timeout=RUN_TIMEOUT,
        )

    def delete_all() -> None:
        listed = subprocess.run(
            ["runc", "--root", str(state), "list", "--quiet"], capture_output=True, timeout=RUN_TIMEOUT
        )
        for container in listed.stdout.decode().split():
            subprocess.run(
                ["runc", "--root", str(state), "delete", "--force", container],
                capture_output=True,
                timeout=RUN_TIMEOUT,
            )

    return Contender(
        name="runc",
        does="runc spec defaults: new mount/UTS/IPC/net/PID namespaces, lo down; read-only bind of a "
        "plain extracted dir (no image store, no overlay); a cgroup per container",
        argv=lambda n: ["runc", "--root", str(state), "run", "--bundle", str(bundle), f"startup-{n}"],
        after=delete,
        teardown=delete_all,
    )


@contextmanager
def interruptible_workspace() -> Iterator[Path]:
    """A temporary directory, removed on the way out: after an error, Ctrl-C or SIGTERM too."""
    previous = {sig: signal.signal(sig, INTERRUPTIONS.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with workspace("lazyctr-startup-") as base:
            yield base
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def measure(contenders: list[Contender], runs: int, warmup: int) -> None:
    """One check run and `warmup` untimed runs per tool, then `runs` timed rounds in rotating order."""
    for c in contenders:
        for i in range(1 + warmup):
            try:
                c.run(-1 - i)
            except Unavailable as e:
                c.skipped = f"{'check' if i == 0 else 'warmup'} run failed: {e}"
                break
    for n, c in rotating_rounds(contenders, runs, lambda c: not c.skipped):
        try:
            c.times.append(c.run(n))
        except Unavailable as e:
            c.skipped = f"timed run {n} failed: {e}"
    for c in contenders:
        if c.metered and not c.skipped:
            c.measure_memory()


@dataclass(frozen=True)
class Summary:
    median: float
    p10: float
    p90: float


def summarize(times: list[float]) -> Summary:
    if len(times) < 2:
        return Summary(times[0], times[0], times[0])
    deciles = statistics.quantiles(times, n=10, method="inclusive")
    return Summary(statistics.median(times), deciles[0], deciles[-1])


def report(contenders: list[Contender], runs: int, warmup: int, isolation: str) -> int:
    load = os.getloadavg()
    print(
        f"{IMAGE} `{COMMAND}`: {runs} timed runs per tool, round-robin,"
        f" after 1 check run and {warmup} warmup(s)"
    )
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}:"
        " noisy, compare ratios rather than absolute times"
    )
    print(f"podman's host paths: {isolation}")
    for c in contenders:
        if not c.skipped:
            print(f"  {c.name}: {c.does}")
    done = {c.name: summarize(c.times) for c in contenders if not c.skipped}
    peers = {c.name: c.peer for c in contenders}
    for c in contenders:
        if c.skipped:
            print(f"SKIP {c.name}: {c.skipped}")
    if not done:
        return 1
    base = done.get("lazyctr")
    print()
    print(f"{'tool':<8} {'median ms':>10} {'p10 ms':>8} {'p90 ms':>8} {'x lazyctr':>10}")
    for name, s in done.items():
        ratio = f"{s.median / base.median:.2f}" if base else "-"
        print(f"{name:<8} {s.median * 1e3:>10.1f} {s.p10 * 1e3:>8.1f} {s.p90 * 1e3:>8.1f} {ratio:>10}")
    if base is None:
        return 1
    metered = [c for c in contenders if c.memory is not None]
    if metered:
        print()
        print(f"{'memory':<8} {'peak summed RSS MB':>19} {'peak summed PSS MB':>19}  (one untimed run)")
        for c in metered:
            assert c.memory is not None
            print(f"{c.name:<8} {c.memory[0] / 1e6:>19.1f} {c.memory[1] / 1e6:>19.1f}")
    print()
    ours = {name: s for name, s in done.items() if name in ("lazyctr", "baseline")}
    for name, s in done.items():
        if name in ours or not peers[name]:
            continue
        for mine, m in ours.items():
            verdict = "faster" if m.median < s.median else "slower"
            factor = max(s.median / m.median, m.median / s.median)
            print(f"{mine} vs {name}: {m.median / s.median:.2f}x its median time ({factor:.2f}x {verdict})")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per tool (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per tool after the check run")
    parser.add_argument(
        "--baseline", type=Path, help="also time lazyctr from this checkout (e.g. main's worktree)"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    if args.baseline is not None and not (args.baseline / "lazyctr" / "cli.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a lazyctr checkout (no lazyctr/cli.py)")
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
    compile_sources()
    if os.geteuid() != 0:
        sys.exit("startup.py needs root (namespaces, mounts, runc and podman as root)")

    with interruptible_workspace() as base:
        isolation = isolate_var(base, ("/var/lib", "/var/tmp", "/run/runc"))
        rootfs = base / f"{IMAGE}.tar"
        print(f"setting up in {base} ...", flush=True)
        contenders: list[Contender] = []
        try:
            try:
                run_quietly([lazyctr_executable(), "rootfs", IMAGE, str(rootfs)])
                contenders.extend(setup_lazyctr(base, rootfs, args.baseline))
            except Unavailable as e:
                sys.exit(f"cannot set up lazyctr: {e}")
            skipped: list[Contender] = []
            peers: list[tuple[str, Callable[[], Contender]]] = [
                ("podman", lambda: setup_podman(base)),
                ("runc", lambda: setup_runc(base, rootfs)),
            ]
            for name, setup in peers:
                try:
                    contenders.append(setup())
                except Unavailable as e:
                    skipped.append(
                        Contender(name=name, does="-", argv=lambda _: [], skipped=f"setup failed: {e}")
                    )
            measure(contenders, args.runs, args.warmup)
            status = report(contenders + skipped, args.runs, args.warmup, isolation)
        finally:
            INTERRUPTIONS.stopping = True  # a signal now must not cut the cleanup short
            for c in contenders:
                if c.teardown is not None:
                    with suppress(OSError, subprocess.SubprocessError):
                        c.teardown()
    sys.exit(status)


if __name__ == "__main__":
    run_main(main)
