"""`make demo`: the whole job on an embedded default, from a Dockerfile to a lazily started container.

Builds a small example image on busybox (an app script, and 32 MiB of data the app never reads),
pushes it to `lazyctr serve` (filesystem storage) on 127.0.0.1, then serves it across a shaped
link (100 Mbit/s, 20 ms RTT: benchmarks/link.py, two network namespaces) and starts it twice from
an empty root: lazily (`lazyctr pull`, then `run`: only the TOCs and what the app reads are
fetched) and eagerly (`pull --eager`, then `run`). Prints the time to ready and the bytes the
registry served for each, from the registry's own access log.
Usage: python -m benchmarks.demo [--root DIR] [--link 100mbit/20ms|none]. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import CACHE, SOURCE_ROOT, base_tarball, compile_sources, free_port, lazyctr
from benchmarks.link import Link, parse_link_spec, shaped_link_of
from storage.store import Store

DOCKERFILE = """\
FROM busybox
COPY app.sh /app/app.sh
COPY data.bin /app/data.bin
RUN chmod +x /app/app.sh && echo built > /app/stamp
CMD ["/app/app.sh"]
"""
APP = '#!/bin/sh\necho "hello from a lazily started container ($(cat /app/stamp))"\n'


class AccessLog:
    """Bytes the registry served, from its JSON access log (one object per request)."""

    def __init__(self, server: subprocess.Popen[str]) -> None:
        self.sent = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(server,), daemon=True)
        self._thread.start()

    def _read(self, server: subprocess.Popen[str]) -> None:
        assert server.stdout is not None
        for line in server.stdout:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.sent += int(entry.get("bytes") or 0)

    def take(self) -> int:
        time.sleep(0.3)  # the last lines of the log
        with self._lock:
            sent, self.sent = self.sent, 0
        return sent


def serve(storage: Path, address: str, link: Link | None) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "lazyctr.cli", "serve", "--storage", str(storage), "--addr", address]
    argv += ["--log-format", "json"]
    if link is not None:
        argv = link.command("server", argv)
    return subprocess.Popen(
        argv, cwd=SOURCE_ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def wait_for_port(address: str, link: Link | None) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 20
    while True:
        try:
            sock = link.socket("client") if link else socket.socket()
            with sock:
                sock.settimeout(1)
                sock.connect((host, int(port)))
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("lazyctr serve did not come up")
            time.sleep(0.1)


def build_example(publisher: Path, tmp: Path) -> None:
    busybox = base_tarball("busybox", publisher)
    lazyctr(publisher, "import", str(busybox), "busybox:latest")
    context = tmp / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(DOCKERFILE)
    (context / "app.sh").write_text(APP)
    (context / "data.bin").write_bytes(os.urandom(32 << 20))
    print("building the example image (its Dockerfile is in benchmarks/demo.py)...", flush=True)
    lazyctr(publisher, "build", "--progress", "plain", "-t", "demo/app:1", str(context))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=CACHE / "demo-root")
    parser.add_argument("--link", default="100mbit/20ms", help="the shaped link to the registry, or 'none'")
    args = parser.parse_args()
    publisher: Path = args.root.absolute()
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="lazyctr-demo-") as name, contextlib.ExitStack() as stack:
        tmp = Path(name)
        build_example(publisher, tmp)
        image = Store(publisher).image("demo/app:1")
        size = image.manifest.config.size + sum(layer.size for layer in image.manifest.layers)
        # Push over loopback, then serve the same storage across the shaped link.
        address = f"127.0.0.1:{free_port()}"
        server = serve(tmp / "registry", address, None)
        wait_for_port(address, None)
        lazyctr(publisher, "push", "demo/app:1", f"{address}/demo/app:1")
        server.terminate()
        server.wait(10)
        link = None
        if args.link != "none":
            link = stack.enter_context(shaped_link_of(parse_link_spec(args.link)))
            address = f"{link.server_ip}:5000"
        server = serve(tmp / "registry", address, link)
        stack.callback(server.wait, 10)
        stack.callback(server.terminate)
        log = AccessLog(server)
        wait_for_port(address, link)
        ref = f"{address}/demo/app:1"
        where = f"across a {args.link} link" if link else "on loopback"
        print(f"registry {ref} {where}; starting it from empty roots", flush=True)
        results = {}
        for mode in ("lazy", "eager"):
            client = tmp / f"client-{mode}"
            netns = link.client_ns if link else None
            started = time.monotonic()
            if mode == "eager":
                lazyctr(client, "pull", "--insecure", "--eager", ref, netns=netns)
            else:
                lazyctr(client, "pull", "--insecure", ref, netns=netns)
            out = lazyctr(client, "run", "--rm", ref, netns=netns).strip()
            results[mode] = (time.monotonic() - started, log.take(), out)
    print(f"\nthe container said: {results['lazy'][2]}")
    print(f"image: {size / 1e6:.1f} MB in the registry")
    for mode, (seconds, sent, _) in results.items():
        print(
            f"{mode:6} start from an empty root: ready in {seconds:5.2f} s, "
            f"{sent / 1e6:6.2f} MB fetched ({sent / size:6.1%} of the image)"
        )
    lazy, eager = results["lazy"], results["eager"]
    speedup, fewer = eager[0] / lazy[0], eager[1] / max(lazy[1], 1)
    print(f"lazy: {speedup:.1f}x faster to ready, {fewer:.0f}x fewer bytes")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:  # a step failed: its one line, not a traceback
        sys.exit(f"demo: {e}")
