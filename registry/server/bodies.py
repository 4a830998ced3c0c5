"""Request bodies: read as they arrive, never taken whole when cut off, refused politely when too big."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from registry.errors import ManifestTooLarge, SizeInvalid

CHUNK = 1 << 20
DRAIN_MAX = 16 << 20


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


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body of a manifest; ManifestTooLarge past `limit` bytes."""
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


async def drain(request: web.Request, budget: int) -> None:
    """Read and drop a refused body, so a client still sending it gets our answer, not a reset.

    Past `budget` bytes we stop; the server then closes the connection (lingering_time=0).
    """
    while budget > 0 and (chunk := await request.content.readany()):
        budget -= len(chunk)
