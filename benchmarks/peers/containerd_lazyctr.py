"""lazyctr's containerd snapshotter as a peer: the suite's images lazily under a private containerd.

The same cold runs as the stargz peer (benchmarks/peers/stargz.py `cold_run`: a fresh containerd
and snapshotter per run in the link's client namespace, dropped page caches, `ctr-remote image
rpull` then `ctr run` to the probe's exit), with `lazyctr snapshotter` where stargz's daemon was,
so the comparison with stargz-snapshotter no longer includes our CLI. The images are the suite's
own, as `lazyctr push` wrote them (zstd:chunked): nothing to convert. Measured from the repository
without an access profile and from the one with it (the snapshotter prefetches a profile it finds).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import stop, unmount_under
from benchmarks.link import Link
from benchmarks.peers.stargz import PeerError, cold_run, in_netns, missing_tools, summary, wait_for_socket

NAME = "lazyctr"  # the proxy plugin's name in containerd's configuration


@contextlib.contextmanager
def running_lazyctr_snapshotter(base: Path, registry: str, *, netns: str | None = None) -> Iterator[Path]:
    """`lazyctr snapshotter` with its root in `base`, fetching from the plain-HTTP `registry`; yields
    its socket. Stopped on exit, and its lazy mounts (which outlive it by design) unmounted."""
    base.mkdir(parents=True, exist_ok=True)
    sock = base / "snapshotter.sock"
    log_path = base / "snapshotter.log"
    argv = [sys.executable, "-m", "lazyctr.cli", "--root", str(base), "snapshotter", "--address", str(sock)]
    argv += ["--insecure-registry", registry]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            in_netns(netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_for_socket(sock, proc, log_path, "lazyctr snapshotter")
        yield sock
    finally:
        stop(proc, 15)
        unmount_under(base)


def measure(link: Link, refs: dict[str, str], probe: list[str], runs: int = 1) -> dict[str, Any] | str:
    """{kind: figures} for each `refs` kind ("", "+profile") -> image reference: "pull_s", "run_s",
    "total_s", "bytes" medians over `runs` cold runs and each run under "samples", as the stargz
    peer's; or the one-line reason it cannot run here."""
    missing = missing_tools()
    if missing:
        return f"missing tools: {', '.join(missing)}"
    work = Path(tempfile.mkdtemp(prefix="lazyctr-containerd-"))
    try:
        samples: dict[str, list[dict[str, Any]]] = {kind: [] for kind in refs}
        for number in range(runs):
            for kind, ref in refs.items():  # round-robin, as the stargz peer's formats
                base = work / f"run{kind}-{number}"
                registry = ref.partition("/")[0]  # the suite's registry speaks plain HTTP
                snapshotter = running_lazyctr_snapshotter(
                    base / "snapshotter", registry, netns=link.client_ns
                )
                try:
                    samples[kind].append(
                        cold_run(snapshotter, NAME, base, link, ref, probe, f"lazyctr-{number}")
                    )
                finally:
                    unmount_under(base)
                    shutil.rmtree(base, ignore_errors=True)
        return {kind: {**summary(runs_of), "ref": refs[kind]} for kind, runs_of in samples.items()}
    except PeerError as error:
        return str(error)
    except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as error:
        return f"{type(error).__name__}: {error}".splitlines()[0]
    finally:
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
