"""Lazy-pull benchmark: from nothing to a ready container, over a shaped link, eager against lazy.

A Debian + python3 image (built by `lazyctr build` on a debootstrap minbase) is served by
`lazyctr serve` in one network namespace; the client runs in another, across a link shaped by
benchmarks/link.py (default 100 Mbit/s, 20 ms RTT). Every run starts cold: a fresh --root and
dropped page caches. Measured in one run, round-robin:
  - startup: `lazyctr pull` then `lazyctr run --rm IMG python3 -c 'print(1)'`, for eager (pull
    --eager, overlay driver), lazy, and lazy + profile (an access profile recorded once and pushed
    with the image, prefetched by the lazy mount); time and bytes received by the client;
  - worst case: the same pull, then a container that reads every file of the image (`tar` of its
    root), lazy against eager: the case where stargz-snapshotter loses 18-65%;
  - big file: reading a 64 MiB file through `lazyctr mount`, cold (from the registry) and warm (from
    the chunk cache), against the same file on local disk.
Usage: python -m benchmarks.lazy [--link 100mbit/20ms] [--runs N] [--cache DIR]. Needs root.
The images and the registry's storage are kept in --cache (default .cache/bench) between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import (
    CACHE,
    base_tarball,
    compile_sources,
    drop_caches,
    free_port,
    lazyctr,
    received,
    serving,
)
from benchmarks.link import Link, parse_link_spec, shaped_link_of

PORT = 5000
PYTHON_IMAGE = "bench/python:1"
NO_PROFILE = "bench/python-without-profile:1"  # the same image in a repository with no profile
BIG_IMAGE = "bench/big:1"
BIG_SIZE = 64 << 20
PYTHON_DOCKERFILE = """\
FROM debian:minbase
RUN apt-get update && apt-get install -y --no-install-recommends python3 && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
"""
READY = ["python3", "-c", "print(1)"]
READ_ALL = ["sh", "-c", "tar cf - --one-file-system / 2>/dev/null | wc -c"]


# -- set-up (cached) ----------------------------------------------------------------------------


def prepare(cache: Path) -> Path:
    """The registry storage holding both images and the python image's access profile."""
    registry = cache / "registry"
    if (registry / ".ready").exists():
        return registry
    publisher = cache / "publisher"
    base = base_tarball("debian", publisher)
    print("building the images (once)...", flush=True)
    lazyctr(publisher, "import", str(base), "debian:minbase")
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(PYTHON_DOCKERFILE)
        lazyctr(publisher, "build", "--progress", "plain", "-t", PYTHON_IMAGE, context)
        big_tar = Path(context) / "big.tar"
        big_tar.write_bytes(_tar_of_random_file("big.bin", BIG_SIZE))  # random: it does not compress
        lazyctr(publisher, "import", str(big_tar), BIG_IMAGE)
    address = f"127.0.0.1:{free_port()}"
    with serving(registry, address, log=cache / "lazy-registry.log"):
        for image, name in ((PYTHON_IMAGE, PYTHON_IMAGE), (PYTHON_IMAGE, NO_PROFILE), (BIG_IMAGE, BIG_IMAGE)):
            lazyctr(publisher, "push", image, f"{address}/{name}")
        # The profile: one lazy run recorded, then pushed with the image (as a referrer).
        with tempfile.TemporaryDirectory() as recorder:
            ref = f"{address}/{PYTHON_IMAGE}"
            lazyctr(Path(recorder), "pull", ref)
            lazyctr(Path(recorder), "run", "--rm", "--record-profile", ref, *READY)
            lazyctr(Path(recorder), "push", ref, ref)
    (registry / ".ready").touch()
    return registry


def _tar_of_random_file(name: str, size: int) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        member = tarfile.TarInfo(name)
        member.size = size
        member.mode = 0o644
        member.mtime = 1700000000
        tar.addfile(member, io.BytesIO(os.urandom(size)))
    return out.getvalue()


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Sample:
    pull: float
    run: float
    bytes: int

    @property
    def total(self) -> float:
        return self.pull + self.run


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, name: str, sample: Sample) -> None:
        self.samples.setdefault(name, []).append(sample)

    def median(self, name: str, what: str) -> float:
        return float(statistics.median(getattr(s, what) for s in self.samples[name]))


