"""The OCI distribution spec v1.1 server on aiohttp: routes, headers and the JSON error body.

Every handler validates what it takes from the URL (see `registry.storage.check_*`) before the
store sees it. File work runs in threads so one slow disk does not stall every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter

from registry.auth import Access
from registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestTooLarge,
    RegistryError,
    SizeInvalid,
)
from registry.storage import (
    BlobStore,
    FilesystemBlobStore,
    check_digest,
    check_name,
    check_reference,
    check_tag,
    check_upload_id,
    is_digest,
)
from storage.digest import Digest

STORE = web.AppKey("store", BlobStore)
READ_ONLY = web.AppKey("read_only", bool)
ACCESS = web.AppKey("access", Access)
UPLOAD_TIMEOUT = 3600.0  # an upload nobody wrote to for an hour belongs to a client that died
UPLOAD_TIMEOUT_KEY = web.AppKey("upload_timeout", float)
USER = web.RequestKey("user", str)  # who made the request, for the access log (unset: anonymous)


async def _expire_uploads(app: web.Application) -> AsyncIterator[None]:
    """In the background: remove uploads abandoned by clients that died half way through a push."""

    async def sweep() -> None:
        timeout = app[UPLOAD_TIMEOUT_KEY]
        while True:
            await asyncio.sleep(min(60.0, timeout / 2))
            await asyncio.to_thread(app[STORE].expire_uploads, timeout)

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


MANIFEST_MAX = 4 << 20
DRAIN_MAX = 16 << 20
SHUTDOWN_TIMEOUT = 5.0
CHUNK = 1 << 20
MULTIPART_IN_MEMORY = 4 << 20  # multi-range answers up to this size are read at once
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")
IMMUTABLE = "max-age=31536000, immutable"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes )?(\d+)-(\d+)\Z")
_RANGE_SPEC_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*\Z")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: RegistryError) -> web.Response:
    body = {"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]}
    return web.json_response(body, status=error.status, headers={**dict([API_VERSION]), **error.headers})


@web.middleware
async def registry_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        user = request.app[ACCESS].check(request.path, request.method, request.headers.get("Authorization"))
        if user is not None:
            request[USER] = user
        if request.app[READ_ONLY] and request.method not in ("GET", "HEAD"):
            raise Denied("this registry is read-only")
        return await handler(request)
    except RegistryError as e:
        return error_response(e)


async def _mark_blob_responses(request: web.Request, response: web.StreamResponse) -> None:
    # FileResponse writes an mtime-based ETag; a blob's one true identity is its digest.
    digest = response.headers.get("Docker-Content-Digest")
    if digest and isinstance(response, web.FileResponse):
        response.etag = digest
    response.headers.setdefault(*API_VERSION)


def store_of(request: web.Request) -> BlobStore:
    return request.app[STORE]


def name_of(request: web.Request) -> str:
    return check_name(request.match_info["name"])


# /v2/


async def ping(request: web.Request) -> web.Response:
    return web.json_response({})


# Manifests


def media_type_of(doc: dict[str, Any]) -> str:
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def _descriptors(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    value = doc.get(key, [])
    items = [value] if key in ("config", "subject") else value
    if key not in doc:
        return []
    if not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
        raise ManifestInvalid(
            f"manifest field {key!r} is not a descriptor" + ("" if key != "layers" else "s")
        )
    for d in items:
        if not isinstance(d.get("digest"), str):
            raise ManifestInvalid(f"a descriptor in {key!r} has no digest")
        try:
            Digest(d["digest"])
        except Exception:
            raise ManifestInvalid(f"a descriptor in {key!r} has an invalid digest {d['digest']!r}") from None
        if not isinstance(d.get("size"), int) or d["size"] < 0:
            raise ManifestInvalid(f"descriptor {d['digest']} in {key!r} has no valid size")
    return items


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
    for descriptor in _descriptors(doc, "config") + _descriptors(doc, "layers") + _descriptors(doc, "blobs"):
        try:
            store.blob_size(name, Digest(descriptor["digest"]))
        except BlobUnknown:
            raise ManifestBlobUnknown(
                f"manifest refers to blob {descriptor['digest']}, which {name} does not have",
                {"digest": descriptor["digest"]},
            ) from None
    for descriptor in _descriptors(doc, "manifests"):
        if not store.has_manifest(name, Digest(descriptor["digest"])):
            raise ManifestBlobUnknown(
                f"index refers to manifest {descriptor['digest']}, which {name} does not have",
                {"digest": descriptor["digest"]},
            )
    _descriptors(doc, "subject")  # validated only: a subject may be pushed after its referrers


async def read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > DRAIN_MAX:
        raise ManifestTooLarge(f"manifest of {request.content_length} bytes is over the {limit} byte limit")
    parts: list[bytes] = []
    size = 0
    async for chunk in body_chunks(request):
        size += len(chunk)
        if size > limit:
            await drain(request, DRAIN_MAX - size)
            raise ManifestTooLarge(f"manifest is over the {limit} byte limit", {"limit": limit})
        parts.append(chunk)
    return b"".join(parts)


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives; SizeInvalid if the client goes away before sending all of it.

    A body cut off half way must never pass for a whole one, whatever Content-Length promised.
    """
    received = 0
    while True:
        try:
            chunk = await request.content.read(CHUNK)
        except ConnectionError:
            raise SizeInvalid(
                f"the connection closed after {received} bytes of the body", {"received": received}
            ) from None
        if not chunk:
            break
        received += len(chunk)
        yield chunk
    if request.content_length is not None and received != request.content_length:
        raise SizeInvalid(f"Content-Length said {request.content_length} bytes, {received} arrived")


