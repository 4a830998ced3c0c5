"""The registry client: talks the OCI distribution API to any registry, and pushes and pulls images.

Nothing a registry sends is trusted until its digest is checked: manifests against the digest
they were asked by (or the `Docker-Content-Digest` the registry claims), blobs while they stream
to disk. Requests are retried with backoff on 429, 5xx and connection errors.

Authentication follows the registry's 401 challenge (`WWW-Authenticate`): `Basic` is answered
with the stored credentials (registry/credentials.py), `Bearer` by asking the named token realm
for a token (with the credentials when there are any, anonymously otherwise), kept per scope for
the client's life. Redirects are followed by hand so that `Authorization` never goes to another
host: registries redirect blob GETs to their storage.

Byte ranges are what lazyfs reads with: `read_ranges` asks for many ranges in one request
(`multipart/byteranges`) and falls back, once and for the client's life, to one range a request
when a registry will not. One client serves many concurrent callers on pooled connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from registry.credentials import Credentials, lookup
from registry.progress import TransferProgress
from storage.digest import Digest
from storage.errors import DigestMismatch, InvalidReference, NotFound, StorageError
from storage.importer import OciSource, host_architecture, import_oci
from storage.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    REF_NAME,
    Descriptor,
    Index,
    Manifest,
)
from storage.reference import ImageRef, validate_repository
from storage.store import OCI_LAYOUT, Image, Store

TRIES = 3
BACKOFF = 0.2  # seconds before the second try; doubled for each further one
CHUNK_SIZE = 16 << 20  # blobs larger than this are pushed in PATCH chunks of this size
MANIFEST_LIMIT = 4 << 20
_READ_SIZE = 1 << 20
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
MANIFEST_ACCEPT = ", ".join([MEDIA_MANIFEST, MEDIA_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])
MAX_REDIRECTS = 10
TOKEN_LIMIT = 1 << 20
# lazyfs reads from many tasks at once (64 concurrent reads are common): aiohttp's default of 100
# connections in all would make them queue behind pushes and single-range fallbacks.
CONNECTIONS = 256
SINGLE_RANGES_IN_FLIGHT = 64  # single-range requests at once per client when multi-range does not work
SINGLE_RANGES_PER_CALL = 8  # ... and per read_ranges call, so one large call cannot take them all
_REDIRECTS = (301, 302, 303, 307, 308)
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


class _CountedBytes(aiohttp.BytesPayload):
    """A request body sent in 1 MiB pieces, telling `sent` how far it got (for progress bars)."""

    def __init__(self, value: bytes, sent: Callable[[int], None]) -> None:
        super().__init__(value)
        self._sent = sent

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        view = memoryview(self._value)[:content_length]
        for start in range(0, len(view), _READ_SIZE):
            await writer.write(view[start : start + _READ_SIZE])  # waits while the socket is full
            self._sent(min(start + _READ_SIZE, len(view)))


class RegistryClientError(StorageError):
    """A registry that answered something other than what we asked for."""


class RegistryUnreachable(RegistryClientError):
    """No answer: connection refused, reset, timed out, or a body cut off half way."""


class RegistryNotFound(RegistryClientError, NotFound):
    """An unknown repository, tag, manifest or blob."""


class RegistryDigestMismatch(RegistryClientError, DigestMismatch):
    """Content from the registry whose digest is not the one asked for."""


class RegistryAuthRequired(RegistryClientError):
    """A registry that wants credentials we do not have."""


class RegistryAuthFailed(RegistryAuthRequired):
    """A registry (or its token service) that refused the credentials we sent."""


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3))
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def _origin(url: URL) -> tuple[str | None, str | None, int | None]:
    return url.scheme, url.host, url.port


def _repository_of(url: URL) -> str:
    """The repository a /v2/<name>/... URL is about ('' for /v2/ itself)."""
    rest = url.path.removeprefix("/v2/")
    for marker in ("/manifests/", "/blobs/", "/tags/", "/referrers/"):
        if marker in rest:
            return rest.split(marker, 1)[0]
    return ""


def is_local(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    return host in _LOCAL_HOSTS or registry in _LOCAL_HOSTS


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


async def read_body(content: aiohttp.StreamReader, limit: int) -> bytes:
    """A whole answer body, or its first `limit` bytes: `StreamReader.read(n)` alone returns what
    has arrived so far, which over a slow network is a part of it."""
    data = bytearray()
    while len(data) < limit and (piece := await content.read(limit - len(data))):
        data += piece
    return bytes(data)


class RegistryClient:
    """One registry (`host[:port]`); use as `async with RegistryClient(...) as client`."""

    def __init__(
        self,
        registry: str,
        insecure: bool = False,
        credentials: Credentials | None = None,
        read_auth_file: bool = True,
    ) -> None:
        """`credentials` default to those stored for `registry` (unless `read_auth_file` is False)."""
        self.registry = registry
        scheme = "http" if insecure or is_local(registry) else "https"
        self.base = URL(f"{scheme}://{registry}")
        self._session: aiohttp.ClientSession | None = None
        self._credentials = credentials
        self._read_auth_file = read_auth_file and credentials is None
        self._basic = False  # the registry asked for basic auth: send it with every request
        self._tokens: dict[str, str] = {}  # bearer token by challenge scope
        self._scope_of_repo: dict[str, str] = {}  # the scope last granted for a repository
        self._multi_range = True  # until the registry answers a multi-range request with 200/400/416
        self._ranges_ignored = False  # the registry answered a single Range with the whole blob
        self._single_ranges: asyncio.Semaphore | None = None

    @property
    def credentials(self) -> Credentials | None:
        if self._read_auth_file:  # read when first needed: anonymous pulls never touch the file
            self._read_auth_file = False
            self._credentials = lookup(self.registry)
        return self._credentials

    @property
    def multi_range(self) -> bool:
        """False once the registry refused or ignored a multi-range request: then one range a request."""
        return self._multi_range

    async def __aenter__(self) -> RegistryClient:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=0)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False, connector=connector)
        self._single_ranges = asyncio.Semaphore(SINGLE_RANGES_IN_FLIGHT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests --------------------------------------------------------------------------------

    def _url(self, repo: str, tail: str) -> URL:
        validate_repository(repo)
        return self.base.with_path(f"/v2/{repo}/{tail}", encoded=False)

    def _resolve(self, location: str | None) -> URL:
        if not location:
            raise RegistryClientError(f"{self.registry}: an upload answer without a Location header")
        return self.base.join(URL(location))

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        url: URL,
        what: str,
        headers: dict[str, str] | None = None,
        data: bytes | aiohttp.BytesPayload | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response of the last try; 429, 5xx and connection errors are tried again.

        A 401 is answered once with credentials for the registry's challenge; the caller sees
        the 401 only when that did not help.
        """
        assert self._session is not None, "use RegistryClient in `async with`"
        authenticated = False
        attempt = 0
        while True:
            last = attempt == TRIES - 1
            try:
                response = await self._request(method, url, headers or {}, data)
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                if last:
                    raise self._unreachable(e) from None
                await asyncio.sleep(BACKOFF * 2**attempt)
                attempt += 1
                continue
            if response.status == 401 and not authenticated and _origin(response.url) == _origin(self.base):
                authenticated = True
                try:
                    retry = await self._authenticate(response.headers.get("WWW-Authenticate", ""), url)
                except BaseException:
                    response.release()
                    raise
                if retry:
                    response.release()
                    continue
            elif (response.status == 429 or response.status >= 500) and not last:
                response.release()
                await asyncio.sleep(BACKOFF * 2**attempt)
                attempt += 1
                continue
            try:
                yield response
            finally:
                response.release()
            return

    async def _request(
        self, method: str, url: URL, headers: dict[str, str], data: bytes | aiohttp.BytesPayload | None
    ) -> aiohttp.ClientResponse:
        """One request, redirects followed by hand: `Authorization` only ever goes to the registry."""
        assert self._session is not None
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if _origin(url) == _origin(self.base):
                authorization = self._authorization(url)
                if authorization is not None:
                    sent["Authorization"] = authorization
            response = await self._session.request(
                method, url, headers=sent, data=data, allow_redirects=False
            )
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location or method not in ("GET", "HEAD"):
                return response
            response.release()
            url = url.join(URL(location))
        raise RegistryClientError(f"{self.registry}: more than {MAX_REDIRECTS} redirects")

    def _authorization(self, url: URL) -> str | None:
        scope = self._scope_of_repo.get(_repository_of(url), self._scope_of_repo.get(""))
        if scope is not None and scope in self._tokens:
            return f"Bearer {self._tokens[scope]}"
        if self._basic and self.credentials is not None:
            return self.credentials.basic()
        return None

    async def _authenticate(self, challenge: str, url: URL) -> bool:
        """Get what the challenge asks for; True when the request is worth sending again."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self._basic or self.credentials is None:
                return False
            self._basic = True
            return True
        if scheme != "bearer" or not params.get("realm"):
            return False
        scope = params.get("scope", "")
        repo = _repository_of(url)
        if scope in self._tokens and self._scope_of_repo.get(repo) != scope:
            self._scope_of_repo[repo] = scope  # a token we hold but did not send
            return True
        self._tokens[scope] = await self._fetch_token(params["realm"], params.get("service"), scope)
        self._scope_of_repo[repo] = scope
        return True

    async def _fetch_token(self, realm: str, service: str | None, scope: str) -> str:
        assert self._session is not None
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        token_url = URL(realm).update_query(query)
        if token_url.scheme not in ("http", "https") or not token_url.host:
            raise RegistryClientError(f"{self.registry}: a token realm that is not an HTTP URL: {realm!r}")
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic()
        what = f"token from {token_url.with_query(None)}"
        try:
            async with self._session.get(token_url, headers=headers) as response:
                if response.status in (401, 403):
                    raise self._auth_error(what, self.credentials is not None, "refused")
                if response.status != 200:
                    raise RegistryClientError(f"{self.registry}: {what}: HTTP {response.status}")
                body = await read_body(response.content, TOKEN_LIMIT)
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            raise self._unreachable(e) from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryClientError(f"{self.registry}: {what}: an answer without a token")
        return token

    def _auth_error(self, what: str, sent: bool, detail: str) -> RegistryAuthRequired:
        if sent:
            return RegistryAuthFailed(
                f"{self.registry}: {what}: credentials {detail}: run `lazyctr login {self.registry}` again"
            )
        return RegistryAuthRequired(
            f"{self.registry}: {what}: authentication required: run `lazyctr login {self.registry}`"
        )

    def _unreachable(self, e: BaseException) -> RegistryUnreachable:
        os_error = getattr(e, "os_error", None)
        if isinstance(os_error, ConnectionRefusedError):
            reason = "connection refused"
        elif isinstance(e, TimeoutError):
            reason = "timed out"
        else:
            reason = str(e) or type(e).__name__
        return RegistryUnreachable(f"cannot reach registry {self.registry}: {reason}")

    async def _error(self, response: aiohttp.ClientResponse, what: str) -> RegistryClientError:
        """The registry's error answer as one line."""
        code, message = "", ""
        with contextlib.suppress(Exception):
            body = json.loads(await read_body(response.content, 64 << 10))
            error = body["errors"][0]
            code, message = str(error.get("code", "")), str(error.get("message", ""))
        detail = f"{message} ({code})" if code else f"HTTP {response.status} {response.reason or ''}".strip()
        text = f"{self.registry}: {what}: {detail}"
        if response.status == 401:
            sent = "Authorization" in response.request_info.headers and self.credentials is not None
            return self._auth_error(what, sent, "refused" + (f" ({code})" if code else ""))
        if response.status == 404:
            return RegistryNotFound(text)
        return RegistryClientError(text)

    # -- reading ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the registry speaks the distribution API (a 401 still counts as an answer)."""
        async with self._send("GET", self.base.with_path("/v2/"), "ping") as response:
            if response.status not in (200, 401):
                raise await self._error(response, "ping")

    async def login(self) -> None:
        """Check that the registry takes our credentials (raises RegistryAuthFailed when not)."""
        failed = RegistryAuthFailed(f"{self.registry}: login failed: credentials refused")
        try:
            async with self._send("GET", self.base.with_path("/v2/"), "login") as response:
                if response.status == 401:
                    raise failed
                if response.status != 200:
                    raise await self._error(response, "login")
        except RegistryAuthRequired as e:  # from a token service
            raise failed from e

    async def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, Digest]:
        """The manifest or index `ref` (tag or digest) of `repo`: its bytes, media type and digest."""
        what = f"{repo}@{ref}" if ref.startswith("sha256:") else f"{repo}:{ref}"
        expected = Digest(ref) if ":" in ref else None
        async with self._send(
            "GET", self._url(repo, f"manifests/{ref}"), what, {"Accept": MANIFEST_ACCEPT}
        ) as response:
            if response.status != 200:
                raise await self._error(response, what)
            data = await read_body(response.content, MANIFEST_LIMIT + 1)
            if len(data) > MANIFEST_LIMIT:
                raise RegistryClientError(f"{self.registry}: {what}: manifest larger than {MANIFEST_LIMIT}")
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
            claimed = response.headers.get("Docker-Content-Digest")
        found = Digest.of(data)
        if expected is None and claimed:
            expected = Digest(claimed)
        if expected is not None and found != expected:
            raise RegistryDigestMismatch(
                f"{self.registry}: manifest {what} does not match its digest: expected {expected}, "
                f"found {found}"
            )
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            with contextlib.suppress(Exception):
                media_type = str(json.loads(data).get("mediaType") or media_type)
        return data, media_type, found

    async def head_blob(self, repo: str, digest: str) -> int | None:
        """The size of blob `digest` in `repo`, or None when the repository does not have it."""
        what = f"{repo}@{digest}"
        async with self._send("HEAD", self._url(repo, f"blobs/{Digest(digest)}"), what) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise await self._error(response, f"blob {what}")
            return response.content_length or 0

    async def get_blob(
        self,
        repo: str,
        digest: str,
        dest: BinaryIO,
        size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Stream blob `digest` into `dest` (from its start), checking it; returns its size.

        `progress` is told the bytes received so far, as they arrive.

        On a mismatch `dest` holds unverified bytes: the caller's temporary file must be dropped.
        """
        digest = Digest(digest)
        what = f"blob {repo}@{digest}"
        for attempt in range(TRIES):
            dest.seek(0)
            dest.truncate()
            hasher = hashlib.sha256()
            written = 0
            try:
                async with self._send("GET", self._url(repo, f"blobs/{digest}"), what) as response:
                    if response.status != 200:
                        raise await self._error(response, what)
                    async for piece in response.content.iter_chunked(_READ_SIZE):
                        written += len(piece)
                        if size is not None and written > size:
                            raise RegistryDigestMismatch(
                                f"{self.registry}: {what} is larger than its {size} bytes"
                            )
                        hasher.update(piece)
                        dest.write(piece)
                        if progress is not None:
                            progress(written)
                break
            except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
                if attempt == TRIES - 1:
                    raise self._unreachable(e) from None
                await asyncio.sleep(BACKOFF * 2**attempt)
        dest.flush()
        found = Digest.from_hasher(hasher)
        if found != digest or (size is not None and written != size):
            raise RegistryDigestMismatch(
                f"{self.registry}: {what} does not match its digest: found {found}, {written} bytes"
            )
        return written

    async def stream_range(self, repo: str, digest: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """Bytes [offset, offset+length) of a blob as they arrive, in pieces, with one Range GET
        (a 200 answer is skipped to the offset). Unverified, as for `read_range`."""
        if offset < 0 or length <= 0:
            raise InvalidReference(f"invalid byte range: offset {offset}, length {length}")
        what = f"blob {repo}@{Digest(digest)} bytes {offset}+{length}"
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        async with self._send("GET", self._url(repo, f"blobs/{digest}"), what, headers) as response:
            if response.status == 206:
                start, _ = _parse_content_range(response.headers.get("Content-Range"), what)
                skip = offset - start
            elif response.status == 200:
                skip = offset
            else:
                raise await self._error(response, what)
            if skip < 0:
                raise RegistryClientError(f"{self.registry}: {what}: the answer starts at byte {start}")
            left = length
            async for piece in response.content.iter_chunked(_READ_SIZE):
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                if piece:
                    yield piece[:left]
                    left -= min(left, len(piece))
                if not left:
                    return
        if left:
            raise RegistryClientError(f"{self.registry}: {what}: the answer ended {left} bytes short")

    async def read_range(self, repo: str, digest: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a blob, with one Range GET (a 200 answer is sliced).

        The bytes cannot be checked against the blob digest: callers check them against the
        digest of what they hold (a TOC entry's chunk digest).
        """
        _check_ranges([(offset, length)])
        what = f"blob {repo}@{Digest(digest)} bytes {offset}+{length}"
        where = f"{self.registry}: {what}"
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        for attempt in range(TRIES):
            try:
                async with self._send("GET", self._url(repo, f"blobs/{digest}"), what, headers) as response:
                    if response.status == 206:
                        start, data = await _read_part(response, where)
                        if start != offset or len(data) != length:
                            raise RegistryClientError(
                                f"{self.registry}: {what}: got {len(data)} bytes from offset {start}"
                            )
                        return data
                    if response.status == 200:  # a server without ranges: skip to the offset
                        self._ranges_ignored = True
                        return (await _slice_stream(response.content, [(offset, length)], where))[0]
                    raise await self._error(response, what)
            except _BODY_ERRORS as e:
                if attempt == TRIES - 1:
                    raise self._unreachable(e) from None
                await asyncio.sleep(BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def read_ranges(self, repo: str, digest: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length) range of a blob, in the order asked, in one request.

        The request asks for every range at once (`Range: bytes=a-b,c-d`, answered with
        `multipart/byteranges`). A registry that answers that with the whole blob (200) is read
        only as far as the last range; one that refuses it (400, 416) is asked again range by
        range, a few at a time. Either way the client remembers, and later calls go straight to
        single ranges. As with `read_range`, the caller checks the bytes against its own digests.
        """
        _check_ranges(ranges)
        if not ranges:
            return []
        if len(ranges) == 1:
            return [await self.read_range(repo, digest, *ranges[0])]
        spans = _merge(ranges)
        if len(spans) == 1 or (not self._multi_range and not self._ranges_ignored):
            return await self._read_spans_one_by_one(repo, digest, spans, ranges)
        what = f"blob {repo}@{Digest(digest)} ({len(ranges)} ranges)"
        where = f"{self.registry}: {what}"
        header = "bytes=" + ",".join(f"{start}-{end - 1}" for start, end in spans)
        url = self._url(repo, f"blobs/{digest}")
        for attempt in range(TRIES):
            try:
                async with self._send("GET", url, what, {"Range": header}) as response:
                    if response.status == 206:
                        parts = await _read_parts(response, spans, where)
                        return [_cut(parts, offset, length, where) for offset, length in ranges]
                    if response.status == 200:
                        self._multi_range = False  # the next call will not download whole blobs
                        return await _slice_stream(response.content, ranges, where)
                    if response.status in (400, 416) and not _beyond_the_end(response, spans):
                        self._multi_range = False
                        break
                    raise await self._error(response, what)
            except _BODY_ERRORS as e:
                if attempt == TRIES - 1:
                    raise self._unreachable(e) from None
                await asyncio.sleep(BACKOFF * 2**attempt)
        return await self._read_spans_one_by_one(repo, digest, spans, ranges)

    async def _read_spans_one_by_one(
        self, repo: str, digest: str, spans: list[tuple[int, int]], ranges: list[tuple[int, int]]
    ) -> list[bytes]:
        """`ranges` cut out of the merged `spans`, read with one Range GET each, a few at a time."""
        assert self._single_ranges is not None
        per_call = asyncio.Semaphore(SINGLE_RANGES_PER_CALL)

        async def one(start: int, end: int) -> tuple[int, bytes]:
            assert self._single_ranges is not None
            async with per_call, self._single_ranges:
                return start, await self.read_range(repo, digest, start, end - start)

        tasks = [asyncio.ensure_future(one(start, end)) for start, end in spans]
        try:
            parts = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:  # the first failure is the answer: the others are not waited for
                task.cancel()
            raise
        what = f"{self.registry}: blob {repo}@{Digest(digest)} ({len(ranges)} ranges)"
        return [_cut(parts, offset, length, what) for offset, length in ranges]

    # -- writing ---------------------------------------------------------------------------------

    async def push_blob(
        self,
        repo: str,
        digest: str,
        path: Path,
        mount_from: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Upload the blob at `path`; returns "exists", "mounted" or "pushed".

        `progress` is told the bytes sent so far, as they go.
        """
        digest = Digest(digest)
        if await self.head_blob(repo, digest) is not None:
            return "exists"
        what = f"upload of {repo}@{digest}"
        uploads = self._url(repo, "blobs/uploads/")
        if mount_from is not None:
            validate_repository(mount_from)
            uploads = uploads.with_query({"mount": digest, "from": mount_from})
        async with self._send("POST", uploads, what, {"Content-Length": "0"}) as response:
            if response.status == 201:
                return "mounted"
            if response.status != 202:
                raise await self._error(response, what)
            location = self._resolve(response.headers.get("Location"))
        size = path.stat().st_size

        def counted(piece: bytes, offset: int) -> bytes | aiohttp.BytesPayload:
            if progress is None:
                return piece
            return _CountedBytes(piece, lambda sent: progress(offset + sent))

        with open(path, "rb") as f:
            if size <= CHUNK_SIZE:
                body = f.read()
            else:
                offset, body = 0, b""
                while True:
                    piece = f.read(CHUNK_SIZE)
                    if not piece:
                        break
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                    }
                    async with self._send(
                        "PATCH", location, what, headers, counted(piece, offset)
                    ) as response:
                        if response.status != 202:
                            raise await self._error(response, what)
                        location = self._resolve(response.headers.get("Location"))
                    offset += len(piece)
        headers = {"Content-Type": "application/octet-stream"}
        final = location.update_query({"digest": digest})
        async with self._send("PUT", final, what, headers, counted(body, size - len(body))) as response:
            if response.status != 201:
                raise await self._error(response, what)
        return "pushed"

    async def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> Digest:
        what = f"manifest {repo}:{ref}"
        headers = {"Content-Type": media_type}
        async with self._send("PUT", self._url(repo, f"manifests/{ref}"), what, headers, data) as response:
            if response.status != 201:
                raise await self._error(response, what)
        return Digest.of(data)


# -- byte ranges -------------------------------------------------------------------------------------

_BODY_ERRORS = (
    TimeoutError,
    aiohttp.ClientPayloadError,
    aiohttp.ClientConnectionError,
    asyncio.IncompleteReadError,
)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)\Z")
_PART_HEADERS_LIMIT = 64 << 10


