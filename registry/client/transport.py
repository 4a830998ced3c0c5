"""HTTP to one registry: the pooled aiohttp session, plain HTTP or TLS, retries, redirects, bodies.

Requests are retried with backoff on 429, 5xx and connection errors; `retrying` does the same for
callers whose answer body is cut off half way. A 401 is handed once to the authorizer (see
registry/client/auth.py), and the request sent again when it got what the challenge asked for.
Redirects are followed by hand so that `Authorization` never goes to another host: registries
redirect blob GETs to their storage. An error answer becomes one line (`error`). Every request
sent and the body bytes received are counted for `run --timings` (storage/timeline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from registry.client import tls
from registry.client.errors import RegistryClientError, RegistryNotFound, unreachable
from storage import timeline
from storage.reference import validate_repository

T = TypeVar("T")

TRIES = 3
BACKOFF = 0.2  # seconds before the second try; doubled for each further one
MAX_REDIRECTS = 10
READ_SIZE = 1 << 20
# lazyfs reads from many tasks at once (64 concurrent reads are common): aiohttp's default of 100
# connections in all would make them queue behind pushes and single-range fallbacks.
CONNECTIONS = 256
ERROR_BODY_LIMIT = 64 << 10
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_REDIRECTS = (301, 302, 303, 307, 308)
# What a body read that was cut off, or stalled, raises: worth a second try.
BODY_ERRORS = (
    TimeoutError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    asyncio.IncompleteReadError,
)

Body = bytes | aiohttp.BytesPayload


def is_local(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return host in _LOCAL_HOSTS or registry in _LOCAL_HOSTS


def release(response: aiohttp.ClientResponse) -> None:
    """Let the connection go, counting the body bytes that came for `run --timings`."""
    timeline.count_received(response.content.total_bytes)
    response.release()


def origin(url: URL) -> tuple[str | None, str | None, int | None]:
    return url.scheme, url.host, url.port


async def read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A whole answer body, or its first `limit` bytes: `StreamReader.read(n)` alone returns what
    has arrived so far, which over a slow network is a part of it."""
    data = bytearray()
    while len(data) < limit and (piece := await content.read(limit - len(data))):
        data += piece
    return bytes(data)


async def backoff(attempt: int) -> None:
    await asyncio.sleep(BACKOFF * 2**attempt)


class CountedBytes(aiohttp.BytesPayload):
    """A request body sent in 1 MiB pieces, telling `sent` how far it got (for progress bars)."""

    def __init__(self, value: bytes, sent: Callable[[int], None]) -> None:
        super().__init__(value)
        self._sent = sent

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        view = memoryview(self._value)[:content_length]
        for start in range(0, len(view), READ_SIZE):
            await writer.write(view[start : start + READ_SIZE])  # waits while the socket is full
            self._sent(min(start + READ_SIZE, len(view)))


class Authorizer(Protocol):
    """What the transport asks of authentication (registry/client/auth.py)."""

    def authorization(self, url: URL) -> str | None:
        """The `Authorization` header for a request to `url`, if we hold one."""

    async def answer(self, challenge: str, url: URL, session: aiohttp.ClientSession) -> bool:
        """Get what a 401's `WWW-Authenticate` asks for; True when the request is worth sending again."""

    def refused(self, what: str, sent: bool, detail: str) -> RegistryClientError:
        """The error for a 401 that stands (`sent`: the request carried an `Authorization`)."""


class Transport:
    """Requests to one registry (`host[:port]`); `open` before the first, `close` after the last."""

    def __init__(self, registry: str, insecure: bool, auth: Authorizer) -> None:
        self.registry = registry
        scheme = "http" if insecure or is_local(registry) else "https"
        self.base = URL(f"{scheme}://{registry}")
        self.auth = auth
        self._session: aiohttp.ClientSession | None = None

    def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=0)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use RegistryClient in `async with`"
        return self._session

    def url(self, repo: str, tail: str) -> URL:
        """/v2/<repo>/<tail> on the registry; `repo` is checked against the grammar first."""
        validate_repository(repo)
        return self.base.with_path(f"/v2/{repo}/{tail}", encoded=False)

    def resolve(self, location: str | None) -> URL:
        """An upload answer's `Location`, relative to the registry."""
        if not location:
            raise RegistryClientError(f"{self.registry}: an upload answer without a Location header")
        return self.base.join(URL(location))

    @contextlib.asynccontextmanager
    async def send(
        self, method: str, url: URL, headers: dict[str, str] | None = None, data: Body | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response of the last try; 429, 5xx and connection errors are tried again.

        A 401 is answered once with credentials for the registry's challenge; the caller sees
        the 401 only when that did not help.
        """
        authenticated = False
        attempt = 0
        while True:
            last = attempt == TRIES - 1
            try:
                response = await self._request(method, url, headers or {}, data)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if last:
                    raise unreachable(self.registry, e) from None
                await backoff(attempt)
                attempt += 1
                continue
            if response.status == 401 and not authenticated and origin(response.url) == origin(self.base):
                authenticated = True
                try:
                    challenge = response.headers.get("WWW-Authenticate", "")
                    retry = await self.auth.answer(challenge, url, self.session)
                except BaseException:
                    release(response)
                    raise
                if retry:
                    release(response)
                    continue
            elif (response.status == 429 or response.status >= 500) and not last:
                release(response)
                await backoff(attempt)
                attempt += 1
                continue
            try:
                yield response
            finally:
                release(response)
            return

    async def _request(
        self, method: str, url: URL, headers: dict[str, str], data: Body | None
    ) -> aiohttp.ClientResponse:
        """One request, redirects followed by hand: `Authorization` only ever goes to the registry."""
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if origin(url) == origin(self.base):
                authorization = self.auth.authorization(url)
                if authorization is not None:
                    sent["Authorization"] = authorization
            timeline.count_request()
            response = await self.session.request(
                method, url, headers=sent, data=data, allow_redirects=False, ssl=tls.for_url(url)
            )
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location or method not in ("GET", "HEAD"):
                return response
            release(response)
            url = url.join(URL(location))
        raise RegistryClientError(f"{self.registry}: more than {MAX_REDIRECTS} redirects")

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()`, tried again with backoff when the body it reads is cut off or stalls."""
        for tried in range(TRIES):
            try:
                return await attempt()
            except BODY_ERRORS as e:
                if tried == TRIES - 1:
                    raise unreachable(self.registry, e) from None
                await backoff(tried)
        raise AssertionError("unreachable")

    async def error(self, response: aiohttp.ClientResponse, what: str) -> RegistryClientError:
        """The registry's error answer as one line."""
        code, message = "", ""
        with contextlib.suppress(Exception):
            body = json.loads(await read_body(response.content, ERROR_BODY_LIMIT))
            error = body["errors"][0]
            code, message = str(error.get("code", "")), str(error.get("message", ""))
        detail = f"{message} ({code})" if code else f"HTTP {response.status} {response.reason or ''}".strip()
        text = f"{self.registry}: {what}: {detail}"
        if response.status == 401:
            sent = "Authorization" in response.request_info.headers
            return self.auth.refused(what, sent, "refused" + (f" ({code})" if code else ""))
        if response.status == 404:
            return RegistryNotFound(text)
        return RegistryClientError(text)