async def drain(request: web.Request, budget: int) -> None:
    """Read and drop a refused body, so a client still sending it gets our answer, not a reset.

    Past `budget` bytes we stop; the server then closes the connection (lingering_time=0).
    """
    while budget > 0 and (chunk := await request.content.readany()):
        budget -= len(chunk)


async def get_manifest(request: web.Request) -> web.Response:
    name = name_of(request)
    reference = check_reference(request.match_info["reference"])
    digest, data = await asyncio.to_thread(store_of(request).get_manifest, name, reference)
    try:
        media_type = media_type_of(json.loads(data))
    except ValueError:
        media_type = OCI_MANIFEST
    headers = {"Docker-Content-Digest": digest, "Content-Type": media_type, "ETag": f'"{digest}"'}
    return web.Response(body=data, headers=headers)


async def put_manifest(request: web.Request) -> web.Response:
    name = name_of(request)
    reference = request.match_info["reference"]
    if is_digest(reference):
        reference = check_digest(reference)
    else:
        check_tag(reference)
    data = await read_limited(request, MANIFEST_MAX)
    doc = parse_manifest(data, request.headers.get("Content-Type", "").split(";")[0].strip())
    store = store_of(request)
    await asyncio.to_thread(check_references, store, name, doc)
    digest = await asyncio.to_thread(store.put_manifest, name, reference, data)
    headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": digest}
    subject = doc.get("subject")
    if isinstance(subject, dict):
        headers["OCI-Subject"] = subject["digest"]
    return web.Response(status=201, headers=headers)


async def delete_manifest(request: web.Request) -> web.Response:
    name = name_of(request)
    reference = check_reference(request.match_info["reference"])
    await asyncio.to_thread(store_of(request).delete_manifest, name, reference)
    return web.Response(status=202)


