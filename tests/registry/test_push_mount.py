"""A push uploads only what is new to the registry: blobs another repository of it holds are mounted
(from the repository the record of blob locations names, or with OCI 1.1's mount without `from`),
counted on the wire by a proxy in front of our server and docker-registry."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from registry.blob_locations import DATABASE, BlobLocations
from registry.transfer import pull_image, pull_lazy, push_image
from storage.oci import MEDIA_EMPTY, MEDIA_MANIFEST, Descriptor, Manifest
from storage.reference import registry_ref
from storage.store import Image, Store
from tests.registry import test_client, test_foreign_layers
from tests.registry.conftest import Registry
from tests.registry.proxy import Proxy

# The fixtures shared with those modules: a store with busybox, and our server or docker-registry.
store, busybox, docker_registry = test_client.store, test_client.busybox, test_client.docker_registry
address = test_foreign_layers.address


@pytest.fixture
def proxy(address: str) -> Iterator[Proxy]:
    server = Proxy(address)
    yield server
    server.stop()


def push(store: Store, image: Image, ref: str) -> dict[str, str]:
    """Push `image` to `ref`; each blob's outcome by digest."""
    outcomes: dict[str, str] = {}
    asyncio.run(
        push_image(store, image, registry_ref(ref), report=lambda r: outcomes.update({r.digest: r.outcome}))
    )
    return outcomes


def blobs_of(image: Image) -> list[str]:
    return [str(d.digest) for d in [image.manifest.config, *image.manifest.layers]]


@pytest.mark.privileged
def test_a_push_to_a_second_repository_uploads_no_blob_bytes(
    proxy: Proxy, store: Store, busybox: Image, tmp_path: Path
) -> None:
    layer_size = busybox.manifest.layers[0].size
    assert set(push(store, busybox, f"{proxy.address}/team/app:1").values()) == {"pushed"}
    assert proxy.uploaded >= layer_size
    recorded = BlobLocations(store.root)
    assert all(recorded.repositories(proxy.address, d) == ["team/app"] for d in blobs_of(busybox))

    first = proxy.uploaded
    assert set(push(store, busybox, f"{proxy.address}/team/copy:1").values()) == {"mounted"}
    assert proxy.uploaded == first  # not a byte of a blob went up again
    assert set(recorded.repositories(proxy.address, blobs_of(busybox)[1])) == {"team/app", "team/copy"}
    pulled = asyncio.run(pull_image(Store(tmp_path / "other"), f"{proxy.address}/team/copy:1"))
    assert pulled.descriptor.digest == busybox.descriptor.digest


@pytest.mark.privileged
def test_a_pulled_image_goes_to_another_repository_by_mounts(
    proxy: Proxy, store: Store, busybox: Image, tmp_path: Path
) -> None:
    push(store, busybox, f"{proxy.address}/team/app:1")
    for pull in (pull_image, pull_lazy):  # each records where the image's blobs live
        other = Store(tmp_path / pull.__name__)
        pulled = asyncio.run(pull(other, f"{proxy.address}/team/app:1"))
        assert BlobLocations(other.root).repositories(proxy.address, blobs_of(busybox)[1]) == ["team/app"]
        before = proxy.uploaded
        outcomes = push(other, pulled, f"{proxy.address}/team/{pull.__name__.replace('_', '-')}:1")
        assert set(outcomes.values()) == {"mounted"} and proxy.uploaded == before


def test_a_stale_record_still_pushes(
    registry: Registry, store: Store, busybox: Image, tmp_path: Path
) -> None:
    push(store, busybox, f"{registry.address}/team/app:1")
    layer = str(busybox.manifest.layers[0].digest)
    assert registry.request("DELETE", f"/v2/team/app/blobs/{layer}").status == 202  # gone from there
    outcomes = push(store, busybox, f"{registry.address}/team/copy:1")
    assert outcomes[layer] == "pushed"  # the mount from team/app was refused: uploaded in its session
    assert BlobLocations(store.root).repositories(registry.address, layer) == ["team/copy"]
    pulled = asyncio.run(pull_image(Store(tmp_path / "other"), f"{registry.address}/team/copy:1"))
    assert pulled.descriptor.digest == busybox.descriptor.digest


def test_the_mount_without_from_finds_what_no_record_names(
    registry: Registry, store: Store, busybox: Image, tmp_path: Path
) -> None:
    push(store, busybox, f"{registry.address}/team/app:1")
    elsewhere = Store(tmp_path / "elsewhere")
    again = asyncio.run(pull_image(elsewhere, f"{registry.address}/team/app:1"))
    (elsewhere.root / DATABASE).unlink()  # it knows nothing of team/app now
    assert set(push(elsewhere, again, f"{registry.address}/team/copy:1").values()) == {"mounted"}


def test_an_unreadable_record_costs_only_the_hint(
    registry: Registry, store: Store, busybox: Image, capsys: pytest.CaptureFixture[str]
) -> None:
    (store.root / DATABASE).write_bytes(b"not a database" * 100)
    assert set(push(store, busybox, f"{registry.address}/team/app:1").values()) == {"pushed"}
    warnings = capsys.readouterr().err.splitlines()
    assert warnings and all(
        line.startswith(f"lazyctr: warning: {store.root / DATABASE}:") for line in warnings
    )
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(store.root / DATABASE).execute("SELECT * FROM locations").fetchall()


def _artifact_of(store: Store, image: Image, payload: bytes) -> str:
    """An artifact referring to `image` (as an access profile does), put in the store; its digest."""
    empty = Descriptor(MEDIA_EMPTY, store.put_blob(b"{}"), 2)
    layer = Descriptor("application/vnd.example.test", store.put_blob(payload), len(payload))
    subject = Descriptor(MEDIA_MANIFEST, image.descriptor.digest, image.descriptor.size)
    artifact = Manifest(empty, [layer], subject=subject, artifact_type="application/vnd.example.test")
    return str(store.add_referrer(artifact.to_bytes()).digest)


def test_a_push_sends_the_referrers_blobs_with_the_images_then_the_manifests(
    registry: Registry, store: Store, busybox: Image
) -> None:
    artifact = _artifact_of(store, busybox, b"an access profile")
    proxy = Proxy(registry.address)
    try:
        push(store, busybox, f"{proxy.address}/team/app:1")
    finally:
        proxy.stop()
    paths = [path for _, path in proxy.requests]
    image_manifest = paths.index("/v2/team/app/manifests/1")
    blob_requests = [at for at, path in enumerate(paths) if "/blobs/" in path]
    # One wave of blobs, the artifact's among them, then the image's manifest, then the artifact's.
    assert len(blob_requests) > 3 * 2 and max(blob_requests) < image_manifest
    assert paths.index(f"/v2/team/app/manifests/{artifact}") > image_manifest
    assert not any(path.endswith(".sig") for path in paths)  # no signature: no look at its tag
    listed = registry.request("GET", f"/v2/team/app/referrers/{busybox.descriptor.digest}").json()
    assert [m["digest"] for m in listed["manifests"]] == [artifact]
