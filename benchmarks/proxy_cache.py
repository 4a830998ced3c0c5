"""Pull-through cache benchmark: the bytes that leave the upstream registry when N lazy clients pull the
same image and read the same files, straight from the upstream against through `lazyctr serve --proxy`.

The upstream is a `lazyctr serve` whose JSON access log counts every byte it sends (bodies of every
answer: manifests, configs, TOCs, ranges). The image: FILES files of 256 KiB of random data in one
zstd:chunked layer; each client reads READ of them (the same ones), about the share of an image a
container reads at start (Slacker: 6.4%). A client is what `lazyctr pull` then `lazyctr cat` do
(a lazy pull, then reads through lazyfs's fetch engine, verified chunk by chunk), in a thread of
this process, each with its own store. Measured in one run:
  - one client straight from the upstream: the bytes one lazy node fetches (the baseline);
  - N clients at once straight from the upstream (about N times the baseline);
  - N clients at once through a fresh cache (the target: at most 1.2 times the baseline);
  - N more clients through the now warm cache (only manifest revalidations reach the upstream);
  - N eager clients (`pull --eager`) through another fresh cache: the whole image leaves the upstream,
    once. It is also what a cache that fetched each whole blob on its first range miss would send
    for the lazy clients: why the cache keeps blobs sparse instead.
Usage: python -m benchmarks.proxy_cache [--clients 4] [--files 32] [--read 2]. A few seconds, no root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import SOURCE_ROOT, free_port, lazyctr, run_main, stop

FILE_SIZE = 256 << 10
IMAGE = "bench/proxy:1"


@dataclass
class Case:
    name: str
    clients: int
    upstream_bytes: int
    seconds: float


def image_tar(files: int) -> tuple[bytes, dict[str, bytes]]:
    """A tar of `files` random files (random: they do not compress), and their contents by path."""
    contents = {f"data/f{i:03d}.bin": os.urandom(FILE_SIZE) for i in range(files)}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, data in contents.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue(), contents


@contextlib.contextmanager
def serve(root: Path, *options: str, log: Path | None = None) -> Iterator[str]:
    """`lazyctr serve` (with `options`) on a free port until the block ends; its access log to `log`."""
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(root), "serve", "--addr", address, *options]
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(log, "ab")) if log else subprocess.DEVNULL
        server = subprocess.Popen(argv, cwd=SOURCE_ROOT, stdout=out, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=1):
                    break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"lazyctr serve {' '.join(options)} did not come up") from None
                time.sleep(0.05)
        yield address
    finally:
        stop(server)


def sent_bytes(log: Path) -> int:
    """The body bytes the upstream has sent so far, by its access log."""
    return sum(json.loads(line)["bytes"] or 0 for line in log.read_text().splitlines())


def lazy_client(root: Path, ref: str, paths: list[str], expected: dict[str, bytes]) -> None:
    """A lazy pull, then each path read through the fetch engine (as `lazyctr cat` does); with no
    paths, an eager pull (every layer)."""
    from lazyfs.image import MountableImage
    from registry.transfer import pull_image, pull_lazy
    from storage.store import Store

    store = Store(root)
    if not paths:
        asyncio.run(pull_image(store, ref))
        return
    image = asyncio.run(pull_lazy(store, ref))
    with MountableImage.load(store, image).serving(store) as source:
        for path in paths:
            data = b"".join(source.contents(source.resolve(path)))
            if data != expected[path]:
                raise RuntimeError(f"{path}: the client read other bytes than the image holds")


def measure(name: str, log: Path, registry: str, work: Path, clients: int, paths: list[str],
            expected: dict[str, bytes]) -> Case:  # fmt: skip
    before = sent_bytes(log)
    started = time.monotonic()
    roots = [Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work)) for _ in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        ref = f"{registry}/{IMAGE}"
        clients_done = [pool.submit(lazy_client, root, ref, paths, expected) for root in roots]
        for done in clients_done:
            done.result()
    seconds = time.monotonic() - started
    time.sleep(0.2)  # the access log line of the last answer is written after it is sent
    return Case(name, clients, sent_bytes(log) - before, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--files", type=int, default=32, help="files of 256 KiB in the image")
    parser.add_argument("--read", type=int, default=2, help="files each client reads")
    args = parser.parse_args()
    if not 0 < args.read <= args.files or args.clients < 1:
        sys.exit("proxy_cache: need --clients >= 1 and 0 < --read <= --files")
    tar, contents = image_tar(args.files)
    paths = sorted(contents)[:: max(1, args.files // args.read)][: args.read]
    with tempfile.TemporaryDirectory(prefix="lzp-bench-") as tmp:
        work = Path(tmp)
        (work / "image.tar").write_bytes(tar)
        publisher, log = work / "publisher", work / "upstream.log"
        lazyctr(publisher, "import", str(work / "image.tar"), IMAGE)
        with serve(work / "upstream", "--log-format", "json", log=log) as upstream:
            lazyctr(publisher, "push", IMAGE, f"{upstream}/{IMAGE}")
            cases = [measure("single", log, upstream, work, 1, paths, contents)]
            cases.append(measure("direct", log, upstream, work, args.clients, paths, contents))
            with serve(work / "cache", "--proxy", upstream) as cache:
                cases.append(measure("proxy-cold", log, cache, work, args.clients, paths, contents))
                cases.append(measure("proxy-warm", log, cache, work, args.clients, paths, contents))
            with serve(work / "eager-cache", "--proxy", upstream) as cache:
                cases.append(measure("proxy-eager", log, cache, work, args.clients, [], contents))
    report(cases, args.files, args.read)


def report(cases: list[Case], files: int, read: int) -> None:
    baseline = cases[0].upstream_bytes
    print(f"image: {files} files of {FILE_SIZE >> 10} KiB ({files * FILE_SIZE / 1e6:.1f} MB); "
          f"each client reads {read} of them")  # fmt: skip
    print(f"{'case':<12} {'clients':>7} {'upstream bytes':>15} {'x one client':>13} {'seconds':>8}")
    for case in cases:
        print(f"{case.name:<12} {case.clients:>7} {case.upstream_bytes:>15,} "
              f"{case.upstream_bytes / baseline:>13.2f} {case.seconds:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    run_main(main)
