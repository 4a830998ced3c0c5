"""Reads in a new container of a lazily pulled image after its background fill, against native reads.

After a mount's background fill has fetched an image, its daemon assembles the image's root as a plain
directory, and a new container gets overlayfs over that instead of the FUSE mount (runtime/drivers.py,
storage/materialise.py). This measures what such a container reads at, against a container of the same
image pulled eagerly (overlayfs over layers extracted from their blobs: native), and, for context,
against a container on a lazyfs mount whose chunks are all cached (what the container got before).

The image: a Debian minbase root plus a layer with one big file of random bytes (/big, 256 MiB by
default), served by `lazyctr serve` on 127.0.0.1 (no shaped link: nothing is timed while fetching).
Three client roots, each pulled from it:
  - eager: `pull --eager`, the overlay driver;
  - filled: a lazy pull, `mount --fill` until its daemon has assembled the root, the lazy driver;
  - lazyfs: a lazy pull, one container reads every file (so every chunk is cached), the lazy driver.
Each measurement is a container of its own, timed inside it (date +%s%N around the command, so the
container's start is not counted), with the page cache dropped before it:
  - sequential read of /big (`cat`);
  - metadata walk of the root (`find -xdev -printf '%s %m %u'`);
  - reading every file of the root but /big (`tar | wc -c`: GNU tar reads nothing when it writes to
    /dev/null).
Rounds go round-robin over the roots (median of --runs); the ratios are native time / time, so 1.0 is
native speed and more is faster.
Usage: python -m benchmarks.filled [--runs N] [--size MiB] [--base TARBALL]. Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import time
from pathlib import Path

from benchmarks.common import (
    base_tarball,
    compile_sources,
    drop_caches,
    free_port,
    lazyctr,
    rotating_rounds,
    run_main,
    serving,
    unwind_on_sigterm,
    workspace,
)
from storage.importer import add_layer, import_tarball
from storage.store import Store

IMAGE = "bench/filled:1"
ROOTS = ("eager", "filled", "lazyfs")
TIMED = "start=$(date +%s%N); {command} >/dev/null; end=$(date +%s%N); echo $((end - start))"
MEASURES = {
    "sequential read of /big": "cat /big",
    "metadata walk": "find / -xdev -printf '%s %m %u\\n'",
    "read every file": "tar cf - --one-file-system --exclude=./big -C / . 2>/dev/null | wc -c",
}
FILL_TIMEOUT = 600.0


def build_image(publisher: Path, base: Path, size: int, work: Path) -> None:
    """IMAGE in `publisher`: the base tarball plus a layer holding /big, `size` random bytes."""
    store = Store(publisher)
    with open(base, "rb") as f:
        debian = import_tarball(store, f, "bench/debian:1")
    layer = work / "big.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        member = tarfile.TarInfo("big")
        member.size, member.mode, member.mtime = size, 0o644, int(time.time())
        with open(work / "big", "wb") as out:
            for _ in range(size >> 20):
                out.write(os.urandom(1 << 20))
        with open(work / "big", "rb") as data:
            tar.addfile(member, data)
    (work / "big").unlink()
    add_layer(store, debian, layer, IMAGE, "a big file")
    layer.unlink()


def fill(root: Path, ref: str, point: Path) -> str:
    """Fetch the whole image with a mount's background fill; the root its daemon assembled."""
    point.mkdir()
    lazyctr(root, "mount", "--fill", ref, str(point))
    deadline = time.monotonic() + FILL_TIMEOUT
    try:
        while (assembled := json.loads(lazyctr(root, "mount", "--stats", str(point)))["plain_root"]) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the fill of {ref} did not end within {FILL_TIMEOUT:.0f} s")
            time.sleep(0.5)
    finally:
        lazyctr(root, "umount", str(point))
    if assembled.startswith("failed"):
        raise RuntimeError(f"no plain root for {ref}: {assembled}")
    return str(assembled)


def timed_in_container(root: Path, ref: str, command: str) -> float:
    """Seconds `command` takes inside a new container of `ref`, the page cache dropped just before."""
    drop_caches()
    out = lazyctr(root, "run", "--rm", ref, "sh", "-c", TIMED.format(command=command))
    return int(out.split()[-1]) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.filled", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds (median)")
    parser.add_argument("--size", type=int, default=256, help="MiB of /big")
    parser.add_argument("--base", type=Path, help="a root file system tarball (default: Debian minbase)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks.filled needs root (containers, mounts, drop_caches)")
    if args.runs < 1 or args.size < 1:
        sys.exit("--runs and --size must be at least 1")
    unwind_on_sigterm()
    compile_sources()
    with workspace("lazyctr-filled-") as work:
        publisher, registry = work / "publisher", work / "registry"
        base = args.base or base_tarball("debian", publisher)
        print(f"building the image: {base.name} + /big of {args.size} MiB...", flush=True)
        build_image(publisher, base, args.size << 20, work)
        address = f"127.0.0.1:{free_port()}"
        ref = f"{address}/{IMAGE}"
        with serving(registry, address, log=work / "registry.log"):
            lazyctr(publisher, "push", IMAGE, ref)
            roots = {name: work / name for name in ROOTS}
            lazyctr(roots["eager"], "pull", "--eager", ref)
            lazyctr(roots["filled"], "pull", ref)
            lazyctr(roots["lazyfs"], "pull", ref)
            print(f"plain root: {fill(roots['filled'], ref, work / 'fill')}", flush=True)
            for warming in ("read every file", "sequential read of /big"):  # every chunk into the cache
                lazyctr(roots["lazyfs"], "run", "--rm", ref, "sh", "-c", f"{MEASURES[warming]} >/dev/null")
        # The registry is gone: every byte read from here on comes from the machine.
        report(measure(roots, ref, args.runs), args.runs)


def measure(roots: dict[str, Path], ref: str, runs: int) -> dict[tuple[str, str], list[float]]:
    times: dict[tuple[str, str], list[float]] = {}
    for label, command in MEASURES.items():
        for _, name in rotating_rounds(ROOTS, runs, lambda _: True):
            times.setdefault((label, name), []).append(timed_in_container(roots[name], ref, command))
    return times


def report(times: dict[tuple[str, str], list[float]], runs: int) -> None:
    def median(label: str, name: str) -> float:
        return statistics.median(times[(label, name)])

    print(f"\nmedian of {runs} runs, page cache dropped before each; ratio = native time / time")
    print(f"{'':26}{'eager (native)':>16}{'filled':>16}{'lazyfs warm':>16}")
    for label in MEASURES:
        native = median(label, "eager")
        cells = [f"{median(label, name):13.3f} s" for name in ROOTS]
        print(f"{label:26}{cells[0]:>16}{cells[1]:>16}{cells[2]:>16}")
        spreads = [f"{min(times[(label, name)]):.3f}-{max(times[(label, name)]):.3f}" for name in ROOTS]
        print(f"{'  spread (s)':26}{spreads[0]:>16}{spreads[1]:>16}{spreads[2]:>16}")
        ratios = [f"{native / median(label, name):14.2f}x" for name in ROOTS]
        print(f"{'  ratio':26}{ratios[0]:>16}{ratios[1]:>16}{ratios[2]:>16}")


if __name__ == "__main__":
    run_main(main)
