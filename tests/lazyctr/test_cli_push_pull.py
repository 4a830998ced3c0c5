"""`lazyctr push` and `lazyctr pull` through the real CLI, against our server and docker-registry."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliRunner, assert_clean_error
from tests.registry.conftest import Registry, free_port
from tests.registry.test_client import DockerRegistry, docker_registry  # noqa: F401 (a fixture)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(tmp_path / "registry")
    yield registry
    registry.stop()


def busybox_file(busybox_tar: Path, name: str) -> bytes:
    with tarfile.open(busybox_tar) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def push_then_pull(lazyctr: CliRunner, busybox_tar: Path, address: str) -> None:
    image_id = lazyctr("import", str(busybox_tar), "busybox").out.strip()
    target = f"{address}/test/busybox:latest"
    lazyctr("tag", "busybox", target)
    pushed = lazyctr("push", target).out.splitlines()
    assert [line.split()[0] for line in pushed[:-1]] == ["pushed", "pushed"]
    assert all(line.split()[1].startswith("sha256:") for line in pushed[:-1])
    manifest_digest = pushed[-1].split()[1]
    assert pushed[-1].startswith("manifest sha256:")
    again = lazyctr("push", "busybox", f"{address}/test/busybox:v2").out.splitlines()
    assert [line.split()[0] for line in again[:-1]] == ["exists", "exists"]

    lazyctr("rmi", "busybox", target)
    lazyctr("gc")
    assert lazyctr("pull", target).out.strip() == image_id
    (row,) = json.loads(lazyctr("images", "--json").out)
    assert row["Name"] == target
    inspect = json.loads(lazyctr("inspect", target, "--json").out)
    assert manifest_digest in json.dumps(inspect)
    for path in ("bin/busybox", "etc/passwd"):
        assert lazyctr("cat", target, "/" + path).stdout == busybox_file(busybox_tar, path)


def test_push_and_pull_with_our_server(lazyctr: CliRunner, busybox_tar: Path, server: Registry) -> None:
    push_then_pull(lazyctr, busybox_tar, server.address)


@pytest.mark.privileged
def test_push_and_pull_with_docker_registry(
    lazyctr: CliRunner,
    busybox_tar: Path,
    docker_registry: DockerRegistry,  # noqa: F811
) -> None:
    push_then_pull(lazyctr, busybox_tar, docker_registry.address)


def test_pull_errors_are_one_line_and_name_nothing(
    lazyctr: CliRunner, busybox_tar: Path, server: Registry
) -> None:
    refused = lazyctr("pull", f"127.0.0.1:{free_port()}/test/busybox:latest", ok=False)
    assert_clean_error(refused, "connection refused")
    unknown_repo = lazyctr("pull", f"{server.address}/test/nothing:latest", ok=False)
    assert_clean_error(unknown_repo, "UNKNOWN")
    assert_clean_error(lazyctr("pull", "busybox:latest", ok=False), "names no registry")

    lazyctr("import", str(busybox_tar), f"{server.address}/test/busybox:latest")
    lazyctr("push", f"{server.address}/test/busybox:latest")
    assert_clean_error(lazyctr("pull", f"{server.address}/test/busybox:nope", ok=False), "MANIFEST_UNKNOWN")
    lazyctr("rmi", f"{server.address}/test/busybox:latest")
    for blob in (server.root / "blobs" / "sha256").iterdir():
        data = bytearray(blob.read_bytes())
        if len(data) > 100_000:  # the layer
            data[len(data) // 2] ^= 0xFF
            blob.write_bytes(bytes(data))
    # An eager pull checks the whole blob (a lazy one checks each chunk as it is read: tests/lazyfs).
    tampered = lazyctr("pull", "--eager", f"{server.address}/test/busybox:latest", ok=False)
    assert_clean_error(tampered, "does not match its digest")
    assert json.loads(lazyctr("images", "--json").out) == []


def test_push_needs_a_registry_host(lazyctr: CliRunner, busybox_tar: Path) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    assert_clean_error(lazyctr("push", "busybox", ok=False), "names no registry")
    assert_clean_error(lazyctr("push", "nothing", "127.0.0.1:5000/x:y", ok=False), "image not known")
