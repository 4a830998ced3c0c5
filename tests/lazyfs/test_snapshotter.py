"""`lazyctr snapshotter`: containerd's Snapshots API over a real unix socket, called with gRPC as
containerd calls it. Mounts as containerd's overlayfs snapshotter answers them, containerd's rules
as status codes, records that survive a restart, and cleanup of what a crash left."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from lazyfs.snapshotter.api import Api, load, rewrite
from lazyfs.snapshotter.remote import RemoteImages
from tests.conftest import cli_command
from tests.lazyfs.conftest import run_cli

ACTIVE, VIEW, COMMITTED = 2, 1, 3


@dataclass
class Snapshotter:
    """A running `lazyctr snapshotter` and a client of it."""

    root: Path
    address: Path
    process: subprocess.Popen[str]
    api: Api
    stub: Any

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshotter" / "snapshots"

    def call(self, method: str, **fields: Any) -> Any:
        request_type = {
            "Prepare": "PrepareSnapshotRequest",
            "View": "ViewSnapshotRequest",
            "Mounts": "MountsRequest",
            "Commit": "CommitSnapshotRequest",
            "Remove": "RemoveSnapshotRequest",
            "Stat": "StatSnapshotRequest",
            "Update": "UpdateSnapshotRequest",
            "List": "ListSnapshotsRequest",
            "Usage": "UsageRequest",
            "Cleanup": "CleanupRequest",
        }[method]
        request = getattr(self.api.snapshots, request_type)(snapshotter="lazyctr", **fields)
        return getattr(self.stub, method)(request, timeout=10)

    def code(self, method: str, **fields: Any) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as caught:
            self.call(method, **fields)
        code: grpc.StatusCode = caught.value.code()
        return code


def start(root: Path, address: Path, *options: str) -> subprocess.Popen[str]:
    """The snapshotter, its log in `root`/snapshotter.log."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "snapshotter.log", "a") as log:
        process = subprocess.Popen(
            cli_command(root, "snapshotter", "--address", str(address), *options),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # printed once the socket answers
    if "serving on" not in line:
        process.kill()
        process.wait()
        raise AssertionError(f"the snapshotter did not start: {line}{(root / 'snapshotter.log').read_text()}")
    return process


def stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=20)
    assert process.returncode == 0


@pytest.fixture
def snapshotter(tmp_path: Path) -> Iterator[Snapshotter]:
    address = tmp_path / "run" / "snapshotter.sock"
    process = start(tmp_path / "root", address)
    api = load()
    channel = grpc.insecure_channel(f"unix://{address}")
    service = Snapshotter(tmp_path / "root", address, process, api, api.services.SnapshotsStub(channel))
    try:
        yield service
    finally:
        channel.close()
        if service.process.poll() is None:
            stop(service.process)


def options(mount: Any) -> dict[str, str]:
    return dict(o.split("=", 1) if "=" in o else (o, "") for o in mount.options)