# Blobs


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable (start, end inclusive) ranges of a `Range` header; None to ignore the header.

    An empty list means none is satisfiable (416).
    """
    unit, _, specs = header.partition("=")
    if unit.strip() != "bytes":
        return None
    ranges = []
    for spec in specs.split(","):
        match = _RANGE_SPEC_RE.match(spec)
        if not match or match.group(1) == match.group(2) == "":
            return None
        first, last = match.groups()
        if first == "":
            suffix = int(last)
            if suffix > 0 and size > 0:
                ranges.append((max(size - suffix, 0), size - 1))
            continue
        start = int(first)
        end = size - 1 if last == "" else min(int(last), size - 1)
        if last != "" and int(last) < start:
            return None  # syntactically invalid: the whole header is ignored (RFC 9110 14.2)
        if start < size:
            ranges.append((start, end))
    return ranges


async def send_pieces(response: web.StreamResponse, pieces: Iterator[bytes]) -> None:
    """Write what a (blocking) iterator yields, pulling each piece in a thread."""
    try:
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            await response.write(piece)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            await asyncio.to_thread(close)  # a generator left half way lets go of its file or S3 body


async def send_multipart(
    request: web.Request,
    read: Callable[[int, int], Iterator[bytes]],
    ranges: list[tuple[int, int]],
    size: int,
    headers: dict[str, str],
    local: bool,
) -> web.StreamResponse:
    """Several ranges as `multipart/byteranges`; `read(start, end)` gives the bytes [start, end).

    `local`: the bytes come from a local file, not over the network (S3), where ranges are
    better fetched at once than one after the other.
    """
    boundary = uuid.uuid4().hex
    response = web.StreamResponse(status=206, headers=headers)
    response.content_type = "multipart/byteranges"
    response.headers["Content-Type"] = f"multipart/byteranges; boundary={boundary}"
    heads = [
        f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Range: bytes {start}-{end}/{size}\r\n\r\n".encode()
        for start, end in ranges
    ]
    tail = f"--{boundary}--\r\n".encode()
    response.content_length = sum(
        len(h) + end - start + 1 + 2 for h, (start, end) in zip(heads, ranges, strict=True)
    ) + len(tail)
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    if sum(end - start + 1 for start, end in ranges) <= MULTIPART_IN_MEMORY:
        # The usual lazy read: many small ranges. From a file: one trip to a thread for all of them,
        # not two a range. From S3: all the ranged GETs at once.
        def whole(start: int, end: int) -> bytes:
            return b"".join(read(start, end + 1))

        if local:
            bodies = await asyncio.to_thread(lambda: [whole(start, end) for start, end in ranges])
        else:
            bodies = await asyncio.gather(*(asyncio.to_thread(whole, start, end) for start, end in ranges))
        await response.write(
            b"".join(head + body + b"\r\n" for head, body in zip(heads, bodies, strict=True)) + tail
        )
        await response.write_eof()
        return response
    for head, (start, end) in zip(heads, ranges, strict=True):
        await response.write(head)
        await send_pieces(response, read(start, end + 1))
        await response.write(b"\r\n")
    await response.write(tail)
    await response.write_eof()
    return response


async def stream_blob(
    request: web.Request, store: BlobStore, name: str, digest: Digest, size: int, headers: dict[str, str]
) -> web.StreamResponse:
    """A blob the backend has no local file for (S3): whole or in ranges, read as it is sent."""
    header = request.headers.get("Range")
    ranges = parse_ranges(header, size) if header else None
    headers["ETag"] = f'"{digest}"'
    if ranges == []:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})

    def read(start: int, end: int) -> Iterator[bytes]:
        return store.read_blob(name, digest, start, end)

    if ranges is not None and len(ranges) > 1:
        return await send_multipart(request, read, ranges, size, headers, local=False)
    response = web.StreamResponse(headers=headers)
    start, end = 0, size
    if ranges is not None:
        start, end = ranges[0][0], ranges[0][1] + 1
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    response.content_length = end - start
    await response.prepare(request)
    if request.method != "HEAD":
        await send_pieces(response, read(start, end))
    await response.write_eof()
    return response


class WholeFileResponse(web.FileResponse):
    """A file served whole: FileResponse reads Range itself and refuses what it cannot parse with 416."""

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "range"}
        return await super().prepare(request.clone(headers=headers))


async def get_blob(request: web.Request) -> web.StreamResponse:
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    store = store_of(request)
    header = request.headers.get("Range")
    location = await asyncio.to_thread(store.locate_blob, name, digest, header is None)
    headers = {
        "Docker-Content-Digest": digest,
        "Content-Type": "application/octet-stream",
        "Cache-Control": IMMUTABLE,
        "Accept-Ranges": "bytes",
    }
    if request.if_none_match and any(tag.value == digest for tag in request.if_none_match):
        return web.Response(status=304, headers={**headers, "ETag": f'"{digest}"'})
    path = location.path
    if path is None:
        return await stream_blob(request, store, name, digest, location.size, headers)
    if header and "," in header:
        ranges = parse_ranges(header, location.size)
        headers["ETag"] = f'"{digest}"'
        if ranges == []:
            return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{location.size}"})
        if ranges is not None:

            def read(start: int, end: int) -> Iterator[bytes]:
                return store.read_blob(name, digest, start, end)

            return await send_multipart(request, read, ranges, location.size, headers, local=True)
        header = None
    if header is not None and parse_ranges(header, 1) is None:
        header = None  # a Range we cannot read is ignored, not refused
    if header is None and "Range" in request.headers:
        return WholeFileResponse(path, headers=headers)
    return web.FileResponse(path, headers=headers)


async def delete_blob(request: web.Request) -> web.Response:
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    await asyncio.to_thread(store_of(request).delete_blob, name, digest)
    return web.Response(status=202)


# Uploads


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
        # A request takes effect whole or not at all: the upload goes back to where it stood, so
        # its reported Range never covers the bytes of a body that was cut off.
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


async def start_upload(request: web.Request) -> web.Response:
    name = name_of(request)
    store = store_of(request)
    mount, source = request.query.get("mount"), request.query.get("from")
    if mount is not None:
        digest = check_digest(mount)
        # The pusher must be allowed to pull the source: otherwise a mount would hand out any blob
        # whose digest is known. When not, this is an ordinary upload (202), as the spec says.
        allowed = source is not None and request.app[ACCESS].may_pull(
            check_name(source), request.headers.get("Authorization")
        )
        if allowed and source is not None and await asyncio.to_thread(store.mount_blob, name, digest, source):
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


async def patch_upload(request: web.Request) -> web.Response:
    name = name_of(request)
    upload_id = check_upload_id(request.match_info["uuid"])
    size = await append_body(request, name, upload_id, content_range_start(request))
    return web.Response(status=202, headers=upload_headers(name, upload_id, size))


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


async def upload_status(request: web.Request) -> web.Response:
    name = name_of(request)
    upload_id = check_upload_id(request.match_info["uuid"])
    size = await asyncio.to_thread(store_of(request).upload_size, name, upload_id)
    return web.Response(status=204, headers=upload_headers(name, upload_id, size))


async def cancel_upload(request: web.Request) -> web.Response:
    name = name_of(request)
    upload_id = check_upload_id(request.match_info["uuid"])
    await asyncio.to_thread(store_of(request).cancel_upload, name, upload_id)
    return web.Response(status=204)


# Tags and referrers


async def list_tags(request: web.Request) -> web.Response:
    name = name_of(request)
    tags = await asyncio.to_thread(store_of(request).tags, name)
    last = request.query.get("last")
    if last is not None:
        tags = [t for t in tags if t > last]
    headers = {}
    n_text = request.query.get("n")
    if n_text is not None:
        if not n_text.isdigit():
            raise web.HTTPBadRequest(text=f"n must be a non-negative integer, not {n_text!r}")
        n = int(n_text)
        if len(tags) > n:
            tags = tags[:n]
            if tags:
                headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
    return web.json_response({"name": name, "tags": tags}, headers=headers)


def referrers_of(
    store: BlobStore, name: str, digest: Digest, artifact_type: str | None
) -> list[dict[str, Any]]:
    found = []
    for candidate in sorted(store.manifest_digests(name)):
        try:
            _, data = store.get_manifest(name, candidate)
            doc = json.loads(data)
        except (RegistryError, ValueError):
            continue
        subject = doc.get("subject") if isinstance(doc, dict) else None
        if not isinstance(subject, dict) or subject.get("digest") != digest:
            continue
        config = doc.get("config")
        kind = doc.get("artifactType") or (config.get("mediaType") if isinstance(config, dict) else None)
        if artifact_type is not None and kind != artifact_type:
            continue
        descriptor: dict[str, Any] = {"mediaType": media_type_of(doc), "digest": candidate, "size": len(data)}
        if kind:
            descriptor["artifactType"] = kind
        if isinstance(doc.get("annotations"), dict):
            descriptor["annotations"] = doc["annotations"]
        found.append(descriptor)
    return found


async def list_referrers(request: web.Request) -> web.Response:
    name = name_of(request)
    digest = check_digest(request.match_info["digest"])
    artifact_type = request.query.get("artifactType")
    manifests = await asyncio.to_thread(referrers_of, store_of(request), name, digest, artifact_type)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
    headers["Content-Type"] = OCI_INDEX
    return web.Response(body=json.dumps(index).encode(), headers=headers)


# Access log


class AccessLog(AbstractAccessLogger):
    """One line per request: `REMOTE USER "METHOD PATH" STATUS BYTES DURATIONs` (text) or a JSON object."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        entry = access_entry(request, response, time)
        if self.log_format == "json":
            self.logger.info(json.dumps(entry, separators=(",", ":")))
        else:
            line = '{remote} {user} "{method} {path}" {status} {bytes} {duration:.6f}s'
            self.logger.info(line.format(**{k: "-" if v is None else v for k, v in entry.items()}))


