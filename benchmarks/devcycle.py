"""The development cycle of `lazyctr bench hello` (Slacker's: edit, build, push, pull, run to ready).

For each dev image the suite published (flask, gcc, openjdk, python, in that order), once:
- one edit: a line appended to its source (flask's app.py, gcc's hello.c, openjdk's Hello.java); the
  python image has no source of its own, so an ENV line is appended to its Dockerfile (a new config,
  the same layers);
- build in the publisher store as `bench/NAME:dev` (cached steps stay cached);
- push over the link into the image's own repository, `bench/NAME:dev`, beside `bench/NAME:1` whose
  profile a lazy run recorded: the push derives the new version's profile from it (lazyfs.lineage)
  and sends it along as a referrer (its line is kept in the results);
- from a cold client each: pull + run to ready lazily (the inherited profile prefetched), eagerly
  (`pull --eager`, overlay), and then lazily with the new version's own profile (one lazy run of it
  recorded and pushed first, untimed): the yardstick the inherited profile is held to. The lazy
  halves run with `lazyctr service` resident on the client (up before the clock starts, as a node's
  engine is, and as stargz-snapshotter's daemon is for its peer); page caches are dropped after it
  came up.
The cycle's time is build + push + pull + run to ready.

`lazyctr bench hello` runs one cycle per dev image after its suite. Alone:
python -m benchmarks.devcycle [--images flask,gcc,openjdk,python] [--runs N] [--link 100mbit/20ms]
[--out bench-results/devcycle]: the images' first versions go up beside the registry (untimed), each
gets its profile from one recorded lazy run over the link, then N rounds of the cycle, the images
in turn. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CACHE,
    cold_root,
    compile_sources,
    drop_caches,
    lazyctr,
    received,
    resident_service,
    run_main,
    serving,
    unwind_on_sigterm,
    workspace,
)
from benchmarks.link import Link, parse_link_spec, shaped_link_of

# The dev images, in the order they are measured, and the file an edit touches.
DEV_SOURCES = {"flask": "app.py", "gcc": "hello.c", "openjdk": "Hello.java", "python": "Dockerfile"}
# The halves of a cycle: label, `pull` options, run driver (lazy: with the client's service resident).
HALVES: tuple[tuple[str, list[str], str], ...] = (
    ("lazy", [], "lazy"),
    ("eager", ["--eager"], "overlay"),
    ("lazy_own", [], "lazy"),
)
INHERITED = "access profile inherited from "


def edit(context: Path, source: str) -> None:
    """One developer's edit of `source` in the build context: a line appended."""
    stamp = datetime.now(UTC).isoformat()
    with open(context / source, "a") as f:
        if source == "Dockerfile":
            f.write(f"\nENV EDITED={stamp}\n")
        else:
            f.write(f"\n{'//' if source.endswith(('.c', '.java')) else '#'} edited at {stamp}\n")


