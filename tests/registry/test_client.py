"""The registry client against our server and against docker-registry (the CNCF distribution registry)."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.client import RegistryClient, RegistryDigestMismatch, RegistryNotFound, RegistryUnreachable
from registry.transfer import pull_image, push_image
from storage.digest import Digest
from storage.importer import import_tarball
from storage.oci import MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD, ImageConfig
from storage.reference import ImageRef, registry_ref
from storage.store import Image, Store
from tests.conftest import require_tools
from tests.registry.conftest import Registry, free_port, sha256


class DockerRegistry:
    """/usr/bin/docker-registry on 127.0.0.1, storing under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        config = root / "config.yml"
        root.mkdir(parents=True, exist_ok=True)
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.address}\n"
        )
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"docker-registry did not start: {self.proc.stderr}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def docker_registry(tmp_path: Path) -> Iterator[DockerRegistry]:
    require_tools("docker-registry")
    server = DockerRegistry(tmp_path / "docker-registry")
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "root")


@pytest.fixture
def busybox(store: Store, busybox_tar: Path) -> Image:
    with open(busybox_tar, "rb") as f:
        return import_tarball(store, f, "busybox")


def round_trip(address: str, store: Store, image: Image, other: Store) -> Image:
    ref = ImageRef.parse(f"{address}/test/busybox:v1")
    lines: list[str] = []
    digest = asyncio.run(push_image(store, image, ref, report=lambda r: lines.append(r.line())))
    assert digest == image.descriptor.digest
    assert sorted(line.split()[:2] for line in lines) == sorted(
        ["pushed", d.digest] for d in [image.manifest.config, *image.manifest.layers]
    )
    again: list[str] = []
    asyncio.run(push_image(store, image, ref, report=lambda r: again.append(r.line())))
    assert {line.split()[0] for line in again} == {"exists"}
    pulled = asyncio.run(pull_image(other, str(ref)))
    assert pulled.name == f"{address}/test/busybox:v1"
    assert pulled.descriptor.digest == image.descriptor.digest
    assert [d.digest for d in pulled.manifest.layers] == [d.digest for d in image.manifest.layers]
    assert pulled.id == image.id
    return pulled


def test_push_pull_round_trip_with_our_server(
    registry: Registry, store: Store, busybox: Image, tmp_path: Path
) -> None:
    round_trip(registry.address, store, busybox, Store(tmp_path / "other"))


@pytest.mark.privileged
def test_push_pull_round_trip_with_docker_registry(
    docker_registry: DockerRegistry, store: Store, busybox: Image, tmp_path: Path
) -> None:
    round_trip(docker_registry.address, store, busybox, Store(tmp_path / "other"))


async def _ranges(address: str, path: Path) -> None:
    data = os.urandom(300_000)
    digest = sha256(data)
    path.write_bytes(data)
    async with RegistryClient(address) as client:
        assert await client.push_blob("test/ranges", digest, path) == "pushed"
        assert await client.head_blob("test/ranges", digest) == len(data)
        for offset, length in [(0, 1), (12345, 65536), (len(data) - 10, 10), (0, len(data))]:
            got = await client.read_range("test/ranges", digest, offset, length)
            assert got == data[offset : offset + length]


def test_range_reads_from_our_server(registry: Registry, tmp_path: Path) -> None:
    asyncio.run(_ranges(registry.address, tmp_path / "blob"))


@pytest.mark.privileged
def test_range_reads_from_docker_registry(docker_registry: DockerRegistry, tmp_path: Path) -> None:
    asyncio.run(_ranges(docker_registry.address, tmp_path / "blob"))


def test_large_blob_is_pushed_in_chunks_and_mounted(registry: Registry, tmp_path: Path) -> None:
    data = os.urandom((16 << 20) + 12345)
    digest = sha256(data)
    path = tmp_path / "big"
    path.write_bytes(data)

    async def main() -> None:
        async with RegistryClient(registry.address) as client:
            assert await client.push_blob("test/a", digest, path) == "pushed"
            assert await client.push_blob("test/a", digest, path) == "exists"
            assert await client.push_blob("test/b", digest, path, mount_from="test/a") == "mounted"
            with open(tmp_path / "back", "w+b") as f:
                assert await client.get_blob("test/b", digest, f, len(data)) == len(data)

    asyncio.run(main())
    assert (tmp_path / "back").read_bytes() == data


def test_pull_converts_a_gzip_layer_to_zstd_chunked(registry: Registry, store: Store) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hello\n"))
    tar_bytes = buffer.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    config = ImageConfig(diff_ids=[Digest(sha256(tar_bytes))]).to_bytes()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": MEDIA_CONFIG,
            "digest": registry.push_blob("test/gz", config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": MEDIA_LAYER_GZIP,
                "digest": registry.push_blob("test/gz", layer),
                "size": len(layer),
            }
        ],
    }
    assert registry.push_manifest("test/gz", "v1", manifest).status == 201
    image = asyncio.run(pull_image(store, f"{registry.address}/test/gz:v1"))
    (converted,) = image.manifest.layers
    assert converted.media_type == MEDIA_LAYER_ZSTD
    assert image.config.diff_ids == [sha256(tar_bytes)]
    with store.open_layer(converted) as reader:
        assert reader.read_file(reader.entry("hello.txt")) == b"hello\n"


def test_tampered_blob_is_refused_and_nothing_is_named(
    registry: Registry, store: Store, busybox: Image, tmp_path: Path
) -> None:
    ref = registry_ref(f"{registry.address}/test/busybox:latest")
    asyncio.run(push_image(store, busybox, ref))
    blob = registry.root / "blobs" / "sha256" / busybox.manifest.layers[0].digest.hex
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    other = Store(tmp_path / "other")
    with pytest.raises(RegistryDigestMismatch, match="does not match its digest"):
        asyncio.run(pull_image(other, str(ref)))
    assert other.names() == []
    assert list(other.tmp.iterdir()) == []


def test_tampered_manifest_is_refused(registry: Registry, store: Store, busybox: Image) -> None:
    ref = registry_ref(f"{registry.address}/test/busybox:latest")
    asyncio.run(push_image(store, busybox, ref))
    blob = registry.root / "blobs" / "sha256" / busybox.descriptor.digest.hex
    blob.write_bytes(blob.read_bytes().replace(b"layers", b"layerz"))

    async def by(reference: str) -> None:
        async with RegistryClient(registry.address) as client:
            await client.get_manifest("test/busybox", reference)

    for reference in ("latest", busybox.descriptor.digest):
        with pytest.raises(RegistryDigestMismatch, match="does not match its digest"):
            asyncio.run(by(reference))


def test_unknown_tag_and_connection_refused_are_clean_errors(registry: Registry, store: Store) -> None:
    with pytest.raises(RegistryNotFound, match=r"MANIFEST_UNKNOWN|NAME_UNKNOWN"):
        asyncio.run(pull_image(store, f"{registry.address}/test/nothing:nope"))
    with pytest.raises(RegistryUnreachable, match="connection refused"):
        asyncio.run(pull_image(store, f"127.0.0.1:{free_port()}/test/nothing:nope"))
    assert store.names() == []