def test_layers_stack_as_containerd_overlayfs_snapshotter_mounts_them(snapshotter: Snapshotter) -> None:
    s = snapshotter
    (base,) = s.call("Prepare", key="extract-1", parent="").mounts
    assert (base.type, base.options) == ("bind", ["rw", "rbind"])
    Path(base.source, "etc").mkdir()
    Path(base.source, "etc", "hostname").write_text("layer one\n")
    s.call("Commit", name="layer-1", key="extract-1", labels={"containerd.io/snapshot.ref": "sha256:1"})

    (upper,) = s.call("Prepare", key="extract-2", parent="layer-1").mounts
    assert upper.type == "overlay"
    opts = options(upper)
    assert opts["lowerdir"] == base.source  # the committed layer's directory, unchanged
    assert Path(opts["upperdir"]).is_dir() and Path(opts["workdir"]).is_dir()
    Path(opts["upperdir"], "two").write_text("layer two\n")
    s.call("Commit", name="layer-2", key="extract-2")

    (container,) = s.call("Prepare", key="container", parent="layer-2").mounts
    assert options(container)["lowerdir"].split(":") == [opts["upperdir"], base.source]  # nearest first
    (view,) = s.call("View", key="view-2", parent="layer-2").mounts
    assert "upperdir" not in options(view) and options(view)["lowerdir"].count(":") == 1
    (view_one,) = s.call("View", key="view-1", parent="layer-1").mounts
    assert (view_one.type, view_one.source, view_one.options) == ("bind", base.source, ["ro", "rbind"])
    assert s.call("Mounts", key="container").mounts == [container]

    info = s.call("Stat", key="layer-1").info
    assert (info.name, info.parent, info.kind) == ("layer-1", "", COMMITTED)
    assert dict(info.labels) == {"containerd.io/snapshot.ref": "sha256:1"}
    assert s.call("Stat", key="container").info.kind == ACTIVE
    assert s.call("Stat", key="view-1").info.kind == VIEW
    assert s.call("Stat", key="layer-2").info.parent == "layer-1"
    listed = {i.name: i.kind for r in s.call("List") for i in r.info}
    assert listed == {
        "layer-1": COMMITTED,
        "layer-2": COMMITTED,
        "container": ACTIVE,
        "view-1": VIEW,
        "view-2": VIEW,
    }


def test_usage_counts_bytes_and_inodes(snapshotter: Snapshotter) -> None:
    (mount,) = snapshotter.call("Prepare", key="active", parent="").mounts
    Path(mount.source, "data").write_bytes(os.urandom(1 << 20))
    os.link(Path(mount.source, "data"), Path(mount.source, "same-data"))  # one inode, counted once
    usage = snapshotter.call("Usage", key="active")
    assert usage.size >= 1 << 20 and usage.size < 2 << 20
    assert usage.inodes == 2  # the directory and the file
    snapshotter.call("Commit", name="done", key="active")
    assert snapshotter.call("Usage", key="done").size == usage.size  # counted at commit, kept


def test_labels_update_as_the_field_mask_says(snapshotter: Snapshotter) -> None:
    s = snapshotter
    s.call("Prepare", key="k", parent="", labels={"a": "1", "b": "2"})
    info = s.api.snapshots.Info(name="k", labels={"a": "10", "c": "3"})

    def update(*paths: str) -> dict[str, str]:
        mask = {"paths": list(paths)}
        return dict(s.call("Update", info=info, update_mask=mask).info.labels)

    assert update("labels.a") == {"a": "10", "b": "2"}
    assert update("labels.b") == {"a": "10"}  # named, and absent from the request: deleted
    assert update() == {"a": "10", "c": "3"}  # no mask: replaced
    assert dict(s.call("Stat", key="k").info.labels) == {"a": "10", "c": "3"}
    assert s.code("Update", info=info, update_mask={"paths": ["parent"]}) == grpc.StatusCode.INVALID_ARGUMENT


def test_containerd_rules_answer_its_status_codes(snapshotter: Snapshotter) -> None:
    s = snapshotter
    s.call("Prepare", key="active", parent="")
    assert s.code("Prepare", key="active", parent="") == grpc.StatusCode.ALREADY_EXISTS
    assert s.code("Prepare", key="", parent="") == grpc.StatusCode.INVALID_ARGUMENT
    assert s.code("Prepare", key="orphan", parent="no-such") == grpc.StatusCode.NOT_FOUND
    assert s.code("Prepare", key="on-active", parent="active") == grpc.StatusCode.FAILED_PRECONDITION
    assert s.code("Stat", key="no-such") == grpc.StatusCode.NOT_FOUND
    assert s.code("Mounts", key="no-such") == grpc.StatusCode.NOT_FOUND
    assert s.code("Remove", key="no-such") == grpc.StatusCode.NOT_FOUND
    s.call("Commit", name="committed", key="active")
    assert s.code("Commit", name="again", key="active") == grpc.StatusCode.NOT_FOUND  # renamed by the commit
    assert s.code("Mounts", key="committed") == grpc.StatusCode.FAILED_PRECONDITION
    s.call("View", key="view", parent="committed")
    assert s.code("Commit", name="from-view", key="view") == grpc.StatusCode.FAILED_PRECONDITION
    s.call("Prepare", key="other", parent="")
    assert s.code("Commit", name="committed", key="other") == grpc.StatusCode.ALREADY_EXISTS
    assert s.code("Remove", key="committed") == grpc.StatusCode.FAILED_PRECONDITION  # it has a child
    s.call("Remove", key="view")
    s.call("Remove", key="committed")
    assert s.code("Stat", key="committed") == grpc.StatusCode.NOT_FOUND
    assert s.process.poll() is None  # refusals are answers, not crashes


