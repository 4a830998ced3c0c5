"""sha512 through the client and the store: blobs, ranges and whole images pushed to and pulled from
our server; docker-registry, which has no sha512 manifests, ends a push in one clear error; digests
of algorithms nobody registered are refused before a request is sent."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from registry.client import RegistryClient, RegistryClientError, RegistryDigestMismatch
from registry.transfer import pull_image, pull_lazy, push_image
from storage.digest import Digest
from storage.errors import InvalidReference
from storage.importer import import_tarball
from storage.oci import MEDIA_MANIFEST, Descriptor, Manifest
from storage.reference import registry_ref
from storage.store import Image, Store
from tests.conftest import CliRunner, assert_clean_error
from tests.registry.conftest import Registry
from tests.registry.test_client import DockerRegistry, docker_registry  # noqa: F401 (a fixture)
from tests.registry.test_foreign_layers import address  # noqa: F401 (a fixture)

DATA = os.urandom(200_000)


def redescribed_with_sha512(store: Store, name: str, new_name: str) -> Image:
    """`name` again as `new_name`, its manifest, config and layer descriptors naming sha512 digests
    of the same bytes (the blobs linked under `blobs/sha512/`): what a sha512 producer would write."""
    image = store.image(name)

    def rehashed(descriptor: Descriptor) -> Descriptor:
        path = store.blob_path(descriptor.digest)
        digest = Digest.of_file(str(path), algorithm="sha512")
        if not store.has_blob(digest):
            store.blob_path(digest).parent.mkdir(exist_ok=True)
            os.link(path, store.blob_path(digest))
        return Descriptor(descriptor.media_type, digest, descriptor.size, dict(descriptor.annotations))

    manifest = Manifest(rehashed(image.manifest.config), [rehashed(layer) for layer in image.manifest.layers])
    data = manifest.to_bytes()
    store.tag(new_name, Descriptor(MEDIA_MANIFEST, store.put_blob(data, "sha512"), len(data)))
    return store.image(new_name)


@pytest.fixture
def sha512_busybox(tmp_path: Path, busybox_tar: Path) -> Image:
    store = Store(tmp_path / "local")
    with open(busybox_tar, "rb") as f:
        import_tarball(store, f, "busybox")
    return redescribed_with_sha512(store, "busybox:latest", "busybox:sha512")


def test_sha512_blobs_through_the_client(address: str, tmp_path: Path) -> None:  # noqa: F811
    digest = Digest.of(DATA, "sha512")
    (tmp_path / "blob").write_bytes(DATA)

    async def flow() -> None:
        async with RegistryClient(address) as client:
            assert await client.push_blob("test/blobs", digest, tmp_path / "blob") == "pushed"
            assert await client.push_blob("test/blobs", digest, tmp_path / "blob") == "exists"
            assert await client.head_blob("test/blobs", digest) == len(DATA)
            with open(tmp_path / "copy", "w+b") as f:
                assert await client.get_blob("test/blobs", digest, f, len(DATA)) == len(DATA)
            assert (tmp_path / "copy").read_bytes() == DATA
            assert await client.read_range("test/blobs", digest, 1000, 500) == DATA[1000:1500]
            assert await client.read_ranges("test/blobs", digest, [(0, 10), (5000, 20)]) == [
                DATA[:10],
                DATA[5000:5020],
            ]
            other = Digest.of(DATA[:-1], "sha512")
            (tmp_path / "short").write_bytes(DATA[:-1])
            await client.push_blob("test/other", other, tmp_path / "short")
            with open(tmp_path / "wrong", "w+b") as f, pytest.raises(RegistryDigestMismatch):
                # The other blob's bytes under this digest: what a lying registry would send.
                await client.get_blob("test/other", other, f, len(DATA))

    asyncio.run(flow())


def test_unknown_algorithms_are_refused_before_a_request(registry: Registry, tmp_path: Path) -> None:
    async def flow(call: str) -> None:
        async with RegistryClient(registry.address) as client:
            if call == "head":
                await client.head_blob("test/x", "md5:" + "0" * 32)
            else:
                await client.get_manifest("test/x", "sha1:" + "0" * 40)

    for call in ("head", "manifest"):
        with pytest.raises(InvalidReference, match="unsupported digest algorithm"):
            asyncio.run(flow(call))


def test_a_sha512_image_round_trips_through_our_server(
    registry: Registry, sha512_busybox: Image, tmp_path: Path
) -> None:
    ref = registry_ref(f"{registry.address}/test/busybox:sha512")
    pushed = asyncio.run(push_image(Store(tmp_path / "local"), sha512_busybox, ref))
    assert pushed == sha512_busybox.descriptor.digest and pushed.algorithm == "sha512"
    tags = registry.request("GET", "/v2/test/busybox/tags/list").json()["tags"]
    assert tags == ["sha512"]
    assert registry.request("HEAD", f"/v2/test/busybox/manifests/{pushed}").status == 200

    lazy = Store(tmp_path / "lazy")
    image = asyncio.run(pull_lazy(lazy, str(ref)))
    assert image.descriptor.digest == pushed
    assert image.manifest.layers[0].digest.algorithm == "sha512" and image.id.algorithm == "sha512"
    assert not lazy.is_complete(image)  # lazily: the layer blobs stay in the registry

    eager = Store(tmp_path / "eager")
    by_digest = f"{registry.address}/test/busybox@{pushed}"
    image = asyncio.run(pull_image(eager, by_digest))
    assert eager.is_complete(image)
    assert image.name == f"{registry.address}/test/busybox:sha512-{pushed.hex[:121]}"
    layer = image.manifest.layers[0]
    assert layer.digest == sha512_busybox.manifest.layers[0].digest  # zstd:chunked: kept as it was
    with eager.open_layer(layer) as reader:
        assert reader.entry("bin/busybox") is not None


def test_a_sha512_push_to_docker_registry_is_one_clear_error(
    docker_registry: DockerRegistry,  # noqa: F811
    sha512_busybox: Image,
    tmp_path: Path,
) -> None:
    ref = registry_ref(f"{docker_registry.address}/test/busybox:sha512")
    with pytest.raises(RegistryClientError) as caught:
        asyncio.run(push_image(Store(tmp_path / "local"), sha512_busybox, ref))
    message = str(caught.value)
    assert "\n" not in message and "DIGEST_INVALID" in message, message
    assert f"manifest test/busybox@{sha512_busybox.descriptor.digest}" in message
    # Nor can it be asked for a manifest by a sha512 digest: an error of the registry's, in one line.
    by_digest = f"{docker_registry.address}/test/busybox@{sha512_busybox.descriptor.digest}"
    other = Store(tmp_path / "other")
    with pytest.raises(RegistryClientError) as caught:
        asyncio.run(pull_lazy(other, by_digest))
    assert "\n" not in str(caught.value) and "test/busybox@sha512:" in str(caught.value)
    assert other.names() == []


def test_cli_push_and_pull_of_sha512(
    lazyctr: CliRunner,
    registry: Registry,
    docker_registry: DockerRegistry,  # noqa: F811
    root: Path,
    busybox_tar: Path,
) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    image = redescribed_with_sha512(Store(root), "busybox:latest", "busybox:sha512")
    pushed = lazyctr("push", "busybox:sha512", f"{registry.address}/test/busybox:sha512").out.splitlines()
    assert pushed[-1].split()[:2] == ["manifest", image.descriptor.digest]
    assert {line.split()[1].partition(":")[0] for line in pushed} == {"sha512"}
    failed = lazyctr("push", "busybox:sha512", f"{docker_registry.address}/test/busybox:sha512", ok=False)
    assert_clean_error(failed, "DIGEST_INVALID")

    lazyctr("rmi", "busybox:sha512", "busybox:latest")
    lazyctr("gc")
    assert list((root / "store" / "blobs" / "sha512").iterdir()) == []
    by_digest = f"{registry.address}/test/busybox@{image.descriptor.digest}"
    assert lazyctr("pull", by_digest).out.strip() == image.id
    lazyctr("gc")  # what the lazily pulled image names stays: its manifest and config
    kept = {p.name for p in (root / "store" / "blobs" / "sha512").iterdir()}
    assert kept == {image.descriptor.digest.hex, image.id.hex}
    assert lazyctr("cat", by_digest, "/etc/passwd").stdout.startswith(b"root:")
    assert_clean_error(
        lazyctr("pull", f"{registry.address}/test/x@md5:{'0' * 32}", ok=False), "unsupported digest algorithm"
    )
    assert_clean_error(
        lazyctr("pull", f"{registry.address}/test/x@sha512:{'0' * 128}", ok=False), "MANIFEST_UNKNOWN"
    )