def _check_ranges(ranges: list[tuple[int, int]]) -> None:
    for offset, length in ranges:
        if offset < 0 or length <= 0:
            raise InvalidReference(f"invalid byte range: offset {offset}, length {length}")


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end exclusive) spans covering `ranges`, sorted, with overlapping and adjacent ones joined.

    Servers may refuse overlapping ranges (Go's http.ServeContent answers 200 when they add up
    to more than the blob), and fewer parts are cheaper for both sides.
    """
    spans: list[tuple[int, int]] = []
    for offset, length in sorted(ranges):
        if spans and offset <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], offset + length))
        else:
            spans.append((offset, offset + length))
    return spans


def _beyond_the_end(response: aiohttp.ClientResponse, spans: list[tuple[int, int]]) -> bool:
    """A 416 that says why (`Content-Range: bytes */SIZE`) and is right: a range starts past the end."""
    size = response.headers.get("Content-Range", "").removeprefix("bytes */")
    return response.status == 416 and size.isdigit() and any(start >= int(size) for start, _ in spans)


def _parse_content_range(value: str | None, what: str) -> tuple[int, int]:
    """`bytes A-B/SIZE` -> (A, B + 1)."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match or int(match.group(2)) < int(match.group(1)):
        raise RegistryClientError(f"{what}: a partial answer with Content-Range {value!r}")
    return int(match.group(1)), int(match.group(2)) + 1


