"""Distribution benchmark: the eager pull against podman's, and a push to a second repository against
the first push, over the suite's shaped link.

For each image of a store (default: the hello suite's publisher, `.cache/bench/hello-publisher`), and
each run, a fresh `lazyctr serve` in the link's server namespace gets:
  - a first push from a client root that has never pushed (nothing recorded, nothing in the registry),
    and a second push of the same image to another repository of the same registry: seconds and bytes
    the client sent, and their ratio (the second mounts what the first uploaded);
  - then, from cold (fresh roots, dropped caches), `lazyctr pull --eager` (download, verify and extract
    every layer: what `run` with the overlay driver then uses) and `podman pull` (runc, storage of its
    own, benchmarks/peers/podman.py) of the same reference, in alternating order: seconds, bytes
    received, and lazyctr's time over podman's.
Usage: python -m benchmarks.distribution [--publisher ROOT] [--images flask,gcc] [--runs N]
[--link 100mbit/20ms]. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import (
    CACHE,
    compile_sources,
    drop_caches,
    lazyctr,
    received,
    run_main,
    sent,
    serving,
    unwind_on_sigterm,
    workspace,
)
from benchmarks.link import Link, parse_link_spec, shaped_link_of
from benchmarks.peers.podman import Podman
from storage.store import Store

PORT = 5000
DEFAULT_PUBLISHER = CACHE / "bench" / "hello-publisher"

Figures = dict[str, list[float]]  # by measure: one figure per run


def copy_image(publisher: Path, name: str, root: Path) -> None:
    """`name` of the store at `publisher` into a new store at `root` (blobs linked where they can be),
    so the pushes start from a root that has pushed nothing."""
    source, target = Store(publisher), Store(root)
    image = source.image(name)
    for blob in [image.descriptor, image.manifest.config, *image.manifest.layers]:
        path = target.blob_path(blob.digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source.blob_path(blob.digest), path)
        except OSError:
            shutil.copyfile(source.blob_path(blob.digest), path)
    target.tag(name, image.descriptor)


def timed_push(link: Link, root: Path, name: str, target: str) -> tuple[float, int]:
    """Seconds and bytes sent by `lazyctr push` of `name` to `target` from the client's side."""
    before, started = sent(link), time.monotonic()
    lazyctr(root, "push", "--insecure", "--progress", "plain", name, target, netns=link.client_ns)
    return time.monotonic() - started, sent(link) - before


def lazyctr_pull(link: Link, work: Path, ref: str) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="root-", dir=work) as root:
        drop_caches()
        before, started = received(link), time.monotonic()
        lazyctr(Path(root), "pull", "--insecure", "--eager", ref, netns=link.client_ns)
        return time.monotonic() - started, received(link) - before


def podman_pull(podman: Podman, link: Link, ref: str) -> tuple[float, int]:
    with podman.session(link) as (run, _):
        drop_caches()
        before, started = received(link), time.monotonic()
        run("pull", "--quiet", "--tls-verify=false", ref)
        return time.monotonic() - started, received(link) - before


def measure(link: Link, publisher: Path, image: str, work: Path, podman: Podman, run: int) -> Figures:
    """One run of one image on a registry of its own."""
    figures: Figures = defaultdict(list)
    address = f"{link.server_ip}:{PORT}"
    repository = image.partition(":")[0]
    with (
        tempfile.TemporaryDirectory(prefix="registry-", dir=work) as storage,
        serving(Path(storage), address, link, log=work / "registry.log"),
    ):
        builder = work / f"builder-{run}"
        copy_image(publisher, image, builder)
        for which in ("first", "second"):
            seconds, size = timed_push(link, builder, image, f"{address}/{repository}-{which}:1")
            figures[f"{which} push s"].append(seconds)
            figures[f"{which} push MB sent"].append(size / 1e6)
        shutil.rmtree(builder)
        ref = f"{address}/{repository}-first:1"
        tools = ["lazyctr", "podman"] if run % 2 == 0 else ["podman", "lazyctr"]
        for tool in tools:
            seconds, size = (
                lazyctr_pull(link, work, ref) if tool == "lazyctr" else podman_pull(podman, link, ref)
            )
            figures[f"{tool} pull s"].append(seconds)
            figures[f"{tool} pull MB"].append(size / 1e6)
    return figures


def report(results: dict[str, Figures], runs: int, link: str) -> None:
    print(f"\nlink {link}; medians of {runs} runs")
    columns = ["lazyctr pull s", "podman pull s", "lazyctr pull MB", "podman pull MB",
               "first push s", "first push MB sent", "second push s", "second push MB sent"]  # fmt: skip
    print(
        f"{'image':24} "
        + " ".join(f"{c:>20}" for c in columns)
        + f" {'podman/lazyctr':>15} {'push 1st/2nd':>13}"
    )
    for image, figures in results.items():
        median = {c: statistics.median(figures[c]) for c in columns}
        pull_ratio = median["podman pull s"] / median["lazyctr pull s"]
        push_ratio = median["first push s"] / median["second push s"]
        cells = " ".join(f"{median[c]:>20.2f}" for c in columns)
        print(f"{image:24} {cells} {pull_ratio:>14.2f}x {push_ratio:>12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--publisher", type=Path, default=DEFAULT_PUBLISHER, help="the store holding the images"
    )
    parser.add_argument("--images", default="flask", help="comma-separated: bench/NAME:1 of the store")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--link", default="100mbit/20ms")
    args = parser.parse_args()
    compile_sources()
    unwind_on_sigterm()
    if os.geteuid() != 0:
        sys.exit("benchmarks/distribution.py needs root (namespaces, podman)")
    images = [name if ":" in name else f"bench/{name}:1" for name in args.images.split(",")]
    spec = parse_link_spec(args.link)
    results: dict[str, Figures] = {}
    with workspace("lazyctr-distribution-") as work, shaped_link_of(spec) as link:
        link.verify()
        podman = Podman(work)
        for run in range(args.runs):
            for image in images:
                figures = measure(link, args.publisher, image, work, podman, run)
                for key, values in figures.items():
                    results.setdefault(image, defaultdict(list))[key] += values
                print(
                    f"run {run + 1} {image}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in figures.items()),
                    flush=True,
                )
    report(results, args.runs, str(spec))


if __name__ == "__main__":
    run_main(main)
