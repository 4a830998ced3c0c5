"""The OCI distribution API as calls: manifests, blobs, uploads, referrers and byte ranges of blobs.

Nothing a registry sends is trusted until its digest is checked: manifests against the digest
they were asked by (or the `Docker-Content-Digest` the registry claims), blobs while they stream
to disk. Byte ranges cannot be checked against the blob's digest: their callers check them
against the digests they hold (a TOC entry's chunk digest).

Byte ranges are what lazyfs reads with: `read_ranges` asks for many ranges in one request
(`multipart/byteranges`) and falls back, once and for the client's life, to one range a request
when a registry will not. One client serves many concurrent callers on pooled connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from registry.client.auth import Authenticator
from registry.client.byteranges import (
    beyond_the_end,
    check_ranges,
    cut,
    merge,
    parse_content_range,
    range_header,
    read_part,
    read_parts,
    slice_stream,
)
from registry.client.errors import (
    RegistryAuthFailed,
    RegistryAuthRequired,
    RegistryClientError,
    RegistryDigestMismatch,
)
from registry.client.transport import READ_SIZE, Body, CountedBytes, Transport, read_body
from registry.credentials import Credentials
from storage.digest import Digest
from storage.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    Descriptor,
    Index,
)
from storage.reference import validate_repository, validate_tag

CHUNK_SIZE = 16 << 20  # blobs larger than this are pushed in PATCH chunks of this size
MANIFEST_LIMIT = 4 << 20
REFERRERS_LIMIT = 4 << 20
MANIFEST_ACCEPT = ", ".join([MEDIA_MANIFEST, MEDIA_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST])
SINGLE_RANGES_IN_FLIGHT = 64  # single-range requests at once per client when multi-range does not work
SINGLE_RANGES_PER_CALL = 8  # ... and per read_ranges call, so one large call cannot take them all
OCTET_STREAM = {"Content-Type": "application/octet-stream"}
RESUMES = 3  # times an upload goes on from where the registry says it stands, after a lost answer

Progress = Callable[[int], None]  # told the bytes moved so far, as they go


class _SessionLost(RegistryClientError):
    """An upload session the registry finished, dropped or spoilt behind our back; `error` says how."""

    def __init__(self, error: RegistryClientError) -> None:
        super().__init__(str(error))
        self.error = error


class BlobSink(Protocol):
    """Where `get_blob` writes: a binary file, or one that readers follow (storage.growing)."""

    def write(self, data: bytes, /) -> int: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def truncate(self, size: int | None = None, /) -> int: ...

    def flush(self) -> None: ...


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
        self.auth = Authenticator(registry, credentials, read_auth_file)
        self.transport = Transport(registry, insecure, self.auth)
        self._multi_range = True  # until the registry answers a multi-range request with 200/400/416
        self._ranges_ignored = False  # the registry answered a single Range with the whole blob
        self._single_ranges: asyncio.Semaphore | None = None

    @property
    def multi_range(self) -> bool:
        """False once the registry refused or ignored a multi-range request: then one range a request."""
        return self._multi_range

    async def __aenter__(self) -> RegistryClient:
        self.transport.open()
        self._single_ranges = asyncio.Semaphore(SINGLE_RANGES_IN_FLIGHT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.transport.close()

    # -- reading ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that the registry speaks the distribution API (a 401 still counts as an answer)."""
        async with self.transport.send("GET", self.transport.base.with_path("/v2/")) as response:
            if response.status not in (200, 401):
                raise await self.transport.error(response, "ping")

    async def login(self) -> None:
        """Check that the registry takes our credentials (raises RegistryAuthFailed when not)."""
        failed = RegistryAuthFailed(f"{self.registry}: login failed: credentials refused")
        try:
            async with self.transport.send("GET", self.transport.base.with_path("/v2/")) as response:
                if response.status == 401:
                    raise failed
                if response.status != 200:
                    raise await self.transport.error(response, "login")
        except RegistryAuthRequired as e:  # from a token service
            raise failed from e

    async def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, Digest]:
        """The manifest or index `ref` (tag or digest) of `repo`: its bytes, media type and digest."""
        expected = Digest(ref) if ":" in ref else None
        what = f"{repo}@{ref}" if expected else f"{repo}:{ref}"
        url = self.transport.url(repo, f"manifests/{ref}")
        _, data, headers = await self._small_answer(url, MANIFEST_ACCEPT, what, MANIFEST_LIMIT + 1)
        if len(data) > MANIFEST_LIMIT:
            raise RegistryClientError(f"{self.registry}: {what}: manifest larger than {MANIFEST_LIMIT}")
        media_type = headers.get("Content-Type", "").split(";")[0].strip()
        claimed = headers.get("Docker-Content-Digest")
        if expected is None and claimed:
            expected = Digest(claimed)
        found = Digest.of(data, expected.algorithm) if expected else Digest.of(data)
        if expected is not None and found != expected:
            raise RegistryDigestMismatch(
                f"{self.registry}: manifest {what} does not match its digest: expected {expected}, "
                f"found {found}"
            )
        if media_type not in MANIFEST_TYPES | INDEX_TYPES:
            with contextlib.suppress(Exception):
                media_type = str(json.loads(data).get("mediaType") or media_type)
        return data, media_type, found

    async def referrers(
        self, repo: str, subject: Digest, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """The manifests that refer to `subject` (of `artifact_type`); none from a registry without
        the referrers API (a 404)."""
        url = self.transport.url(repo, f"referrers/{subject}")
        if artifact_type is not None:
            url = url.with_query({"artifactType": artifact_type})
        what = f"referrers of {repo}@{subject}"
        status, data, _ = await self._small_answer(url, MEDIA_INDEX, what, REFERRERS_LIMIT, missing_ok=True)
        if status == 404:
            return []
        # The filter is the client's to apply too: a registry may ignore it (the spec allows that).
        return [d for d in Index.parse(data).manifests if artifact_type in (None, d.artifact_type)]

    async def tags(self, repo: str) -> list[str]:
        """The tags of `repo` (the first page the registry gives); none for a repository it lacks."""
        url, what = self.transport.url(repo, "tags/list"), f"tags of {repo}"
        status, data, _ = await self._small_answer(url, None, what, REFERRERS_LIMIT, missing_ok=True)
        if status == 404:
            return []
        try:
            found = json.loads(data).get("tags") or []
        except (ValueError, AttributeError):
            raise RegistryClientError(f"{self.registry}: tags of {repo}: not a tag list") from None
        return [tag for tag in found if isinstance(tag, str)]

    async def _small_answer(
        self, url: URL, accept: str | None, what: str, limit: int, missing_ok: bool = False
    ) -> tuple[int, bytes, CIMultiDictProxy[str]]:
        """A GET whose answer is small (a manifest, a list): its status, body (up to `limit` bytes)
        and headers, asked again when the body is cut off or stalls. A 404 is an error unless
        `missing_ok`; any other status but 200 is one."""

        async def attempt() -> tuple[int, bytes, CIMultiDictProxy[str]]:
            async with self.transport.send("GET", url, {"Accept": accept} if accept else None) as response:
                if response.status == 404 and missing_ok:
                    return 404, b"", response.headers
                if response.status != 200:
                    raise await self.transport.error(response, what)
                return 200, await read_body(response.content, limit), response.headers

        return await self.transport.retrying(attempt)

    async def head_blob(self, repo: str, digest: str) -> int | None:
        """The size of blob `digest` in `repo`, or None when the repository does not have it."""
        url = self.transport.url(repo, f"blobs/{Digest(digest)}")
        async with self.transport.send("HEAD", url) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise await self.transport.error(response, f"blob {repo}@{digest}")
            return response.content_length or 0

    async def get_blob(
        self,
        repo: str,
        digest: str,
        dest: BlobSink,
        size: int | None = None,
        *,
        progress: Progress | None = None,
    ) -> int:
        """Stream blob `digest` into `dest` (from its start), checking it; returns its size.

        On a mismatch `dest` holds unverified bytes: the caller's temporary file must be dropped.
        """
        digest = Digest(digest)
        what = f"blob {repo}@{digest}"
        url = self.transport.url(repo, f"blobs/{digest}")

        async def attempt() -> tuple[Digest, int]:
            dest.seek(0)
            dest.truncate()
            hasher = digest.hasher()
            written = 0
            async with self.transport.send("GET", url) as response:
                if response.status != 200:
                    raise await self.transport.error(response, what)
                async for piece in response.content.iter_chunked(READ_SIZE):
                    written += len(piece)
                    if size is not None and written > size:
                        raise RegistryDigestMismatch(
                            f"{self.registry}: {what} is larger than its {size} bytes"
                        )
                    hasher.update(piece)
                    dest.write(piece)
                    if progress is not None:
                        progress(written)
            return Digest.from_hasher(hasher), written

        found, written = await self.transport.retrying(attempt)
        dest.flush()
        if found != digest or (size is not None and written != size):
            raise RegistryDigestMismatch(
                f"{self.registry}: {what} does not match its digest: found {found}, {written} bytes"
            )
        return written

    # -- byte ranges -----------------------------------------------------------------------------

    async def stream_range(self, repo: str, digest: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """Bytes [offset, offset+length) of a blob as they arrive, in pieces, with one Range GET
        (a 200 answer is skipped to the offset). Unverified, as for `read_range`."""
        check_ranges([(offset, length)])
        what = f"blob {repo}@{Digest(digest)} bytes {offset}+{length}"
        headers = {"Range": range_header([(offset, offset + length)])}
        async with self.transport.send(
            "GET", self.transport.url(repo, f"blobs/{digest}"), headers
        ) as response:
            if response.status == 206:
                start, _ = parse_content_range(response.headers.get("Content-Range"), what)
                skip = offset - start
            elif response.status == 200:
                skip = offset
            else:
                raise await self.transport.error(response, what)
            if skip < 0:
                raise RegistryClientError(f"{self.registry}: {what}: the answer starts at byte {start}")
            left = length
            async for piece in response.content.iter_chunked(READ_SIZE):
                if skip:
                    trim = min(skip, len(piece))
                    piece, skip = piece[trim:], skip - trim
                if piece:
                    yield piece[:left]
                    left -= min(left, len(piece))
                if not left:
                    return
        if left:
            raise RegistryClientError(f"{self.registry}: {what}: the answer ended {left} bytes short")

    async def read_range(self, repo: str, digest: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a blob, with one Range GET (a 200 answer is sliced)."""
        check_ranges([(offset, length)])
        what = f"blob {repo}@{Digest(digest)} bytes {offset}+{length}"
        where = f"{self.registry}: {what}"
        headers = {"Range": range_header([(offset, offset + length)])}
        url = self.transport.url(repo, f"blobs/{digest}")

        async def attempt() -> bytes:
            async with self.transport.send("GET", url, headers) as response:
                if response.status == 206:
                    start, data = await read_part(response, where)
                    if start != offset or len(data) != length:
                        raise RegistryClientError(f"{where}: got {len(data)} bytes from offset {start}")
                    return data
                if response.status == 200:  # a server without ranges: skip to the offset
                    self._ranges_ignored = True
                    return (await slice_stream(response.content, [(offset, length)], where))[0]
                raise await self.transport.error(response, what)

        return await self.transport.retrying(attempt)

    async def read_ranges(self, repo: str, digest: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """The bytes of each (offset, length) range of a blob, in the order asked, in one request.

        The request asks for every range at once (`Range: bytes=a-b,c-d`, answered with
        `multipart/byteranges`). A registry that answers that with the whole blob (200) is read
        only as far as the last range; one that refuses it (400, 416) is asked again range by
        range, a few at a time. Either way the client remembers, and later calls go straight to
        single ranges. As with `read_range`, the caller checks the bytes against its own digests.
        """
        check_ranges(ranges)
        if not ranges:
            return []
        if len(ranges) == 1:
            return [await self.read_range(repo, digest, *ranges[0])]
        spans = merge(ranges)
        if len(spans) == 1 or (not self._multi_range and not self._ranges_ignored):
            return await self._read_spans_one_by_one(repo, digest, spans, ranges)
        what = f"blob {repo}@{Digest(digest)} ({len(ranges)} ranges)"
        where = f"{self.registry}: {what}"
        headers = {"Range": range_header(spans)}
        url = self.transport.url(repo, f"blobs/{digest}")

        async def attempt() -> list[bytes] | None:
            """The ranges, or None when the registry will not answer several at once."""
            async with self.transport.send("GET", url, headers) as response:
                if response.status == 206:
                    parts = await read_parts(response, spans, where)
                    return [cut(parts, offset, length, where) for offset, length in ranges]
                if response.status == 200:
                    self._multi_range = False  # the next call will not download whole blobs
                    return await slice_stream(response.content, ranges, where)
                if response.status in (400, 416) and not beyond_the_end(response, spans):
                    self._multi_range = False
                    return None
                raise await self.transport.error(response, what)

        found = await self.transport.retrying(attempt)
        if found is not None:
            return found
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
        return [cut(parts, offset, length, what) for offset, length in ranges]

    # -- writing ---------------------------------------------------------------------------------

    async def start_upload(self, repo: str, digest: str, mount_from: str | None = None) -> URL | None:
        """Ask to mount blob `digest` into `repo`: from `mount_from` (same registry), else, as OCI 1.1
        has it, from any repository of the registry we may read. None when the registry did (201);
        otherwise the location of the upload session it started instead (202)."""
        query = {"mount": str(Digest(digest))}
        if mount_from is not None:
            validate_repository(mount_from)
            query["from"] = mount_from
        uploads = self.transport.url(repo, "blobs/uploads/").with_query(query)
        async with self.transport.send("POST", uploads, {"Content-Length": "0"}) as response:
            if response.status == 201:
                return None
            if response.status != 202:
                raise await self.transport.error(response, f"upload of {repo}@{digest}")
            return self.transport.resolve(response.headers.get("Location"))

    async def cancel_upload(self, location: URL) -> None:
        """Drop an upload session; one the registry does not drop expires there by itself."""
        with contextlib.suppress(RegistryClientError):
            async with self.transport.send("DELETE", location):
                pass

    async def upload(
        self, repo: str, location: URL, digest: str, path: Path, *, progress: Progress | None = None
    ) -> None:
        """Send the blob at `path` into `repo`'s upload session at `location` (PATCH chunks, then PUT).

        Registry replicas behind a balancer share the session; one may die after taking a request
        whose answer never came (the transport sends it again, to another replica). The registry
        then holds more than we were told: a chunk refused as out of order (416) goes on from where
        the upload stands, and a session the registry finished or dropped meanwhile is looked for
        as a blob, else started over once, in a new session.
        """
        digest = Digest(digest)
        try:
            await self._send_blob(repo, location, digest, path, progress)
        except _SessionLost as lost:
            if await self.head_blob(repo, digest) is not None:
                return  # finished by the request whose answer was lost
            again = await self.start_upload(repo, digest)
            if again is None:
                return
            try:
                await self._send_blob(repo, again, digest, path, progress)
            except _SessionLost:
                raise lost.error from None

    async def _send_blob(
        self, repo: str, location: URL, digest: Digest, path: Path, progress: Progress | None
    ) -> None:
        what = f"upload of {repo}@{digest}"
        size = path.stat().st_size

        def counted(piece: bytes, offset: int) -> Body:
            if progress is None:
                return piece
            return CountedBytes(piece, lambda sent: progress(offset + sent))

        with open(path, "rb") as f:
            if size <= CHUNK_SIZE:
                body = f.read()
            else:
                offset, body, resumed = 0, b"", 0
                while offset < size:
                    f.seek(offset)
                    piece = f.read(CHUNK_SIZE)
                    headers = {**OCTET_STREAM, "Content-Range": f"{offset}-{offset + len(piece) - 1}"}
                    async with self.transport.send(
                        "PATCH", location, headers, counted(piece, offset)
                    ) as response:
                        if response.status == 416 and resumed < RESUMES:
                            resumed += 1
                            offset = await self._upload_offset(location, what)
                            continue
                        if response.status != 202:
                            raise await self._upload_error(response, what)
                        location = self.transport.resolve(response.headers.get("Location"))
                    offset += len(piece)
        final = location.update_query({"digest": digest})
        async with self.transport.send(
            "PUT", final, OCTET_STREAM, counted(body, size - len(body))
        ) as response:
            if response.status != 201:
                raise await self._upload_error(response, what)

    async def _upload_offset(self, location: URL, what: str) -> int:
        """Where an upload session stands: the byte after its `Range` (`0-0` is read as empty)."""
        async with self.transport.send("GET", location) as response:
            if response.status != 204:
                raise await self._upload_error(response, what)
            _, _, end = response.headers.get("Range", "0-0").partition("-")
            if not end.isdigit():
                raise RegistryClientError(f"{self.registry}: {what}: upload status without a Range")
            return int(end) + 1 if int(end) else 0

    async def _upload_error(self, response: aiohttp.ClientResponse, what: str) -> RegistryClientError:
        error = await self.transport.error(response, what)
        # 404: the session is gone; 400: it got a chunk twice and failed its digest.
        return _SessionLost(error) if response.status in (400, 404) else error

    async def push_blob(
        self,
        repo: str,
        digest: str,
        path: Path,
        *,
        mount_from: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Upload the blob at `path` unless `repo` has it or the registry mounts it (see
        `start_upload`); returns "exists", "mounted" or "pushed"."""
        if await self.head_blob(repo, digest) is not None:
            return "exists"
        location = await self.start_upload(repo, digest, mount_from)
        if location is None:
            return "mounted"
        await self.upload(repo, location, digest, path, progress=progress)
        return "pushed"

    async def put_manifest(
        self, repo: str, ref: str, data: bytes, media_type: str, tag: str | None = None
    ) -> Digest:
        """Push a manifest by tag, or by digest (the way to keep a sha512 one's digest); its digest.

        `tag` with a digest `ref` also tags it (`?tag=`); a registry that does not say it did
        (no `OCI-Tag` answer) is given the tag with a second push by tag.
        """
        by_digest = Digest(ref) if ":" in ref else None
        what = f"manifest {repo}@{ref}" if by_digest else f"manifest {repo}:{ref}"
        url = self.transport.url(repo, f"manifests/{ref}")
        if by_digest and tag is not None:
            validate_tag(tag)
            url = url.with_query({"tag": tag})
        async with self.transport.send("PUT", url, {"Content-Type": media_type}, data) as response:
            if response.status != 201:
                raise await self.transport.error(response, what)
            tagged = tag is None or "OCI-Tag" in response.headers
        if not tagged and tag is not None:
            await self.put_manifest(repo, tag, data, media_type)
        return Digest.of(data, by_digest.algorithm) if by_digest else Digest.of(data)