def test_records_and_files_survive_a_restart(snapshotter: Snapshotter, tmp_path: Path) -> None:
    s = snapshotter
    (mount,) = s.call("Prepare", key="a", parent="").mounts
    Path(mount.source, "kept").write_text("still here\n")
    s.call("Commit", name="layer", key="a")
    (before,) = s.call("Prepare", key="container", parent="layer").mounts
    stop(s.process)

    s.process = start(s.root, s.address)
    (after,) = s.call("Mounts", key="container").mounts
    assert after == before
    assert Path(options(after)["lowerdir"], "kept").read_text() == "still here\n"
    assert s.call("Stat", key="layer").info.kind == COMMITTED
    assert s.call("Prepare", key="a", parent="layer").mounts  # the commit freed its key, as before


def test_removal_and_cleanup_leave_no_directories(snapshotter: Snapshotter) -> None:
    s = snapshotter
    s.call("Prepare", key="gone", parent="")
    s.call("Prepare", key="kept", parent="")
    s.call("Remove", key="gone")

    def left() -> list[str]:
        return sorted(p.name for p in s.snapshots.iterdir() if p.name != ".trash")

    assert len(left()) == 1
    crash_left = s.snapshots / "999"  # a directory whose record a crash never wrote
    (crash_left / "fs").mkdir(parents=True)
    s.call("Cleanup")
    assert len(left()) == 1 and not crash_left.exists()
    assert s.call("Stat", key="kept").info.kind == ACTIVE


def test_bad_address_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    proc = run_cli(tmp_path / "root", "snapshotter", "--address", str(tmp_path / "file" / "sock"), ok=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_protos_are_rewritten_for_python_without_changing_the_wire() -> None:
    text = rewrite(
        'import weak "gogoproto/gogo.proto";\n'
        'import "github.com/containerd/containerd/api/types/mount.proto";\n'
        "message Info {\n"
        "\toption (gogoproto.goproto_stringer) = false;\n"
        "\tstring name = 1 [(gogoproto.nullable) = false, (gogoproto.stdtime) = true];\n"
        "}\n"
    )
    assert "gogoproto" not in text
    assert 'import "lazyctr_containerd/mount.proto";' in text
    assert "string name = 1;" in text


def test_the_service_has_containerd_s_full_name() -> None:
    api = load()
    service = api.snapshots.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    assert {m.name for m in service.methods} == {
        "Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage", "Cleanup",
    }  # fmt: skip


def test_plain_http_as_containerd_hosts_configuration_says(tmp_path: Path) -> None:
    hosts = tmp_path / "certs.d"
    for host, text in {
        "10.0.0.1:5000": 'server = "http://10.0.0.1:5000"\n',
        "10.0.0.2:5000": '[host."http://10.0.0.2:5000"]\n  capabilities = ["pull"]\n',
        "10.0.0.3:5000": 'server = "https://10.0.0.3:5000"\n',
        "10.0.0.4:5000": "server = [not toml\n",
    }.items():
        (hosts / host).mkdir(parents=True)
        (hosts / host / "hosts.toml").write_text(text)
    remote = RemoteImages(tmp_path / "root", frozenset({"10.0.0.9:5000"}), hosts_dir=hosts)
    try:
        plain = {host for host in (f"10.0.0.{n}:5000" for n in range(1, 10)) if remote.plain_http(host)}
        assert plain == {"10.0.0.1:5000", "10.0.0.2:5000", "10.0.0.9:5000"}
    finally:
        remote.close()
