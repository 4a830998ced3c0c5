"""Non-distributable (foreign) layers: accepted by the server without their blob, on each storage
driver; never pushed nor pulled by the client, against our server and docker-registry; an image
that needs one fails its pull (and its run) with one clear line, leaving nothing in the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.client import NonDistributableLayer
from registry.transfer import pull_image, pull_lazy, push_image
from storage.digest import Digest
from storage.importer import import_tarball
from storage.oci import NON_DISTRIBUTABLE_TYPES, Descriptor, Manifest
from storage.reference import registry_ref
from storage.store import Image, Store
from tests.conftest import CliRunner, assert_clean_error
from tests.registry.conftest import Registry
from tests.registry.test_client import DockerRegistry, docker_registry  # noqa: F401 (a fixture)

FOREIGN_BYTES = b"licensed content that no registry may hand out"
URL = "https://example.invalid/layers/base.tar.gz"


def foreign_layer(
    media_type: str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
) -> Descriptor:
    return Descriptor(media_type, Digest.of(FOREIGN_BYTES), len(FOREIGN_BYTES), urls=[URL])


def with_foreign_layer(served: Registry, media_type: str) -> dict[str, object]:
    config = served.push_blob("team/app", b"{}")
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [foreign_layer(media_type).to_json()],
    }


# The server, on each storage driver.


@pytest.mark.parametrize("media_type", sorted(NON_DISTRIBUTABLE_TYPES))
def test_a_manifest_with_a_foreign_layer_is_accepted_without_its_blob(
    served: Registry, media_type: str
) -> None:
    doc = with_foreign_layer(served, media_type)
    data = json.dumps(doc).encode()
    reply = served.push_manifest("team/app", "foreign", data)
    assert reply.status == 201, reply
    digest = reply.headers["Docker-Content-Digest"]
    for reference in ("foreign", digest):
        got = served.request("GET", f"/v2/team/app/manifests/{reference}")
        assert (got.status, got.body) == (200, data)
        head = served.request("HEAD", f"/v2/team/app/manifests/{reference}")
        assert (head.status, head.headers["Docker-Content-Digest"]) == (200, digest)
    assert served.request("GET", "/v2/team/app/tags/list").json()["tags"] == ["foreign"]
    assert served.request("HEAD", f"/v2/team/app/blobs/{Digest.of(FOREIGN_BYTES)}").status == 404


def test_a_missing_distributable_layer_is_still_refused(served: Registry) -> None:
    doc = with_foreign_layer(served, "application/vnd.oci.image.layer.v1.tar+gzip")
    reply = served.push_manifest("team/app", "broken", doc)
    assert (reply.status, reply.error_code) == (404, "MANIFEST_BLOB_UNKNOWN")


def test_a_foreign_layer_with_malformed_urls_is_invalid(served: Registry) -> None:
    doc = with_foreign_layer(served, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
    doc["layers"][0]["urls"] = "not a list"  # type: ignore[index]
    reply = served.push_manifest("team/app", "broken", doc)
    assert (reply.status, reply.error_code) == (400, "MANIFEST_INVALID")


# The client.


@pytest.fixture
def local(tmp_path: Path, busybox_tar: Path) -> Store:
    return Store(tmp_path / "local")


@pytest.fixture
def foreign_image(local: Store, busybox_tar: Path) -> Image:
    """busybox with a foreign base layer below it, whose blob the store does not have either."""
    with open(busybox_tar, "rb") as f:
        busybox = import_tarball(local, f, "busybox")
    manifest = Manifest(busybox.manifest.config, [foreign_layer(), *busybox.manifest.layers])
    local.put_image("foreign:latest", manifest)
    return local.image("foreign")


@pytest.fixture(params=["lazyctr", "docker-registry"])
def address(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "lazyctr":
        server = Registry(tmp_path / "registry")
        yield server.address
        server.stop()
    else:
        yield request.getfixturevalue("docker_registry").address


def test_push_skips_the_foreign_layer_and_pull_refuses_it(
    address: str, local: Store, foreign_image: Image, tmp_path: Path
) -> None:
    ref = registry_ref(f"{address}/test/foreign:v1")
    lines: list[str] = []
    digest = asyncio.run(push_image(local, foreign_image, ref, report=lambda r: lines.append(r.line())))
    assert digest == foreign_image.descriptor.digest
    outcomes = {line.split()[1]: line.split()[0] for line in lines}
    assert outcomes[Digest.of(FOREIGN_BYTES)] == "skipped"
    assert set(outcomes.values()) == {"pushed", "skipped"}

    other = Store(tmp_path / "other")
    expected = f"layer {Digest.of(FOREIGN_BYTES)} is non-distributable (urls: {URL}) and cannot be fetched"
    for pull in (pull_image, pull_lazy):
        with pytest.raises(NonDistributableLayer) as caught:
            asyncio.run(pull(other, str(ref)))
        assert str(caught.value) == expected
    assert other.names() == []
    assert list(other.tmp.iterdir()) == []
    assert not other.has_blob(foreign_image.manifest.config.digest)


@pytest.mark.privileged
def test_pull_and_run_of_an_image_needing_a_foreign_layer_fail_in_one_line(
    lazyctr: CliRunner, local: Store, foreign_image: Image, root: Path
) -> None:
    server = Registry(root.parent / "registry")
    try:
        target = f"{server.address}/test/foreign:v1"
        asyncio.run(push_image(local, foreign_image, registry_ref(target)))
        fragment = (
            f"layer {Digest.of(FOREIGN_BYTES)} is non-distributable (urls: {URL}) and cannot be fetched"
        )
        for args in (("pull", target), ("pull", "--eager", target), ("run", "--rm", target, "true")):
            assert_clean_error(lazyctr(*args, ok=False), fragment)
        assert json.loads(lazyctr("images", "--json").out) == []
    finally:
        server.stop()
