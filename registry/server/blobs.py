"""Blobs: GET/HEAD (whole, one range or several; sendfile when there is a local file) and DELETE."""

from __future__ import annotations

import asyncio
import functools

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from registry.server.ranges import parse_ranges, send_multipart, send_streamed, unsatisfiable
from registry.server.state import REPOSITORY, name_of, store_of
from registry.storage import check_digest

IMMUTABLE = "public, max-age=31536000, immutable"  # a blob never changes: any HTTP cache may keep it

routes = web.RouteTableDef()


class WholeFileResponse(web.FileResponse):
    """A file served whole: FileResponse reads Range itself and refuses what it cannot parse with 416."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "range"}
        return await super().prepare(request.clone(headers=headers))


def blob_headers(digest: str) -> dict[str, str]:
    """The headers of every answer with a blob's bytes, whole or in ranges."""
    return {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Cache-Control": IMMUTABLE,
        "Accept-Ranges": "bytes",
        "ETag": f'"{digest}"',
    }


def not_modified(request: web.Request, digest: str) -> bool:
    return bool(request.if_none_match) and any(tag.value == digest for tag in request.if_none_match or ())


@routes.get(REPOSITORY + "/blobs/{digest}")
async def get_blob(request: web.Request) -> web.StreamResponse:
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    store = store_of(request)
    header = request.headers.get("Range")
    location = await asyncio.to_thread(store.locate_blob, name, digest, header is None)
    headers = blob_headers(digest)
    if not_modified(request, digest):
        return web.Response(status=304, headers=headers)
    ranges = parse_ranges(header, location.size) if header else None
    if ranges == []:
        return unsatisfiable(location.size, headers)
    read = functools.partial(store.read_blob, name, digest)
    if location.path is None:
        return await send_streamed(request, read, ranges, location.size, headers)
    if ranges is not None and len(ranges) > 1:
        return await send_multipart(request, read, ranges, location.size, headers, local=True)
    if ranges is None and header is not None:
        return WholeFileResponse(location.path, headers=headers)  # a Range we cannot read is ignored
    return web.FileResponse(location.path, headers=headers)  # sendfile, and one range of it


@routes.delete(REPOSITORY + "/blobs/{digest}")
async def delete_blob(request: web.Request) -> web.Response:
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    await asyncio.to_thread(store_of(request).delete_blob, name, digest)
    return web.Response(status=202)