def development_cycle(
    link: Link, address: str, publisher: Path, work: Path, name: str, images_dir: Path, run_timeout: float
) -> dict[str, Any]:
    """One edit of `name`'s source, then build, push, and a pull and run per half (see the docstring)."""
    source = DEV_SOURCES[name]
    context = Path(tempfile.mkdtemp(prefix="dev-", dir=work))
    try:
        shutil.copytree(images_dir / name, context, dirs_exist_ok=True)
        edit(context, source)
        tag, ref = f"bench/{name}:dev", f"{address}/bench/{name}:dev"
        started = time.monotonic()
        lazyctr(publisher, "build", "--progress", "plain", "-t", tag, str(context))
        built = time.monotonic()
        pushed_out = lazyctr(
            publisher, "push", "--insecure", "--progress", "plain", tag, ref, netns=link.client_ns
        )
        pushed = time.monotonic()
        inherited = next((line for line in pushed_out.splitlines() if line.startswith(INHERITED)), None)
        cycle: dict[str, Any] = {
            "image": name,
            "edited": source,
            "build_s": built - started,
            "push_s": pushed - built,
            "inherited": inherited,
        }
        for label, options, driver in HALVES:
            if label == "lazy_own":
                try:
                    record_own_profile(link, work, ref, run_timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    cycle[label] = {"error": _last_line(e)}
                    continue
            cycle[label] = _half(link, work, ref, options, driver, run_timeout)
            if "error" not in cycle[label]:
                cycle[label]["total_s"] = cycle["build_s"] + cycle["push_s"] + cycle[label]["ready_s"]
        return cycle
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _half(
    link: Link, work: Path, ref: str, options: list[str], driver: str, run_timeout: float
) -> dict[str, Any]:
    """Pull and run `ref` to ready from a cold client: its times and bytes, or its error."""
    with cold_root(work) as root, _engine(root, link, driver):
        drop_caches()
        before = received(link)
        t0 = time.monotonic()
        try:
            lazyctr(root, "pull", "--insecure", *options, ref, netns=link.client_ns)
            t1 = time.monotonic()
            lazyctr(root, "run", "--rm", "--driver", driver, ref, netns=link.client_ns, timeout=run_timeout)
            t2 = time.monotonic()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            return {"error": _last_line(e)}
        return {"pull_s": t1 - t0, "run_s": t2 - t1, "ready_s": t2 - t0, "bytes": received(link) - before}


def _engine(root: Path, link: Link, driver: str) -> contextlib.AbstractContextManager[None]:
    """The client's resident service for a lazy half; nothing for an eager one."""
    return resident_service(root, link.client_ns) if driver == "lazy" else contextlib.nullcontext()


def record_own_profile(link: Link, work: Path, ref: str, run_timeout: float) -> None:
    """One lazy run of `ref` recorded as its own profile, pushed back to `ref` (untimed)."""
    with cold_root(work) as recorder:
        ns = link.client_ns
        lazyctr(recorder, "pull", "--insecure", ref, netns=ns)
        lazyctr(recorder, "run", "--rm", "--record-profile", ref, netns=ns, timeout=run_timeout)
        lazyctr(recorder, "push", "--insecure", "--progress", "plain", ref, ref, netns=ns)


def _last_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1][:300] if text else repr(error)


# -- report -------------------------------------------------------------------------------------------


