"""The registry application: routes, auth and read-only checks, spec error bodies, and `serve`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from registry.auth import Access
from registry.errors import Denied, RegistryError
from registry.filesystem import FilesystemDriver
from registry.server import blobs, manifests, referrers, tags, uploads
from registry.server.access_log import AccessLog, access_logger
from registry.server.state import ACCESS, READ_ONLY, STORE, UPLOAD_TIMEOUT, USER
from registry.storage import BlobStore

if TYPE_CHECKING:
    from registry.proxy_cache import ProxyCache

DEFAULT_UPLOAD_TIMEOUT = 3600.0  # an upload nobody wrote to for an hour belongs to a client that died
SHUTDOWN_TIMEOUT = 5.0
API_VERSION = ("Docker-Distribution-API-Version", "registry/2.0")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: RegistryError) -> web.Response:
    body = {"errors": [{"code": error.code, "message": error.message, "detail": error.detail}]}
    return web.json_response(body, status=error.status, headers={**dict([API_VERSION]), **error.headers})


@web.middleware
async def registry_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Who may do what (and nobody writes to a read-only registry); RegistryError as the spec's body."""
    try:
        user = request.app[ACCESS].check(request.path, request.method, request.headers.get("Authorization"))
        if user is not None:
            request[USER] = user
        if request.app[READ_ONLY] and request.method not in ("GET", "HEAD"):
            raise Denied("this registry is read-only")
        return await handler(request)
    except RegistryError as e:
        return error_response(e)


async def _mark_responses(request: web.Request, response: web.StreamResponse) -> None:
    # FileResponse writes an mtime-based ETag; a blob's one true identity is its digest.
    digest = response.headers.get("Docker-Content-Digest")
    if digest and isinstance(response, web.FileResponse):
        response.etag = digest
    response.headers.setdefault(*API_VERSION)


async def _expire_uploads(app: web.Application) -> AsyncIterator[None]:
    """In the background: remove uploads abandoned by clients that died half way through a push."""

    async def sweep() -> None:
        timeout = app[UPLOAD_TIMEOUT]
        while True:
            await asyncio.sleep(min(60.0, timeout / 2))
            await asyncio.to_thread(app[STORE].expire_uploads, timeout)

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def ping(request: web.Request) -> web.Response:
    return web.json_response({})


def make_app(
    root: Path | BlobStore,
    read_only: bool = False,
    access: Access | None = None,
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
    proxy: ProxyCache | None = None,
) -> web.Application:
    """The registry over a store, or over a directory (the filesystem driver); with `proxy`, a
    read-only pull-through cache of another registry over the proxy's store."""
    app = web.Application(middlewares=[registry_errors])
    app[STORE] = root if isinstance(root, BlobStore) else BlobStore(FilesystemDriver(root))
    app[UPLOAD_TIMEOUT] = upload_timeout
    app[READ_ONLY] = read_only or proxy is not None
    app[ACCESS] = access or Access.anyone()
    app.cleanup_ctx.append(_expire_uploads)
    app.on_response_prepare.append(_mark_responses)
    app.router.add_get("/v2/", ping)
    if proxy is not None:
        from registry.server import proxy as proxy_routes

        proxy_routes.install(app, proxy)
        return app
    # In this order: a route's repository name may hold slashes, the first route that matches wins.
    for resource in (tags, referrers, manifests, uploads, blobs):
        app.router.add_routes(resource.routes)
    return app


async def serve(
    root: Path | BlobStore,
    host: str,
    port: int,
    read_only: bool = False,
    access: Access | None = None,
    tls: ssl.SSLContext | None = None,
    log_format: str | None = None,
    proxy: ProxyCache | None = None,
) -> None:
    """Serve the registry (or, with `proxy`, a pull-through cache) until cancelled (over HTTPS when
    given a TLS context).

    `log_format` "text" or "json" writes one access-log line per request to standard output.
    """
    # lingering_time=0: a connection whose request body was left unread is closed at once, rather
    # than drained for up to 10 s (which also held shutdown up for as long).
    runner = web.AppRunner(
        make_app(root, read_only, access, proxy=proxy),
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
