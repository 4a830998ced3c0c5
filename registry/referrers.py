"""Artifacts that refer to an image (OCI referrers: access profiles, signatures, SBOMs) on the wire.

A push sends the store's referrers of an image after the image itself: their blobs, then their
manifests by digest. A pull asks the registry's referrers API (`GET /v2/NAME/referrers/DIGEST`,
optionally filtered by `artifactType`) and keeps the artifacts it finds, each verified against the
digest the registry's index gives. A registry without the referrers API (a 404) has none to give.
"""

from __future__ import annotations

import json

from registry.client import RegistryClient, RegistryClientError, read_body
from storage.digest import Digest
from storage.oci import MEDIA_INDEX, Descriptor, Index, Manifest
from storage.store import Store


async def list_referrers(
    client: RegistryClient, repo: str, subject: Digest, artifact_type: str | None = None
) -> list[Descriptor]:
    url = client._url(repo, f"referrers/{subject}")
    if artifact_type is not None:
        url = url.with_query({"artifactType": artifact_type})
    what = f"referrers of {repo}@{subject}"
    async with client._send("GET", url, what, {"Accept": MEDIA_INDEX}) as response:
        if response.status == 404:
            return []
        if response.status != 200:
            raise await client._error(response, what)
        data = await read_body(response.content, 1 << 22)
    try:
        manifests = Index.parse(data).manifests
    except (ValueError, json.JSONDecodeError) as e:
        raise RegistryClientError(f"{client.registry}: {what}: {e}") from None
    # The filter is the client's to apply too: a registry may ignore it (the spec allows that).
    return [d for d in manifests if artifact_type in (None, d.artifact_type)]


async def pull_referrers(
    client: RegistryClient, store: Store, repo: str, subject: Digest, artifact_type: str | None = None
) -> int:
    """Keep every artifact referring to `subject` (of `artifact_type`); returns how many."""
    count = 0
    for descriptor in await list_referrers(client, repo, subject, artifact_type):
        data, _, _ = await client.get_manifest(repo, descriptor.digest)
        artifact = Manifest.parse(data)
        if artifact.subject is None or artifact.subject.digest != subject:
            what = f"{client.registry}/{repo}@{descriptor.digest}"
            raise RegistryClientError(f"{what} is listed as a referrer of {subject} but does not refer to it")
        for blob in [artifact.config, *artifact.layers]:
            if not store.has_blob(blob.digest):
                with store.temp_file() as (tmp, f):
                    await client.get_blob(repo, blob.digest, f, blob.size)
                    store.adopt(tmp, f, blob.digest)
        store.add_referrer(data)
        count += 1
    return count


async def push_referrers(client: RegistryClient, store: Store, repo: str, subject: Digest) -> int:
    """Push the store's artifacts referring to `subject` (after it); returns how many."""
    referrers = store.referrers(subject)
    for descriptor in referrers:
        data = store.read_blob(descriptor.digest)
        artifact = Manifest.parse(data)
        for blob in [artifact.config, *artifact.layers]:
            await client.push_blob(repo, blob.digest, store.blob_path(blob.digest))
        await client.put_manifest(repo, str(descriptor.digest), data, descriptor.media_type)
    return len(referrers)
