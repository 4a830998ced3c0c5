"""containerd with `lazyctr snapshotter` as a proxy plugin: ctr pulls our images into it and runs
containers on its snapshots. A plain `ctr pull` unpacks layers as containerd's own snapshotter
would; `ctr-remote image rpull`, which labels each layer with its image, gets zstd:chunked layers
served lazily by lazyfs (their blobs never downloaded), whiteouts and opaque directories as
overlayfs reads them."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import grpc
import pytest

from benchmarks.common import unmount_under
from benchmarks.peers.stargz import PeerError, running_containerd
from lazyfs.host import mount_points
from lazyfs.snapshotter.api import load
from registry.auth import Access
from registry.htpasswd import load_htpasswd
from storage.importer import add_layer, import_tarball
from storage.store import Store
from tests.conftest import require_tools
from tests.e2e.conftest import Containerd, ContainerTools
from tests.lazyfs.conftest import run_cli
from tests.lazyfs.test_faults import Proxy
from tests.lazyfs.test_snapshotter import start, stop
from tests.registry.conftest import Registry
from tests.tarfiles import info, make_tar

pytestmark = pytest.mark.privileged

SNAPSHOTTER = "lazyctr"
MOTD = "served lazily\n"
READ_TIMEOUT = 3.0  # the snapshotter's: a read the registry does not answer fails after this
BIG = os.urandom(3 << 20)  # many chunks, none fetched before it is read


@dataclass
class Stack:
    containerd: Containerd
    root: Path  # the snapshotter's --root
    socket: Path
    snapshotter: subprocess.Popen[str]

    @property
    def snapshotter_root(self) -> Path:
        return self.root / "snapshotter"

    def lazy_mounts(self) -> list[str]:
        return [point for point in mount_points() if point.startswith(str(self.snapshotter_root))]

    def restart(self, between: Callable[[], None] = lambda: None) -> None:
        """Stop the snapshotter, do `between`, start it again; back once containerd reconnected
        (it retries a lost proxy plugin's connection with a backoff of up to 3 s)."""
        stop(self.snapshotter)
        between()
        self.snapshotter = start(self.root, self.socket)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.containerd.ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls")
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tools("containerd", "ctr", "ctr-remote")
    base = tmp_path_factory.mktemp("containerd-lazyctr")
    socket = base / "lazyctr" / "snapshotter.sock"
    snapshotter = start(base / "lazyctr-root", socket, "--timeout", str(READ_TIMEOUT))
    ours = Stack(None, base / "lazyctr-root", socket, snapshotter)  # type: ignore[arg-type]
    try:
        with contextlib.ExitStack() as stack:
            try:
                daemon = stack.enter_context(
                    running_containerd(
                        base / "containerd", snapshotter_socket=socket, snapshotter_name=SNAPSHOTTER
                    )
                )
            except PeerError as error:
                tail = (base / "containerd" / "containerd.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"{error}:\n{tail}")
            ours.containerd = Containerd(daemon)
            yield ours
    finally:
        try:
            stop(ours.snapshotter)
        finally:
            unmount_under(base)  # the lazy mounts outlive the snapshotter (a restart finds them)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    registry = Registry(tmp_path_factory.mktemp("registry") / "data")
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path, registry: Registry) -> dict[str, str]:
    """busybox, and busybox plus two layers (files; then a whiteout and an opaque directory), pushed."""
    base = tmp_path_factory.mktemp("published")
    store = Store(base / "root")
    with open(busybox_tar, "rb") as f:
        busybox = import_tarball(store, f, "busybox:1")
    files = make_tar(
        base / "files.tar",
        [
            (info("etc", tarfile.DIRTYPE), None),
            (info("etc/motd"), MOTD.encode()),
            (info("data", tarfile.DIRTYPE), None),
            (info("data/a"), b"a\n"),
            (info("data/b"), b"b\n"),
            (info("keep", tarfile.DIRTYPE), None),
            (info("keep/x"), b"x\n"),
        ],
    )
    hides = make_tar(
        base / "hides.tar",
        [
            (info("data", tarfile.DIRTYPE), None),
            (info("data/.wh.a"), b""),
            (info("keep", tarfile.DIRTYPE), None),
            (info("keep/.wh..wh..opq"), b""),
            (info("keep/y"), b"y\n"),
        ],
    )
    add_layer(store, add_layer(store, busybox, files, "layered:1", "files"), hides, "layered:1", "hides")
    other = make_tar(
        base / "other.tar", [(info("etc", tarfile.DIRTYPE), None), (info("etc/other"), b"gzip\n")]
    )
    add_layer(store, busybox, other, "other:1", "a layer no other image has")
    big = make_tar(base / "big.tar", [(info("big.bin"), BIG)])
    add_layer(store, busybox, big, "big:1", "a big file")
    refs = {}
    for name in ("busybox:1", "layered:1", "other:1", "big:1"):
        refs[name] = f"{registry.address}/test/{name}"
        run_cli(base / "root", "push", name, refs[name])
    return refs


def layer_digests(containerd: Containerd, ref: str) -> list[str]:
    digest = next(
        line.split()[2]
        for line in containerd.ctr("images", "ls").decode().splitlines()[1:]
        if line.split()[0] == ref
    )
    return [layer["digest"] for layer in json.loads(containerd.ctr("content", "get", digest))["layers"]]


def test_ctr_pull_unpacks_onto_our_snapshots(stack: Stack, images: dict[str, str]) -> None:
    """A plain `ctr pull` passes no image labels: layers are downloaded and unpacked, as by containerd's
    own overlayfs snapshotter."""
    ctr = stack.containerd.ctr
    ref = images["busybox:1"]
    ctr("images", "pull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)
    assert set(layer_digests(stack.containerd, ref)) <= set(ctr("content", "ls", "-q").decode().split())
    out = ctr(
        "run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "plain", "sh", "-c", "echo hi > /tmp/x; cat /tmp/x"
    )
    assert out.decode() == "hi\n"
    assert "Committed" in ctr("snapshots", "--snapshotter", SNAPSHOTTER, "ls").decode()


def test_rpull_serves_layers_lazily(stack: Stack, images: dict[str, str]) -> None:
    """ctr-remote's rpull labels the layers with their image: lazyfs serves them, never downloaded,
    one mount for the image whichever layers containerd stacks, whiteouts as overlayfs reads them."""
    c = stack.containerd
    ref = images["layered:1"]
    c.ctr_remote("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)
    ours = set(layer_digests(c, ref)) - set(layer_digests(c, images["busybox:1"]))  # busybox's: pulled before
    assert len(ours) == 2 and not ours & set(c.ctr("content", "ls", "-q").decode().split())
    script = "cat /etc/motd; ls /data /keep; echo hi > /data/new; cat /data/new"
    out = c.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "lazy", "sh", "-c", script)
    assert out.decode() == MOTD + "/data:\nb\n\n/keep:\ny\nhi\n"
    assert len(stack.lazy_mounts()) == 1


def test_containers_share_the_image_mount_and_survive_a_restart(stack: Stack, images: dict[str, str]) -> None:
    """Two containers of one image stand on one lazy mount; the snapshotter restarts under a running
    container (the mount daemon lives on); after a reboot-like loss of the mounts, they come back."""
    c = stack.containerd
    ref = images["layered:1"]
    c.ctr_remote("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)
    c.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, ref, "long-1", "sleep", "1000")
    c.ctr("run", "-d", "--snapshotter", SNAPSHOTTER, ref, "long-2", "sleep", "1000")
    try:
        assert len(stack.lazy_mounts()) == 1
        stack.restart()
        assert c.ctr("task", "exec", "--exec-id", "read", "long-1", "cat", "/etc/motd").decode() == MOTD
        out = c.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "after-restart", "cat", "/keep/y")
        assert out.decode() == "y\n"
    finally:
        for name in ("long-1", "long-2"):
            c.ctr("task", "kill", "-s", "KILL", name)
            with contextlib.suppress(AssertionError):
                c.ctr("task", "delete", name)  # it may still be ending: then -f
            with contextlib.suppress(AssertionError):
                c.ctr("task", "delete", "-f", name)
            c.ctr("container", "delete", name)
    stack.restart(between=lambda: unmount_under(stack.snapshotter_root))  # as after a reboot
    assert len(stack.lazy_mounts()) == 1
    out = c.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "after-reboot", "cat", "/etc/motd")
    assert out.decode() == MOTD


