"""Private environments for the real container tools, so e2e tests never touch the machine's own.

podman and skopeo get their own storage.conf (vfs under a temporary directory) and run in a private
mount namespace where /var/lib and /var/tmp are temporary directories: as root, containers/image
writes its blob-info cache to /var/lib/containers/cache and big temporary files to /var/tmp whatever
the configuration says. containerd runs as a daemon of our own, with its root, state, sockets and
opt directory under a temporary directory, and is stopped when the module's tests are done (started
and stopped by benchmarks/peers/stargz.py's running_containerd, which the stargz peer runs too).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.peers.stargz import Containerd as PrivateContainerd
from benchmarks.peers.stargz import PeerError, running_containerd
from tests.conftest import require_tools

TOOL_TIMEOUT = 120
# $0 and $1 are the stand-ins for /var/lib and /var/tmp; the rest is the command.
_ISOLATE = 'mount --bind "$0" /var/lib && mount --bind "$1" /var/tmp && shift && exec "$@"'


def run_tool(argv: list[str], env: dict[str, str] | None = None) -> bytes:
    """Run a real tool; on failure, fail the test with its stderr."""
    proc = subprocess.run(argv, env=env, capture_output=True, timeout=TOOL_TIMEOUT)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr.decode(errors='replace')}"
        )
    return proc.stdout


class ContainerTools:
    """podman and skopeo against private storage, caches and temporary directories."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.var_lib = base / "var-lib"
        self.var_tmp = base / "var-tmp"
        tmp = base / "tmp"
        for directory in (self.var_lib, self.var_tmp, tmp):
            directory.mkdir()
        storage_conf = base / "storage.conf"
        storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\nrunroot = "{base}/run"\ngraphroot = "{base}/storage"\n'
        )
        containers_conf = base / "containers.conf"
        containers_conf.write_text(
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{base}/events.log"\n'
            f'tmp_dir = "{tmp}"\n'
            f'image_copy_tmp_dir = "{tmp}"\n'
        )
        self.env = dict(
            os.environ,
            CONTAINERS_STORAGE_CONF=str(storage_conf),
            CONTAINERS_CONF=str(containers_conf),
            TMPDIR=str(tmp),
        )

    def run(self, *argv: str) -> bytes:
        isolated = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _ISOLATE]
        return run_tool([*isolated, str(self.var_lib), str(self.var_tmp), *argv], self.env)

    def podman(self, *args: str) -> bytes:
        return self.run("podman", *args)

    def skopeo(self, *args: str) -> bytes:
        return self.run("skopeo", *args)


@pytest.fixture(scope="module")
def container_tools(tmp_path_factory: pytest.TempPathFactory) -> ContainerTools:
    require_tools("unshare", "mount")
    return ContainerTools(tmp_path_factory.mktemp("container-tools"))


class Containerd:
    """A client's view of our private containerd: `ctr` and `ctr-remote` bound to its socket."""

    NAMESPACE = "lazyctr-test"

    def __init__(self, daemon: PrivateContainerd) -> None:
        self.base = daemon.base
        self.socket = daemon.socket
        self.env = daemon.env

    def client(self, tool: str, *args: str, namespace: str = NAMESPACE) -> bytes:
        return run_tool([tool, "--address", str(self.socket), "--namespace", namespace, *args], self.env)

    def ctr(self, *args: str, namespace: str = NAMESPACE) -> bytes:
        return self.client("ctr", *args, namespace=namespace)

    def ctr_remote(self, *args: str, namespace: str = NAMESPACE) -> bytes:
        return self.client("ctr-remote", *args, namespace=namespace)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A containerd of our own, started for the module and stopped after it, even on failure: the one
    the stargz peer of the benchmarks runs (benchmarks/peers/stargz.py), so both start it alike."""
    require_tools("containerd", "ctr")
    base = tmp_path_factory.mktemp("containerd")
    with contextlib.ExitStack() as stack:
        try:
            daemon = stack.enter_context(running_containerd(base))
        except PeerError as error:
            tail = (base / "containerd.log").read_text(errors="replace")[-3000:]
            pytest.fail(f"{error}:\n{tail}")
        yield Containerd(daemon)