def access_entry(request: web.BaseRequest, response: web.StreamResponse, duration: float) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "remote": request.remote,
        "user": request.get(USER),
        "method": request.method,
        "path": request.path_qs,
        "status": response.status,
        "bytes": body_bytes(request, response),
        "duration": round(duration, 6),
    }


def body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The length of the body sent. Every response we send declares it; aiohttp's own `body_length`
    counts the headers too and misses what sendfile sent."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    return response.content_length if response.content_length is not None else response.body_length


def access_logger(stream: Any = None) -> logging.Logger:
    """The logger the access lines go to: standard output, the bare line, nothing else added."""
    logger = logging.getLogger("lazyctr.registry.access")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


def make_app(
    root: Path | BlobStore,
    read_only: bool = False,
    access: Access | None = None,
    upload_timeout: float = UPLOAD_TIMEOUT,
) -> web.Application:
    """The registry over a storage backend, or over a directory (the filesystem backend)."""
    app = web.Application(middlewares=[registry_errors])
    app[STORE] = root if isinstance(root, BlobStore) else FilesystemBlobStore(root)
    app[UPLOAD_TIMEOUT_KEY] = upload_timeout
    app.cleanup_ctx.append(_expire_uploads)
    app[READ_ONLY] = read_only
    app[ACCESS] = access or Access.anyone()
    app.on_response_prepare.append(_mark_blob_responses)
    name = "/v2/{name:.+}"
    app.router.add_get("/v2/", ping)
    app.router.add_get(name + "/tags/list", list_tags)
    app.router.add_get(name + "/referrers/{digest}", list_referrers)
    app.router.add_get(name + "/manifests/{reference}", get_manifest)
    app.router.add_put(name + "/manifests/{reference}", put_manifest)
    app.router.add_delete(name + "/manifests/{reference}", delete_manifest)
    app.router.add_post(name + "/blobs/uploads/", start_upload)
    app.router.add_get(name + "/blobs/uploads/{uuid}", upload_status)
    app.router.add_patch(name + "/blobs/uploads/{uuid}", patch_upload)
    app.router.add_put(name + "/blobs/uploads/{uuid}", finish_upload)
    app.router.add_delete(name + "/blobs/uploads/{uuid}", cancel_upload)
    app.router.add_get(name + "/blobs/{digest}", get_blob)
    app.router.add_delete(name + "/blobs/{digest}", delete_blob)
    return app


async def serve(
    root: Path | BlobStore,
    host: str,
    port: int,
    read_only: bool = False,
    access: Access | None = None,
    tls: ssl.SSLContext | None = None,
    log_format: str | None = None,
) -> None:
    """Serve the registry until cancelled (over HTTPS when given a TLS context).

    `log_format` "text" or "json" writes one access-log line per request to standard output.
    """
    # lingering_time=0: a connection whose request body was left unread is closed at once, rather
    # than drained for up to 10 s (which also held shutdown up for as long).
    runner = web.AppRunner(
        make_app(root, read_only, access),
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        lingering_time=0,
        access_log=access_logger() if log_format else None,
        access_log_class=AccessLog,
        access_log_format=log_format or "text",
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