def test_layers_without_a_toc_are_unpacked_by_containerd(
    stack: Stack, images: dict[str, str], registry: Registry, container_tools: ContainerTools, tmp_path: Path
) -> None:
    """A gzip layer (no TOC): rpull falls back to containerd's download and unpack, and runs."""
    layout = tmp_path / "layout"
    run_cli(tmp_path / "root", "pull", "--eager", images["other:1"])
    run_cli(tmp_path / "root", "export", images["other:1"], f"oci:{layout}:gzip")
    ref = f"{registry.address}/test/gzip:1"
    container_tools.skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-compress-format",
        "gzip",
        f"oci:{layout}:gzip",
        f"docker://{ref}",
    )
    c = stack.containerd
    mounts = stack.lazy_mounts()
    c.ctr_remote("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)
    top = layer_digests(c, ref)[-1]
    assert top in c.ctr("content", "ls", "-q").decode().split()  # downloaded by containerd
    assert stack.lazy_mounts() == mounts  # and unpacked by it: nothing served lazily
    out = c.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "gzip", "cat", "/etc/other")
    assert out.decode() == "gzip\n"


@pytest.fixture
def proxy(registry: Registry) -> Iterator[Proxy]:
    server = Proxy(registry.address)
    yield server
    server.stop()


def run_status(c: Containerd, ref: str, name: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """`ctr run` of a container whose command may fail: its status and output, in bounded time."""
    command = ["ctr", "--address", str(c.socket), "--namespace", c.NAMESPACE, "run", "--rm"]
    command += ["--snapshotter", SNAPSHOTTER, ref, name, *argv]
    return subprocess.run(command, capture_output=True, timeout=READ_TIMEOUT + 60, env=c.env)


def test_registry_down_and_lying_registry_fail_reads_never_serve_bad_bytes(
    stack: Stack, images: dict[str, str], proxy: Proxy
) -> None:
    """Behind a proxy that stops answering, a read of a layer's unfetched chunks fails with EIO within
    the snapshotter's timeout; a proxy that flips bytes gets reads refused, never its bytes served."""
    c = stack.containerd
    ref = images["big:1"].replace(images["big:1"].split("/")[0], proxy.address)
    c.ctr_remote("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)
    proxy.corrupt = True
    lied = run_status(c, ref, "lied", "sha256sum", "/big.bin")
    assert lied.returncode != 0 and b"Input/output error" in lied.stderr + lied.stdout
    proxy.corrupt = False
    proxy.answering.clear()
    started = time.monotonic()
    down = run_status(c, ref, "down", "sha256sum", "/big.bin")
    assert down.returncode != 0 and b"Input/output error" in down.stderr + down.stdout
    assert time.monotonic() - started < READ_TIMEOUT + 30
    proxy.answering.set()
    good = run_status(c, ref, "good", "sha256sum", "/big.bin")
    assert good.stdout.decode().split()[0] == hashlib.sha256(BIG).hexdigest()


def test_unusable_labels_fall_back_to_unpacking(stack: Stack, images: dict[str, str]) -> None:
    """Labels that name no image we can read (a bad digest, an unknown registry) are not an error:
    the layer is unpacked as containerd's own snapshotter would, and the snapshotter goes on."""
    api = load()
    channel = grpc.insecure_channel(f"unix://{stack.socket}")
    stub = api.services.SnapshotsStub(channel)
    ref, digest = (
        "containerd.io/snapshot/remote/stargz.reference",
        "containerd.io/snapshot/remote/stargz.digest",
    )
    variants = [
        {ref: images["big:1"], digest: "sha256:not-a-digest"},
        {ref: "127.0.0.1:1/no/such:1", digest: "sha256:" + "0" * 64},
    ]
    for number, variant in enumerate(variants):
        key = f"bad-labels-{number}"
        variant["containerd.io/snapshot.ref"] = f"target-{number}"
        response = stub.Prepare(api.snapshots.PrepareSnapshotRequest(key=key, labels=variant), timeout=30)
        assert [m.type for m in response.mounts] == ["bind"]  # an ordinary, empty snapshot to unpack into
        stub.Remove(api.snapshots.RemoveSnapshotRequest(key=key), timeout=10)
    channel.close()
    assert stack.snapshotter.poll() is None


def test_podman_zstd_chunked_image_is_served_lazily(
    stack: Stack, registry: Registry, container_tools: ContainerTools, busybox_tar: Path, tmp_path: Path
) -> None:
    """An image podman pushed in zstd:chunked (its own TOCs, rolling chunks, the legacy footer)."""
    require_tools("podman", "unshare")
    unique = tmp_path / "busybox-podman.tar"  # a layer no image of the module has: it must be prepared
    shutil.copy(busybox_tar, unique)
    with tarfile.open(unique, "a") as tar:
        entry = tarfile.TarInfo("podman-was-here")
        tar.addfile(entry, io.BytesIO(b""))
    container_tools.podman("import", "--quiet", str(unique), "localhost/podman-chunked:latest")
    ref = f"{registry.address}/test/podman-chunked:1"
    container_tools.podman(
        "push", "--tls-verify=false", "--compression-format", "zstd:chunked",
        "localhost/podman-chunked:latest", f"docker://{ref}",
    )  # fmt: skip
    c = stack.containerd
    mounts = len(stack.lazy_mounts())
    c.ctr_remote("image", "rpull", "--plain-http", "--snapshotter", SNAPSHOTTER, ref)
    assert not set(layer_digests(c, ref)) & set(c.ctr("content", "ls", "-q").decode().split())
    assert len(stack.lazy_mounts()) == mounts + 1
    out = c.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "podman", "busybox", "echo", "podman's")
    assert out.decode() == "podman's\n"


def test_credentials_come_from_docker_s_config(
    stack: Stack, busybox_tar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry that wants a password: the snapshotter (and the mounts it starts) read it from
    docker's ~/.docker/config.json, as containerd's users keep it; ctr-remote passes its own."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b's3cret', bcrypt.gensalt(rounds=4)).decode()}\n")
    guarded = Registry(tmp_path / "registry", access=Access(load_htpasswd(htpasswd), ()))
    try:
        home = tmp_path / "home"
        (home / ".docker").mkdir(parents=True)
        secret = base64.b64encode(b"alice:s3cret").decode()
        (home / ".docker" / "config.json").write_text(
            json.dumps({"auths": {guarded.address: {"auth": secret}}})
        )
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))  # no podman auth file on the way
        store = Store(tmp_path / "root")
        with open(busybox_tar, "rb") as f:
            busybox = import_tarball(store, f, "busybox:1")
        secret_layer = make_tar(tmp_path / "guarded.tar", [(info("guarded"), b"behind a password\n")])
        add_layer(store, busybox, secret_layer, "guarded:1", "a layer only the guarded registry has")
        ref = f"{guarded.address}/test/guarded:1"
        run_cli(tmp_path / "root", "push", "guarded:1", ref)
        stack.restart()  # the snapshotter now runs with this HOME
        c = stack.containerd
        mounts = len(stack.lazy_mounts())
        c.ctr_remote(
            "image", "rpull", "--plain-http", "--user", "alice:s3cret", "--snapshotter", SNAPSHOTTER, ref
        )
        guarded_layer = layer_digests(c, ref)[-1]  # busybox's may have been downloaded before
        assert guarded_layer not in c.ctr("content", "ls", "-q").decode().split()
        assert len(stack.lazy_mounts()) == mounts + 1
        out = c.ctr("run", "--rm", "--snapshotter", SNAPSHOTTER, ref, "guarded", "cat", "/guarded")
        assert out.decode() == "behind a password\n"
    finally:
        guarded.stop()