async def _read_part(response: aiohttp.ClientResponse, what: str) -> tuple[int, bytes]:
    """The body of a single-range 206: (its offset, its bytes)."""
    start, end = _parse_content_range(response.headers.get("Content-Range"), what)
    return start, await response.content.readexactly(end - start)


async def _read_parts(
    response: aiohttp.ClientResponse, spans: list[tuple[int, int]], what: str
) -> list[tuple[int, bytes]]:
    """The parts of a 206 answer as (offset, bytes); each must lie within a span we asked for.

    Parts are read by the length their Content-Range gives, so part bodies are never searched
    for the boundary.
    """
    content_type = response.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/byteranges"):
        parts = [await _read_part(response, what)]  # ranges joined into one
    else:
        boundary = _boundary(content_type, what)
        parts = []
        headers_read = 0
        while True:
            line = await response.content.readline()
            if not line:
                raise asyncio.IncompleteReadError(b"", None)
            headers_read += len(line)
            if headers_read > _PART_HEADERS_LIMIT:
                raise RegistryClientError(f"{what}: a multipart answer with too much besides the bytes")
            line = line.rstrip(b"\r\n")
            if line == b"--" + boundary + b"--":
                break
            if line != b"--" + boundary:
                continue  # the preamble, or the line break after a part
            part_range: str | None = None
            while header := (await response.content.readline()).rstrip(b"\r\n"):
                headers_read += len(header)
                if headers_read > _PART_HEADERS_LIMIT:
                    raise RegistryClientError(f"{what}: a multipart answer with too much besides the bytes")
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-range":
                    part_range = value
            start, end = _parse_content_range(part_range, what)
            if len(parts) >= len(spans) or not any(s <= start and end <= e for s, e in spans):
                raise RegistryClientError(
                    f"{what}: a part with bytes {start}-{end - 1} that we did not ask for"
                )
            parts.append((start, await response.content.readexactly(end - start)))
    for start, data in parts:
        if not any(s <= start and start + len(data) <= e for s, e in spans):
            raise RegistryClientError(
                f"{what}: a part with bytes {start}+{len(data)} that we did not ask for"
            )
    return parts


