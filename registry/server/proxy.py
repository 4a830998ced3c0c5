"""The routes of a pull-through cache (`lazyctr serve --proxy UPSTREAM`): manifests, blobs and byte
ranges, tags and referrers, answered by `registry.proxy_cache.ProxyCache`. A cache is read-only:
pushes and deletes are refused by the application's read-only check.

Blob answers carry the same headers as the registry's own (`Cache-Control: public, max-age=31536000,
immutable`, `ETag` = the digest), ranges too, so a plain HTTP cache in front works as well.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from registry.errors import RegistryError
from registry.proxy_cache import IN_MEMORY, ProxyCache
from registry.server import blobs
from registry.server.manifests import manifest_response
from registry.server.ranges import parse_ranges, send_multipart, send_streamed, unsatisfiable
from registry.server.state import REPOSITORY, name_of
from registry.storage import check_digest, check_reference
from storage.oci import MEDIA_INDEX, Index

PROXY = web.AppKey("proxy", ProxyCache)
log = logging.getLogger("lazyctr.registry.proxy")

routes = web.RouteTableDef()


def install(app: web.Application, cache: ProxyCache) -> None:
    """Make `app` the cache's server: its routes, and its upstream client open while it runs."""
    app[PROXY] = cache

    async def upstream_client(app: web.Application) -> AsyncIterator[None]:
        async with cache:
            yield

    app.cleanup_ctx.append(upstream_client)
    app.router.add_routes(routes)


def cache_of(request: web.Request) -> ProxyCache:
    return request.app[PROXY]


@routes.get(REPOSITORY + "/tags/list")
async def list_tags(request: web.Request) -> web.Response:
    name = name_of(request)
    return web.json_response({"name": name, "tags": await cache_of(request).tags(name)})


@routes.get(REPOSITORY + "/referrers/{digest}")
async def list_referrers(request: web.Request) -> web.Response:
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    artifact_type = request.query.get("artifactType")
    manifests = await cache_of(request).referrers(name, digest, artifact_type)
    headers = {"Content-Type": MEDIA_INDEX}
    if artifact_type is not None:
        headers["OCI-Filters-Applied"] = "artifactType"
    return web.Response(body=Index(manifests).to_bytes(), headers=headers)


@routes.get(REPOSITORY + "/manifests/{reference}")
async def get_manifest(request: web.Request) -> web.Response:
    name = name_of(request)
    reference = check_reference(request.match_info["reference"])
    digest, data = await cache_of(request).manifest(name, reference)
    return manifest_response(digest, data)


@routes.get(REPOSITORY + "/blobs/{digest}")
async def get_blob(request: web.Request) -> web.StreamResponse:
    """From the store when it holds the blob whole; ranges from the partial blob (fetching what it
    lacks); a whole blob only once it is complete and verified."""
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    cache = cache_of(request)
    partial = await cache.blob(name, digest)
    if partial is None:
        return await blobs.get_blob(request)
    headers = blobs.blob_headers(digest)
    if blobs.not_modified(request, digest):
        return web.Response(status=304, headers=headers)
    header = request.headers.get("Range")
    ranges = parse_ranges(header, partial.size) if header else None
    if ranges == []:
        return unsatisfiable(partial.size, headers)
    if request.method == "HEAD":
        return await send_streamed(request, cache.reader(name, partial), ranges, partial.size, headers)
    if ranges is None:
        await cache.complete(name, partial)
        return await blobs.get_blob(request)
    wanted = [(start, end + 1) for start, end in ranges]
    fetches = cache.fetch(name, partial, wanted)
    if len(wanted) == 1 and wanted[0][1] - wanted[0][0] > IN_MEMORY:
        start, end = wanted[0]
        return await send_arriving(request, cache.stream(name, partial, start, end, fetches), start, end,
                                   partial.size, headers)  # fmt: skip
    # The usual lazy read, a few small ranges: all of it first, so a failure upstream is a clean error.
    await cache.arrived(partial, wanted, fetches)
    read = cache.reader(name, partial)
    if len(ranges) > 1:  # from a local file: all the ranges read in one trip to a worker thread
        return await send_multipart(request, read, ranges, partial.size, headers, local=True)
    return await send_streamed(request, read, ranges, partial.size, headers)


async def send_arriving(
    request: web.Request,
    pieces: AsyncIterator[bytes],
    start: int,
    end: int,
    size: int,
    headers: dict[str, str],
) -> web.StreamResponse:
    """One large range, sent as its bytes arrive. Should the upstream fail half way, the connection is
    cut: the client sees an answer shorter than its Content-Length, never a whole one."""
    response = web.StreamResponse(
        status=206, headers={**headers, "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    )
    response.content_length = end - start
    await response.prepare(request)
    try:
        async for piece in pieces:
            await response.write(piece)
    except RegistryError as e:
        log.warning("%s %s: cut off: %s", request.method, request.path, e.message)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
