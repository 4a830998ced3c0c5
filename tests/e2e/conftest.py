"""Private environments for the real container tools, so e2e tests never touch the machine's own.

podman and skopeo get their own storage.conf (vfs under a temporary directory) and run in a private
mount namespace where /var/lib and /var/tmp are temporary directories: as root, containers/image
writes its blob-info cache to /var/lib/containers/cache and big temporary files to /var/tmp whatever
the configuration says. containerd runs as a daemon of our own, with its root, state, sockets and
opt directory under a temporary directory, and is stopped when the module's tests are done.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tools

TOOL_TIMEOUT = 120
DAEMON_START_TIMEOUT = 30.0
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

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.env = dict(os.environ, TMPDIR=str(base / "tmp"))

    def config(self) -> str:
        b = self.base
        return (
            "version = 2\n"
            f'root = "{b}/root"\n'
            f'state = "{b}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            f'[debug]\n  address = "{b}/debug.sock"\n'
            # Otherwise containerd creates /opt/containerd.
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{b}/opt"\n'
        )

    def client(self, tool: str, *args: str, namespace: str = NAMESPACE) -> bytes:
        return run_tool([tool, "--address", str(self.socket), "--namespace", namespace, *args], self.env)

    def ctr(self, *args: str, namespace: str = NAMESPACE) -> bytes:
        return self.client("ctr", *args, namespace=namespace)

    def ctr_remote(self, *args: str, namespace: str = NAMESPACE) -> bytes:
        return self.client("ctr-remote", *args, namespace=namespace)

    def answers(self) -> bool:
        argv = ["ctr", "--address", str(self.socket), "version"]
        try:
            return subprocess.run(argv, capture_output=True, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    """A containerd of our own, started for the module and stopped after it, even on failure."""
    require_tools("containerd", "ctr")
    daemon = Containerd(tmp_path_factory.mktemp("containerd"))
    (daemon.base / "tmp").mkdir()
    config = daemon.base / "config.toml"
    config.write_text(daemon.config())
    log_path = daemon.base / "containerd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=daemon.env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + DAEMON_START_TIMEOUT
        while not daemon.answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"containerd did not come up (exit status {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        yield daemon
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
