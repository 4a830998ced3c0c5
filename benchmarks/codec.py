"""Codec benchmark: our zstd:chunked writer and single-file reads against `tar | zstd` of the same rootfs.

Prints, from one run on one root file system tarball:
  - compression ratio and MB/s (of uncompressed tar) of `write_chunked_layer` and of `zstd -3 -T1`;
  - the time to read one file: our reader (footer + TOC + the file's frames) versus
    `zstd -dc layer.tar.zst | tar -xO FILE` (a plain layer must be decompressed up to the file).
Usage: python -m benchmarks.codec [--rootfs TAR] [--runs N]. Without --rootfs it uses a Debian minbase
made by debootstrap, or busybox where debootstrap is not available (cached: see benchmarks.common.CACHE).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import CACHE
from builder.rootfs import busybox_tarball, debian_tarball
from storage.layer_reader import FileRangeSource, LayerReader
from storage.layer_writer import write_chunked_layer
from storage.paths import clean_name

MB = 1e6


def default_rootfs() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    debian = CACHE / "debian-minbase.tar"
    if debian.exists():
        return debian
    if shutil.which("debootstrap"):
        print("making a Debian minbase rootfs with debootstrap (cached for later runs)...", flush=True)
        debian_tarball(debian)
        return debian
    busybox = CACHE / "busybox.tar"
    busybox_tarball(busybox)
    return busybox


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pick_files(tar_path: Path) -> dict[str, tuple[str, int]]:
    """A large file, a small file near the start and one near the end of the archive."""
    with tarfile.open(tar_path) as tar:
        regular = [m for m in tar if m.isreg() and m.size > 0]
    largest = max(regular, key=lambda m: m.size)
    return {
        "largest": (largest.name, largest.size),
        "small, early": (regular[len(regular) // 20].name, regular[len(regular) // 20].size),
        "small, late": (regular[-len(regular) // 20].name, regular[-len(regular) // 20].size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rootfs", type=Path, help="a root file system tarball")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rootfs: Path = args.rootfs or default_rootfs()
    size = rootfs.stat().st_size
    print(f"rootfs: {rootfs} ({size / MB:.1f} MB uncompressed tar), median of {args.runs} runs")

    with tempfile.TemporaryDirectory(prefix="lazyctr-bench-") as tmp:
        ours = Path(tmp) / "layer.chunked.zst"
        plain = Path(tmp) / "layer.tar.zst"

        def write_ours() -> None:
            with open(ours, "wb") as out:
                write_chunked_layer(rootfs, out)

        def write_plain() -> None:
            subprocess.run(["zstd", "-q", "-f", "-3", "-T1", str(rootfs), "-o", str(plain)], check=True)

        t_ours, t_plain = timed(write_ours, args.runs), timed(write_plain, args.runs)
        s_ours, s_plain = ours.stat().st_size, plain.stat().st_size
        print("\nwrite            size MB   ratio   MB/s")
        print(f"zstd:chunked    {s_ours / MB:8.1f}  {s_ours / size:6.3f}  {size / MB / t_ours:6.1f}")
        print(f"tar | zstd -3   {s_plain / MB:8.1f}  {s_plain / size:6.3f}  {size / MB / t_plain:6.1f}")
        print(f"zstd:chunked vs tar|zstd: size x{s_ours / s_plain:.3f}, write time x{t_ours / t_plain:.2f}")

        print("\nread one file                     bytes   zstd:chunked   tar|zstd    speed-up")
        for label, (name, file_size) in pick_files(rootfs).items():

            def read_ours(name: str = name) -> bytes:
                with FileRangeSource(ours) as source:
                    reader = LayerReader.open(source)
                    return reader.read_file(reader.entry(clean_name(name)))

            def read_plain(name: str = name) -> bytes:
                zstd = subprocess.Popen(["zstd", "-dc", str(plain)], stdout=subprocess.PIPE)
                out = subprocess.run(
                    ["tar", "-xOf", "-", name], stdin=zstd.stdout, capture_output=True
                ).stdout
                zstd.wait()
                return out

            assert read_ours() == read_plain(), name
            r_ours, r_plain = timed(read_ours, args.runs), timed(read_plain, args.runs)
            print(
                f"{label:<14} {file_size:>18,}   {r_ours * 1000:9.1f} ms  {r_plain * 1000:7.1f} ms"
                f"   x{r_plain / r_ours:.1f}"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
