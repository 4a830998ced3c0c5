"""podman as a peer of lazyctr in the hello suite: `Podman(work).deploy(link, address, name)` pulls
`ADDRESS/bench/NAME-np:1` from the suite's registry over the shaped link and runs its probe with
`podman run --rm`, timing both, and returns the sample (the same keys as lazyctr's samples).

Each deployment gets storage of its own (overlay graphroot, tmp_dir, events file) under a temporary
directory of `work` and a runroot in /run, both removed afterwards; runc and cgroupfs; the client's
network namespace of the link (`nsenter --net`) and a private mount namespace where /var/lib and /var/tmp
are empty directories of its own (containers/image writes there whatever the configuration says), as
tests/e2e do.

The attached `podman run` returns once conmon's exit command, `podman container cleanup` (which moves
the container from "stopped" to "exited" and removes it for --rm), has run; when that cleanup fails,
podman waits out a 20 s conmon timer and cleans up itself: 20 s added to every run. Two ways it fails
with podman 4.3 (Debian 12), both avoided here: (1) at debug level podman gives the cleanup `--syslog`,
and the cleanup exits 1 at once where no syslog listens (no /dev/log on the benchmark machine; podman
issue 19075, made non-fatal in podman 4.6), so podman runs at its default log level; (2) the cleanup
gets the runroot as `--runroot` and refuses one longer than 50 characters, which a runroot under the
suite's work directory (.cache/bench/hello-work/podman-XXXXXXXX/run) is, so the runroot is a short
directory in /run. So that a regression shows, the sample records the time podman's events file puts
between the container's `died` and `remove` events (`exit_to_removal_s`: about 0.2 s when the cleanup
runs, 20 s when podman times out) and gets a `note` when it is over EXIT_TO_REMOVAL_LIMIT.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError, drop_caches, received, unmount_under
from benchmarks.link import Link

RUN_TIMEOUT = 600
# Well above the fraction of a second a working cleanup takes, well below podman's 20 s conmon timer.
EXIT_TO_REMOVAL_LIMIT = 10.0
# The runroot's parent: podman's cleanup gets the runroot as --runroot, which it refuses when longer than 50
# characters (its sockets live below it); the suite's work directory is longer than that.
RUNROOT_PARENT = "/run"
# $0 and $1 are the stand-ins for /var/lib and /var/tmp; the rest is the command.
_ISOLATE = 'mount --bind "$0" /var/lib && mount --bind "$1" /var/tmp && shift && exec "$@"'


class Podman:
    """podman against the suite's registry: private storage per run, runc, cgroupfs, in the client's netns."""

    def __init__(self, work: Path) -> None:
        if shutil.which("podman") is None:
            raise BenchError("podman is not installed")
        if shutil.which("runc") is None:
            raise BenchError("runc is not installed")
        self.work = work

    @contextlib.contextmanager
    def session(self, link: Link) -> Iterator[tuple[Callable[..., None], Path]]:
        """`podman(*args)` in the client's namespace with storage of its own, and that storage's base
        directory; everything is removed when the block ends."""
        base = Path(tempfile.mkdtemp(prefix="podman-", dir=self.work))
        runroot = Path(tempfile.mkdtemp(prefix="lazyctr-podman-", dir=RUNROOT_PARENT))
        try:
            for part in ("var-lib", "var-tmp"):
                (base / part).mkdir()
            env = podman_environment(base, runroot)
            prefix = [
                "nsenter", f"--net=/run/netns/{link.client_ns}",
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", _ISOLATE, str(base / "var-lib"), str(base / "var-tmp"),
            ]  # fmt: skip

            def podman(*args: str) -> None:
                proc = subprocess.run(
                    [*prefix, "podman", *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"podman {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")

            try:
                yield podman, base
            finally:
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    podman("rmi", "--all", "--force")
        finally:
            for directory in (base, runroot):
                unmount_under(directory)
                shutil.rmtree(directory, ignore_errors=True)

    def deploy(self, link: Link, address: str, name: str) -> dict[str, Any]:
        ref = f"{address}/bench/{name}-np:1"
        sample: dict[str, Any] = {"image": name, "driver": "podman"}
        with self.session(link) as (podman, base):
            drop_caches()
            before = received(link)
            started = time.monotonic()
            try:
                podman("pull", "--quiet", "--tls-verify=false", ref)
                pulled = time.monotonic()
                podman("run", "--rm", "--network", "host", ref)
                done = time.monotonic()
                sample.update(ok=True, pull_s=pulled - started, run_s=done - pulled, ready_s=done - started)
                gap = exit_to_removal(base / "events.log")
                sample["exit_to_removal_s"] = gap
                if gap is not None and gap > EXIT_TO_REMOVAL_LIMIT:
                    sample["note"] = (
                        f"podman removed the container {gap:.1f} s after the probe had exited "
                        "(its 20 s wait for conmon's cleanup, which did not run)"
                    )
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                sample.update(ok=False, error=str(e).strip().splitlines()[-1][:300])
            sample["bytes"] = received(link) - before
        return sample


def exit_to_removal(events_log: Path) -> float | None:
    """Seconds from the last container's `died` event to its `remove` event in podman's events file."""
    died: dict[str, datetime] = {}
    gap = None
    try:
        lines = events_log.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            event = json.loads(line)
            if not isinstance(event, dict) or event.get("Type") != "container":
                continue
            status, container, when = event.get("Status"), str(event.get("ID")), _timestamp(event["Time"])
        except (ValueError, KeyError, TypeError):
            continue  # a line podman was still writing, or one of another shape
        if status == "died":
            died[container] = when
        elif status == "remove" and container in died:
            gap = (when - died[container]).total_seconds()
    return gap


def _timestamp(text: str) -> datetime:
    # podman writes nanoseconds (RFC 3339); datetime takes six digits at most.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:digits][:6]:0<6}{rest[digits:]}"
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _ulimit(kind: int, wanted: int = 1024) -> str:
    # Root may lower limits here but not raise them, and podman's defaults for root are higher.
    hard = resource.getrlimit(kind)[1]
    value = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    return f"{value}:{value}"


def podman_environment(base: Path, runroot: Path) -> dict[str, str]:
    """The environment of a podman whose storage, configuration, events and temporary files are
    all below `base` (its runroot at `runroot`): runc, cgroupfs, events to a file, overlay storage (vfs
    would copy the whole image per container; overlay is podman's default and what it is fast with)."""
    (base / "tmp").mkdir(parents=True)
    storage_conf = base / "storage.conf"
    storage_conf.write_text(
        f'[storage]\ndriver = "overlay"\nrunroot = "{runroot}"\ngraphroot = "{base}/storage"\n'
    )
    containers_conf = base / "containers.conf"
    ulimits = [f"nofile={_ulimit(resource.RLIMIT_NOFILE)}", f"nproc={_ulimit(resource.RLIMIT_NPROC)}"]
    containers_conf.write_text(
        f"[containers]\ndefault_ulimits = {json.dumps(ulimits)}\n"
        "[engine]\n"
        'runtime = "runc"\n'  # crun refuses a cgroup v1 host with an empty v2 hierarchy
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{base}/events.log"\n'
        f'tmp_dir = "{base}/tmp"\n'
        f'image_copy_tmp_dir = "{base}/tmp"\n'
    )
    return dict(
        os.environ,
        CONTAINERS_STORAGE_CONF=str(storage_conf),
        CONTAINERS_CONF=str(containers_conf),
        TMPDIR=str(base / "tmp"),
    )