def cycles_of(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured cycles (a suite of an earlier version kept one, as an object)."""
    found = results.get("dev_cycle")
    return [found] if isinstance(found, dict) else list(found or [])


def render_section(results: dict[str, Any]) -> list[str]:
    """The report's development cycle section (no lines if none was measured)."""
    cycles = cycles_of(results)
    if not cycles:
        return []
    lines = ["## Development cycle", ""]
    head = [
        "image",
        "edit",
        "build s",
        "push s",
        "lazy ready s (inherited profile)",
        "eager ready s",
        "lazy ready s (own profile)",
        "cycle lazy s",
        "cycle eager s",
        "eager/lazy cycle",
        "inherited/own ready",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_image: dict[str, list[float]] = defaultdict(list)  # eager/lazy per run: a median per image
    notes: list[str] = []
    for cycle in cycles:
        if "error" in cycle:
            notes.append(f"- {cycle['image']}: failed: {cycle['error']}")
            continue
        halves = {label: cycle.get(label) or {"error": "not measured"} for label, _, _ in HALVES}
        for label, half in halves.items():
            if "error" in half:
                notes.append(f"- {cycle['image']} {label}: failed: {half['error']}")
        ready = {label: half.get("ready_s", _ready(half)) for label, half in halves.items()}
        total = {label: half.get("total_s") for label, half in halves.items()}
        lazy, eager = total["lazy"], total["eager"]
        if lazy and eager:
            by_image[cycle["image"]].append(eager / lazy)
        lines.append(
            "| "
            + " | ".join(
                [
                    cycle["image"],
                    f"one edit of {cycle['edited']}",
                    f"{cycle['build_s']:.2f}",
                    f"{cycle['push_s']:.2f}",
                    _num(ready["lazy"]),
                    _num(ready["eager"]),
                    _num(ready["lazy_own"]),
                    _num(lazy),
                    _num(eager),
                    f"{_ratio(eager, lazy)}x" if lazy and eager else "-",
                    f"{ready['lazy'] / ready['lazy_own']:.2f}"
                    if ready["lazy"] and ready["lazy_own"]
                    else "-",
                ]
            )
            + " |"
        )
        inherited = cycle.get("inherited") or "no profile inherited at push"
        if f"- {cycle['image']}: {inherited}" not in notes:
            notes.append(f"- {cycle['image']}: {inherited}")
    lines.append("")
    ratios = [statistics.median(runs) for runs in by_image.values()]
    if len(cycles) > len(by_image):
        medians = ", ".join(f"{image} {statistics.median(runs):.2f}x" for image, runs in by_image.items())
        lines += [f"Per image, the median of its runs: {medians}.", ""]
    if ratios:
        lines.append(
            f"Median over the dev images: the cycle is {statistics.median(ratios):.2f}x faster lazily than "
            "eagerly (targets, reported, not asserted: 10x on flask, 8x at the median; the inherited "
            "profile's start within 20% of the own profile's)."
        )
        lines.append("")
    return lines + notes + ([""] if notes else [])


def _ready(half: dict[str, Any]) -> float | None:
    """ready = pull + run, for a half recorded before `ready_s` was."""
    pull, run = half.get("pull_s"), half.get("run_s")
    return pull + run if pull is not None and run is not None else None


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- alone ---------------------------------------------------------------------------------------------


def publish_first_version(link: Link, address: str, publisher: Path, work: Path, name: str) -> None:
    """`bench/NAME:1` into the registry from beside it (untimed), and its profile recorded over the link."""
    ref = f"{address}/bench/{name}:1"
    lazyctr(
        publisher, "push", "--insecure", "--progress", "plain", f"bench/{name}:1", ref, netns=link.server_ns
    )
    record_own_profile(link, work, ref, RUN_TIMEOUT)


RUN_TIMEOUT = 600
PORT = 5000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default=",".join(DEV_SOURCES), help="comma-separated dev images")
    parser.add_argument("--runs", type=int, default=1, help="rounds of the cycle over the images")
    parser.add_argument("--link", default="100mbit/20ms")
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "devcycle")
    args = parser.parse_args()
    names = args.images.split(",")
    unknown = [name for name in names if name not in DEV_SOURCES]
    if unknown or args.runs < 1:
        sys.exit(f"--images: one of {', '.join(DEV_SOURCES)}" if unknown else "--runs must be at least 1")
    if os.geteuid() != 0:
        sys.exit("benchmarks/devcycle.py needs root (namespaces, mounts, drop_caches)")
    from benchmarks.hello import IMAGES_DIR, prepare_images  # the suite imports this module

    compile_sources()
    unwind_on_sigterm()
    publisher, _ = prepare_images(CACHE / "bench", names)
    spec = parse_link_spec(args.link)
    cycles: list[dict[str, Any]] = []
    with workspace("lazyctr-devcycle-") as work, shaped_link_of(spec) as link:
        link.verify()
        address = f"{link.server_ip}:{PORT}"
        with serving(work / "registry", address, link, log=work / "registry.log"):
            for name in names:
                publish_first_version(link, address, publisher, work, name)
            for run in range(args.runs):
                for name in names:
                    cycle = development_cycle(link, address, publisher, work, name, IMAGES_DIR, RUN_TIMEOUT)
                    cycle["run"] = run
                    cycles.append(cycle)
                    print(_cycle_line(cycle), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"link": str(spec), "runs": args.runs, "dev_cycle": cycles}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "report.md").write_text("\n".join(render_section(results)))
    print("\n".join(render_section(results)))


def _cycle_line(cycle: dict[str, Any]) -> str:
    """One cycle on a line: build, push, and each half's pull, run and total."""
    head = f"{cycle['image']:8} build {cycle['build_s']:.2f} push {cycle['push_s']:.2f}"
    halves = []
    for label, _, _ in HALVES:
        half = cycle.get(label) or {}
        if "error" in half:
            halves.append(f"{label} FAILED: {half['error']}")
        else:
            halves.append(
                f"{label} pull {half['pull_s']:.2f} run {half['run_s']:.2f} "
                f"cycle {half['total_s']:.2f} ({half['bytes'] / 1e6:.1f} MB)"
            )
    return " | ".join([head, *halves])


if __name__ == "__main__":
    run_main(main)
