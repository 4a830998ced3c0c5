"""fetch_manifest: the image manifest a reference names, through an index when there is one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from registry.client import RegistryClient, RegistryNotFound
from registry.transfer import fetch_manifest
from storage.digest import Digest
from storage.importer import host_architecture
from storage.reference import ImageRef
from tests.registry.conftest import Registry, sha256

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def push_image_manifest(registry: Registry, repo: str, label: str) -> tuple[bytes, str]:
    config = json.dumps({"architecture": label, "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    config_digest = registry.push_blob(repo, config.encode())
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                   "size": len(config)},
        "layers": [],
    }  # fmt: skip
    data = json.dumps(doc).encode()
    digest = sha256(data)
    assert registry.push_manifest(repo, digest, data).status == 201
    return data, digest


def index_of(entries: list[tuple[str, bytes, str]]) -> dict[str, Any]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(data),
             "platform": {"os": "linux", "architecture": arch}}
            for arch, data, digest in entries
        ],
    }  # fmt: skip


def fetch(registry: Registry, text: str) -> tuple[bytes, str, Digest]:
    async def main() -> tuple[bytes, str, Digest]:
        async with RegistryClient(registry.address) as client:
            return await fetch_manifest(client, ImageRef.parse(text))

    return asyncio.run(main())


def test_an_index_gives_the_manifest_for_this_machine(registry: Registry) -> None:
    other = "s390x" if host_architecture() != "s390x" else "arm64"
    theirs, their_digest = push_image_manifest(registry, "test/multi", other)
    ours, our_digest = push_image_manifest(registry, "test/multi", host_architecture())
    index = index_of([(other, theirs, their_digest), (host_architecture(), ours, our_digest)])
    assert registry.push_manifest("test/multi", "v1", index).status == 201
    assert fetch(registry, f"{registry.address}/test/multi:v1") == (ours, OCI_MANIFEST, our_digest)


def test_a_manifest_by_tag_and_by_digest(registry: Registry) -> None:
    data, digest = push_image_manifest(registry, "test/single", host_architecture())
    assert registry.push_manifest("test/single", "latest", data).status == 201
    assert fetch(registry, f"{registry.address}/test/single") == (data, OCI_MANIFEST, digest)
    assert fetch(registry, f"{registry.address}/test/single@{digest}") == (data, OCI_MANIFEST, digest)


def test_an_index_without_this_machine_is_not_found(registry: Registry) -> None:
    other = "s390x" if host_architecture() != "s390x" else "arm64"
    theirs, their_digest = push_image_manifest(registry, "test/foreign", other)
    assert (
        registry.push_manifest("test/foreign", "v1", index_of([(other, theirs, their_digest)])).status == 201
    )
    with pytest.raises(RegistryNotFound, match=f"no image for linux/{host_architecture()}"):
        fetch(registry, f"{registry.address}/test/foreign:v1")