def _boundary(content_type: str, what: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    raise RegistryClientError(f"{what}: a multipart answer without a boundary")


def _cut(parts: list[tuple[int, bytes]], offset: int, length: int, what: str) -> bytes:
    for start, data in parts:
        if start <= offset and offset + length <= start + len(data):
            return data[offset - start : offset - start + length]
    raise RegistryClientError(f"{what}: the answer lacks bytes {offset}+{length}")


async def _slice_stream(
    content: aiohttp.StreamReader, ranges: list[tuple[int, int]], what: str
) -> list[bytes]:
    """The ranges out of a whole blob as it streams by; reading stops after the last one."""
    out = [bytearray() for _ in ranges]
    last = max(offset + length for offset, length in ranges)
    position = 0
    while position < last:
        piece = await content.read(min(_READ_SIZE, last - position))
        if not piece:
            break
        end = position + len(piece)
        for (offset, length), buffer in zip(ranges, out, strict=True):
            lo, hi = max(offset, position), min(offset + length, end)
            if lo < hi:
                buffer += piece[lo - position : hi - position]
        position = end
    for (offset, length), buffer in zip(ranges, out, strict=True):
        if len(buffer) != length:
            raise RegistryClientError(f"{what}: the blob ends before bytes {offset}+{length}")
    return [bytes(buffer) for buffer in out]


# -- images ------------------------------------------------------------------------------------------


def local_name(ref: ImageRef) -> str:
    """The store names images `repository:tag`; one pulled by digest alone is tagged with it."""
    tag = ref.tag if ref.tag is not None else f"sha256-{ref.digest.hex if ref.digest else ''}"
    return f"{ref.name}:{tag}"


def registry_ref(text: str) -> ImageRef:
    """A reference that names its registry host, as push and pull need."""
    ref = ImageRef.parse(text)
    if ref.domain is None:
        raise InvalidReference(
            f"{text!r} names no registry: expected HOST[:PORT]/NAME[:TAG], e.g. 127.0.0.1:5000/{text}"
        )
    return ref


@dataclass
class BlobResult:
    digest: Digest
    size: int
    outcome: str  # "pushed", "exists", "mounted"

    def line(self) -> str:
        return f"{self.outcome} {self.digest} {_human_size(self.size)}"


async def push_image(
    store: Store,
    image: Image,
    ref: ImageRef,
    insecure: bool = False,
    report: Callable[[BlobResult], None] = lambda _: None,
    progress: TransferProgress | None = None,
) -> Digest:
    """Push config, layers (in parallel) and manifest of `image` to `ref`; the manifest digest."""
    progress = progress or TransferProgress()
    assert ref.domain is not None
    if ref.digest is not None:
        raise InvalidReference(f"cannot push to a digest: {ref}")
    repo, tag = ref.repository, ref.tag or "latest"
    with store.ingesting():  # gc must not remove the blobs while they are sent
        manifest_bytes = store.read_blob(image.descriptor.digest)

        async def push_one(descriptor: Descriptor) -> None:
            path = store.blob_path(descriptor.digest)
            progress.start(descriptor.digest, descriptor.size)
            if not path.exists():  # a lazily pulled layer: fine where the registry has it already
                outcome = await _push_absent_blob(client, repo, descriptor, image)
            else:
                outcome = await client.push_blob(
                    repo, descriptor.digest, path, progress=lambda n: progress.advance(descriptor.digest, n)
                )
            progress.done(descriptor.digest, outcome)
            report(BlobResult(descriptor.digest, descriptor.size, outcome))

        async with RegistryClient(ref.domain, insecure) as client:
            await client.ping()
            await asyncio.gather(*(push_one(d) for d in [image.manifest.config, *image.manifest.layers]))
            return await client.put_manifest(repo, tag, manifest_bytes, image.descriptor.media_type)


async def _push_absent_blob(client: RegistryClient, repo: str, blob: Descriptor, image: Image) -> str:
    """A blob of `image` that is not in the store (lazily pulled): "exists" if the target has it,
    "mounted" if it comes from another repository of the same registry, else an error."""
    if await client.head_blob(repo, blob.digest) is not None:
        return "exists"
    source = (image.source or "").removeprefix("http://")
    domain, _, source_repo = source.partition("/")
    if domain == client.registry and source_repo and source_repo != repo:
        uploads = client._url(repo, "blobs/uploads/").with_query({"mount": blob.digest, "from": source_repo})
        what = f"mount of {repo}@{blob.digest}"
        async with client._send("POST", uploads, what, {"Content-Length": "0"}) as response:
            if response.status == 201:
                return "mounted"
    raise NotFound(
        f"blob {blob.digest} of {image.name} is not in the store (the image was pulled lazily): "
        "pull it with --eager to push it to another registry"
    )


def _pick_platform(index: Index, what: str) -> Descriptor:
    arch = host_architecture()
    for descriptor in index.manifests:
        plat = descriptor.platform or {}
        if plat.get("os", "linux") == "linux" and plat.get("architecture", arch) == arch:
            return descriptor
    raise RegistryNotFound(f"{what}: no image for linux/{arch} in the index")


async def fetch_manifest(client: RegistryClient, ref: ImageRef) -> tuple[bytes, str, Digest]:
    """The image manifest `ref` names (by digest, tag or `latest`): its bytes, media type and digest.

    When `ref` names an index, the manifest for linux on this machine's architecture is fetched
    from it. The bytes are checked against the digest (see `RegistryClient.get_manifest`).
    """
    repo = ref.repository
    data, media_type, digest = await client.get_manifest(repo, ref.digest or ref.tag or "latest")
    if media_type in INDEX_TYPES:
        chosen = _pick_platform(Index.parse(data), f"{client.registry}/{repo}")
        data, media_type, digest = await client.get_manifest(repo, chosen.digest)
    if media_type not in MANIFEST_TYPES:
        raise RegistryClientError(f"{client.registry}/{repo}: not an image manifest: {media_type!r}")
    return data, media_type, digest


async def pull_image(
    store: Store, text: str, insecure: bool = False, progress: TransferProgress | None = None
) -> Image:
    """Fetch the image `text` names (eagerly: every layer) and store it under `repo:tag`.

    The blobs land, verified, in a temporary OCI layout next to the store, which the importer
    then reads like any other layout: layers without a zstd:chunked TOC are converted there.
    Nothing is named in the store unless every blob checked out.
    """
    ref = registry_ref(text)
    assert ref.domain is not None
    shown = progress or TransferProgress()
    name = local_name(ref)
    repo = ref.repository
    with store.ingesting(), tempfile.TemporaryDirectory(dir=store.tmp, prefix="pull-") as tmp:
        layout = Path(tmp)
        blobs = layout / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        async with RegistryClient(ref.domain, insecure) as client:
            data, media_type, digest = await fetch_manifest(client, ref)
            manifest = Manifest.parse(data)
            (blobs / digest.hex).write_bytes(data)

            async def fetch(descriptor: Descriptor) -> None:
                target = blobs / descriptor.digest.hex
                if target.exists():
                    return
                if store.has_blob(descriptor.digest):  # already here: no need to fetch it again
                    with contextlib.suppress(OSError):
                        os.link(store.blob_path(descriptor.digest), target)
                        shown.done(descriptor.digest, "exists")
                        return
                shown.start(descriptor.digest, descriptor.size)
                with open(target, "w+b") as f:
                    await client.get_blob(
                        repo,
                        descriptor.digest,
                        f,
                        descriptor.size,
                        lambda n: shown.advance(descriptor.digest, n),
                    )
                shown.done(descriptor.digest, "pulled")

            await asyncio.gather(*(fetch(d) for d in [manifest.config, *manifest.layers]))
        (layout / "oci-layout").write_bytes(OCI_LAYOUT)
        entry = Descriptor(media_type, digest, len(data), {REF_NAME: name})
        (layout / "index.json").write_bytes(Index([entry]).to_bytes())
        return await asyncio.to_thread(import_oci, store, OciSource(layout, None), name)


__all__ = [
    "BlobResult",
    "RegistryAuthFailed",
    "RegistryAuthRequired",
    "RegistryClient",
    "RegistryClientError",
    "RegistryDigestMismatch",
    "RegistryNotFound",
    "RegistryUnreachable",
    "fetch_manifest",
    "pull_image",
    "push_image",
    "registry_ref",
]
