"""The referrers API: an image index of the manifests whose `subject` is a digest, by `artifactType`."""

from __future__ import annotations

import asyncio

from aiohttp import web

from registry.server.state import REPOSITORY, name_of, store_of
from registry.storage import check_digest
from storage.oci import MEDIA_INDEX, Index

routes = web.RouteTableDef()


@routes.get(REPOSITORY + "/referrers/{digest}")
async def list_referrers(request: web.Request) -> web.Response:
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    artifact_type = request.query.get("artifactType")
    manifests = await asyncio.to_thread(store_of(request).referrers, name, digest, artifact_type)
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    headers["Content-Type"] = MEDIA_INDEX
    return web.Response(body=Index(manifests).to_bytes(), headers=headers)
