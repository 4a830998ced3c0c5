"""Manifests by tag or digest: GET/HEAD, PUT (byte-exact, checked, 4 MiB at most, `OCI-Subject`,
`?tag=` for one pushed by digest), DELETE."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from registry.errors import BlobUnknown, ManifestBlobUnknown, ManifestInvalid
from registry.server.bodies import read_limited
from registry.server.state import REPOSITORY, name_of, store_of
from registry.storage import BlobStore, check_digest, check_reference, check_tag, is_digest, media_type_of
from storage.errors import StorageError
from storage.oci import MEDIA_MANIFEST, Descriptor

MANIFEST_MAX = 4 << 20
_ONE_DESCRIPTOR = ("config", "subject")  # the other descriptor fields hold lists of them

routes = web.RouteTableDef()


def descriptors(doc: dict[str, Any], key: str) -> list[Descriptor]:
    """The descriptors a manifest field holds (none when absent); ManifestInvalid for a bad one."""
    if key not in doc:
        return []
    items = [doc[key]] if key in _ONE_DESCRIPTOR else doc[key]
    if not isinstance(items, list):
        raise ManifestInvalid(f"manifest field {key!r} is not a list of descriptors")
    try:
        return [Descriptor.from_json(item, f"manifest {key!r}") for item in items]
    except StorageError as e:
        raise ManifestInvalid(str(e)) from None


def parse_manifest(data: bytes, content_type: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestInvalid(f"manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest is not a JSON object")
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("manifest mediaType is not a string")
    if declared and content_type not in ("", "application/octet-stream", declared):
        raise ManifestInvalid(
            f"Content-Type {content_type} does not match the manifest's mediaType {declared}",
            {"contentType": content_type, "mediaType": declared},
        )
    return doc


def check_references(store: BlobStore, name: str, doc: dict[str, Any]) -> None:
    """Every blob and manifest the document refers to must be in the repository already, but for
    non-distributable layers: their blobs live elsewhere (`urls`) and are never pushed."""
    layers = [layer for layer in descriptors(doc, "layers") if layer.distributable]
    for descriptor in descriptors(doc, "config") + layers + descriptors(doc, "blobs"):
        try:
            store.blob_size(name, descriptor.digest)
        except BlobUnknown:
            raise ManifestBlobUnknown(
                f"manifest refers to blob {descriptor.digest}, which {name} does not have",
                {"digest": descriptor.digest},
            ) from None
    for descriptor in descriptors(doc, "manifests"):
        if not store.has_manifest(name, descriptor.digest):
            raise ManifestBlobUnknown(
                f"index refers to manifest {descriptor.digest}, which {name} does not have",
                {"digest": descriptor.digest},
            )
    descriptors(doc, "subject")  # validated only: a subject may be pushed after its referrers


@routes.get(REPOSITORY + "/manifests/{reference}")
async def get_manifest(request: web.Request) -> web.Response:
    name = name_of(request)
    reference = check_reference(request.match_info["reference"])
    digest, data = await asyncio.to_thread(store_of(request).get_manifest, name, reference)
    return manifest_response(digest, data)


def manifest_response(digest: str, data: bytes) -> web.Response:
    try:
        media_type = media_type_of(json.loads(data))
    except ValueError:
        media_type = MEDIA_MANIFEST
    headers = {"Docker-Content-Digest": digest, "Content-Type": media_type, "ETag": f'"{digest}"'}
    return web.Response(body=data, headers=headers)


@routes.put(REPOSITORY + "/manifests/{reference}")
async def put_manifest(request: web.Request) -> web.Response:
    name = name_of(request)
    reference = request.match_info["reference"]
    if is_digest(reference):
        reference = check_digest(reference)
    else:
        check_tag(reference)
    # Tags for a manifest pushed by digest: how one named by sha512 gets tags (a push by tag is sha256).
    tags = tuple(check_tag(tag) for tag in request.query.getall("tag", []))
    if tags and not is_digest(reference):
        raise ManifestInvalid("?tag= goes with a push by digest, not by tag", {"tags": list(tags)})
    data = await read_limited(request, MANIFEST_MAX)
    doc = parse_manifest(data, request.headers.get("Content-Type", "").split(";")[0].strip())
    store = store_of(request)
    await asyncio.to_thread(check_references, store, name, doc)
    digest = await asyncio.to_thread(store.put_manifest, name, reference, data, tags)
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    if tags:
        headers["OCI-Tag"] = ",".join(tags)
    subjects = descriptors(doc, "subject")
    if subjects:
        headers["OCI-Subject"] = subjects[0].digest
    return web.Response(status=201, headers=headers)


@routes.delete(REPOSITORY + "/manifests/{reference}")
async def delete_manifest(request: web.Request) -> web.Response:
    name = name_of(request)
    reference = check_reference(request.match_info["reference"])
    await asyncio.to_thread(store_of(request).delete_manifest, name, reference)
    return web.Response(status=202)
