"""Blob uploads: monolithic POST, POST then PUT, chunked PATCH, status, cancel, cross-repository mount
(from a named repository, or without `from` from any the pusher may read).

A request takes effect whole or not at all: a body cut off half way is taken back from the
upload, so its reported `Range` never covers bytes of a request that failed.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from registry.errors import BlobUploadInvalid, DigestInvalid
from registry.server.bodies import body_chunks
from registry.server.state import ACCESS, REPOSITORY, name_of, store_of
from registry.storage import check_digest, check_name, check_upload_id
from storage.digest import Digest

_CONTENT_RANGE_RE = re.compile(r"^(?:bytes )?(\d+)-(\d+)\Z")
UPLOAD = REPOSITORY + "/blobs/uploads/{uuid}"

routes = web.RouteTableDef()


def upload_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
    return {
        "Location": f"/v2/{name}/blobs/uploads/{upload_id}",
        "Docker-Upload-UUID": upload_id,
        "Range": f"0-{max(size - 1, 0)}",
    }


def blob_created(name: str, digest: Digest) -> web.Response:
    headers = {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest}
    return web.Response(status=201, headers=headers)


async def append_body(request: web.Request, name: str, upload_id: str, offset: int | None) -> int:
    """Write the request body to the upload at `offset` (None: wherever it stands); the new size."""
    store = store_of(request)
    if offset is None:
        offset = await asyncio.to_thread(store.upload_size, name, upload_id)
    f = await asyncio.to_thread(store.open_upload, name, upload_id, offset)
    written = 0
    try:
        async for chunk in body_chunks(request):
            await asyncio.to_thread(f.write, chunk)
            written += len(chunk)
    except BaseException:
        await asyncio.to_thread(f.truncate, offset)
        raise
    finally:
        await asyncio.to_thread(f.close)
    return offset + written


def content_range_start(request: web.Request) -> int | None:
    header = request.headers.get("Content-Range")
    if header is None:
        return None
    match = _CONTENT_RANGE_RE.match(header.strip())
    if not match or int(match.group(2)) < int(match.group(1)):
        raise BlobUploadInvalid(f"malformed Content-Range {header!r}: expected START-END")
    start, end = int(match.group(1)), int(match.group(2))
    if request.content_length is not None and request.content_length != end - start + 1:
        raise BlobUploadInvalid(
            f"Content-Range {header} covers {end - start + 1} bytes, "
            f"Content-Length is {request.content_length}"
        )
    return start


@routes.post(REPOSITORY + "/blobs/uploads/")
async def start_upload(request: web.Request) -> web.Response:
    name = name_of(request)
    store = store_of(request)
    mount, source = request.query.get("mount"), request.query.get("from")
    if mount is not None:
        digest = check_digest(mount)
        # The pusher must be allowed to pull the source: otherwise a mount would hand out any blob
        # whose digest is known. When not, this is an ordinary upload (202), as the spec says.
        authorization = request.headers.get("Authorization")

        def readable(repository: str) -> bool:
            return request.app[ACCESS].may_pull(repository, authorization)

        if source is None:  # OCI 1.1: any repository holding the blob the pusher may read will do
            source = await asyncio.to_thread(store.holder_of, digest, readable)
        elif not readable(check_name(source)):
            source = None
        if source is not None and await asyncio.to_thread(store.mount_blob, name, digest, source):
            return blob_created(name, digest)
    digest_text = request.query.get("digest")
    upload_id = await asyncio.to_thread(store.start_upload, name)
    if digest_text is None:
        return web.Response(status=202, headers=upload_headers(name, upload_id, 0))
    try:
        digest = check_digest(digest_text)
        await append_body(request, name, upload_id, 0)
    except BaseException:
        await asyncio.to_thread(store.cancel_upload, name, upload_id)
        raise
    await asyncio.to_thread(store.finish_upload, name, upload_id, digest)
    return blob_created(name, digest)


@routes.get(UPLOAD)
async def upload_status(request: web.Request) -> web.Response:
    name = name_of(request)
    upload_id = check_upload_id(request.match_info["uuid"])
    size = await asyncio.to_thread(store_of(request).upload_size, name, upload_id)
    return web.Response(status=204, headers=upload_headers(name, upload_id, size))


@routes.patch(UPLOAD)
async def patch_upload(request: web.Request) -> web.Response:
    name = name_of(request)
    upload_id = check_upload_id(request.match_info["uuid"])
    size = await append_body(request, name, upload_id, content_range_start(request))
    return web.Response(status=202, headers=upload_headers(name, upload_id, size))


@routes.put(UPLOAD)
async def finish_upload(request: web.Request) -> web.Response:
    name = name_of(request)
    upload_id = check_upload_id(request.match_info["uuid"])
    digest_text = request.query.get("digest")
    if digest_text is None:
        raise DigestInvalid("finishing an upload needs ?digest=")
    digest = check_digest(digest_text)
    await append_body(request, name, upload_id, content_range_start(request))
    await asyncio.to_thread(store_of(request).finish_upload, name, upload_id, digest)
    return blob_created(name, digest)


@routes.delete(UPLOAD)
async def cancel_upload(request: web.Request) -> web.Response:
    name = name_of(request)
    upload_id = check_upload_id(request.match_info["uuid"])
    await asyncio.to_thread(store_of(request).cancel_upload, name, upload_id)
    return web.Response(status=204)