def deploy(link: Link, address: str, mode: str, command: list[str]) -> Sample:
    """Pull and run `command` on a cold client; `mode` is eager, lazy or lazy+profile."""
    ref = f"{address}/{PYTHON_IMAGE if mode == 'lazy+profile' else NO_PROFILE}"
    eager = ["--eager"] if mode == "eager" else []
    with tempfile.TemporaryDirectory(prefix="lazybench-") as tmp:
        root = Path(tmp)
        drop_caches()
        before = received(link)
        started = time.monotonic()
        lazyctr(root, "pull", "--insecure", *eager, ref, netns=link.client_ns)
        pulled = time.monotonic()
        lazyctr(root, "run", "--rm", ref, *command, netns=link.client_ns)
        done = time.monotonic()
        return Sample(pulled - started, done - pulled, received(link) - before)


def read_big_file(link: Link, ref: str) -> dict[str, float]:
    """MB/s reading the big file through lazyfs, cold then warm, and from local disk."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lazybench-") as tmp:
        root, point = Path(tmp) / "root", Path(tmp) / "mnt"
        point.mkdir()
        lazyctr(root, "pull", "--insecure", ref, netns=link.client_ns)
        for label in ("cold", "warm"):
            lazyctr(root, "mount", ref, str(point), netns=link.client_ns)
            drop_caches()
            out[label] = _read_rate(point / "big.bin")
            lazyctr(root, "umount", str(point))
        lazyctr(root, "mount", ref, str(point))
        local = Path(tmp) / "big.bin"
        shutil.copyfile(point / "big.bin", local)
        lazyctr(root, "umount", str(point))
        drop_caches()
        out["local"] = _read_rate(local)
    return out


def _read_rate(path: Path) -> float:
    started = time.monotonic()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            size += len(chunk)
    return size / (time.monotonic() - started) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--link", default="100mbit/20ms")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=CACHE / "bench")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args()
    compile_sources()
    if os.geteuid() != 0:
        sys.exit("benchmarks/lazy.py needs root (namespaces, mounts)")
    registry = prepare(args.cache)
    spec = parse_link_spec(args.link)
    results = Results()
    with shaped_link_of(spec) as link:
        link.verify()  # prints what the link does
        address = f"{link.server_ip}:{PORT}"
        with serving(registry, address, link, log=args.cache / "lazy-registry.log"):
            modes = ["eager", "lazy", "lazy+profile"]
            for run in range(args.runs):
                for mode in modes[run % 3 :] + modes[: run % 3]:  # rotating order: drift hits all alike
                    results.add(f"startup {mode}", deploy(link, address, mode, READY))
                for mode in ("eager", "lazy") if run % 2 == 0 else ("lazy", "eager"):
                    results.add(f"read-all {mode}", deploy(link, address, mode, READ_ALL))
            rates = read_big_file(link, f"{address}/{BIG_IMAGE}")
    report(results, rates, spec)
    if args.json:
        data = {name: [vars(s) for s in samples] for name, samples in results.samples.items()}
        args.json.write_text(json.dumps({"samples": data, "big_file_mb_s": rates}, indent=2))


def report(results: Results, rates: dict[str, float], spec: object) -> None:
    print(f"\nlink {spec}; medians of {len(results.samples['startup eager'])} cold runs each")
    print(f"{'case':24} {'pull s':>8} {'run s':>8} {'total s':>8} {'MB recv':>8} {'vs eager':>9}")
    for name in results.samples:
        group = name.split()[0]
        eager = results.median(f"{group} eager", "total")
        total = results.median(name, "total")
        print(
            f"{name:24} {results.median(name, 'pull'):8.2f} {results.median(name, 'run'):8.2f} {total:8.2f} "
            f"{results.median(name, 'bytes') / 1e6:8.1f} {eager / total:8.2f}x"
        )
    print(
        f"\nbig file ({BIG_SIZE >> 20} MiB) through lazyfs: cold {rates['cold']:.0f} MB/s, warm "
        f"{rates['warm']:.0f} MB/s; local disk {rates['local']:.0f} MB/s "
        f"(warm/local {rates['warm'] / rates['local']:.2f})"
    )


if __name__ == "__main__":
    main()
