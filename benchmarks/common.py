"""Pieces the lazy-pull benchmarks share (benchmarks/lazy.py, benchmarks/hello.py).

Running the CLI on a store (in the client's network namespace of a shaped link), a registry
(`lazyctr serve`) in the server's namespace, dropping the page cache and reading how many bytes the
client's end of the link has received. BenchError: the hello suite's one-line error (bad input, a
machine that cannot run it), here so that its peers (benchmarks/peers/) raise it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks.link import IFNAME, Link

REPO = Path(__file__).resolve().parent.parent


PACKAGES = ("lazyctr", "storage", "registry", "lazyfs", "runtime", "builder")


def compile_sources() -> None:
    """Write our modules' bytecode before timing the CLI.

    Python reads .pyc files but, with PYTHONDONTWRITEBYTECODE set (as in some shells and CI), never
    writes them: each CLI start would then compile every module it imports again, about 0.3 s of
    time to ready that no installed copy of lazyctr pays.
    """
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *PACKAGES], cwd=REPO, check=True, capture_output=True
    )


def unwind_on_sigterm() -> None:
    """SIGTERM (a `kill`, a CI timeout) unwinds like Ctrl-C, so that every daemon, mount, network
    namespace and work directory a benchmark set up is taken down on the way out."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


class BenchError(Exception):
    """Bad input or a machine that cannot run the suite; the message is one line."""


def lazyctr(
    root: Path,
    *args: str,
    netns: str | None = None,
    timeout: float = 1800,
    preexec_fn: Callable[[], object] | None = None,
) -> str:
    """Run the CLI (in the client's network namespace if `netns`; mounts stay visible to the host)."""
    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(root), *args]
    if netns is not None:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, preexec_fn=preexec_fn
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lazyctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serving(storage: Path, address: str, link: Link | None = None, log: Path | None = None) -> Iterator[None]:
    """`lazyctr serve` on `storage` at `address` (in the link's server namespace), until the block ends.

    Its access log goes to `log` if given (else to our stdout and stderr).
    """
    argv = [sys.executable, "-m", "lazyctr.cli", "serve", "--storage", str(storage), "--addr", address]
    with contextlib.ExitStack() as files:
        output = files.enter_context(open(log, "ab")) if log is not None else None
        kw: dict[str, Any] = {"cwd": REPO, "stdout": output, "stderr": output}
        server = link.popen("server", argv, **kw) if link else subprocess.Popen(argv, **kw)
    try:  # the server holds its own descriptor of the log
        host, port = address.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                if link is None:
                    socket.create_connection((host, int(port)), timeout=1).close()
                else:
                    sock = link.socket("client")
                    sock.settimeout(2)
                    sock.connect((host, int(port)))
                    sock.close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the registry did not come up") from None
                time.sleep(0.1)
        yield
    finally:
        server.terminate()
        server.wait(10)


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def received(link: Link) -> int:
    """Bytes the client's end of the link has received so far."""
    out = subprocess.run(
        ["nsenter", f"--net=/run/netns/{link.client_ns}", "cat", "/proc/net/dev"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == IFNAME:
            return int(counters.split()[0])
    return 0
