"""The pull-through cache behind `lazyctr serve --proxy UPSTREAM` (the CNCF registry's proxy mode): a
rack- or node-local registry that answers from its own store and asks the upstream registry only for
what it lacks, once however many clients ask at once.

- Manifests by digest are immutable: fetched once (checked against the digest), then served from the
  store. Manifests by tag are revalidated: a HEAD of the tag upstream; the cached manifest is served
  when its digest is the one the upstream names, else the new one is fetched by digest. When the
  upstream does not answer (or answers garbage) the cached manifest is served, and for `DOWN_FOR`
  seconds the upstream is not asked again, so a fleet does not wait on a dead upstream per request.
- Blobs are kept *sparse*: a range missing from the cache is fetched as asked (every missing range of
  a request in one multi-range request upstream when small, streamed when large), written into a
  sparse file of the blob's size, and served from there; what another request is already fetching
  is waited for, not fetched again (single flight per byte). Only the bytes clients read ever leave
  the upstream: lazy clients read a few percent of an image, so fetching whole blobs on the first
  range miss would multiply the upstream's egress by the inverse of that (benchmarks/proxy_cache.py
  measures it). A whole-blob GET fetches what is still missing, then serves the verified blob.

Trust rule (DESIGN.md, "Trust and bad input"): nothing from the upstream is served or stored *as what
it claims to be* before its digest is checked.
- A manifest is checked against its digest before it is stored or served.
- A blob becomes the blob (a 200 answer, a file in the store under its digest) only after its
  complete bytes hashed to its digest; one that does not is dropped whole, with every range of it.
  A whole-blob GET is answered only from that verified copy.
- A byte range cannot be checked against the blob's digest until the whole blob is known. Ranges are
  therefore kept and served (206) as the upstream sent them, exactly as the upstream itself would
  have served them: the client checks them, as lazyfs checks every chunk against the chunk digests
  of the layer's TOC, whose digest the verified manifest holds. The cache adds no trust and removes
  none. (A tampered range stays served until its blob is completed and dropped; checking ranges
  against the TOC in the cache would end that earlier.)

State that survives a restart: complete blobs and manifests in the registry store; sparse blobs in
`directory` as `<algorithm>/<hex>` (the bytes) and `<hex>.spans` (their size, the byte ranges held,
and the repositories the upstream confirmed hold the blob), written after the bytes were synced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from registry.client import RegistryClient
from registry.client.api import MANIFEST_ACCEPT
from registry.client.errors import RegistryNotFound, RegistryUnreachable
from registry.errors import BlobUnknown, DigestInvalid, ManifestUnknown, NameUnknown, RegistryError
from registry.storage import BlobStore, is_digest
from storage.digest import Digest
from storage.errors import InvalidReference, StorageError
from storage.files import atomic_write
from storage.oci import Descriptor

T = TypeVar("T")
log = logging.getLogger("lazyctr.registry.proxy")

IN_MEMORY = 4 << 20  # missing ranges up to this many bytes in all: one multi-range request, then answer
DOWN_FOR = 5.0  # seconds an upstream that did not answer is taken as down (cached tags served unasked)
READ_SIZE = 1 << 20

Span = tuple[int, int]  # [start, end)
_TOTAL_RE = re.compile(r"^bytes (?:\d+-\d+|\*)/(\d+)\Z")


class UpstreamFailed(RegistryError):
    """The upstream answered something other than what was asked: an error, garbage, the wrong bytes."""

    code, status = "UNKNOWN", 502


class UpstreamUnavailable(RegistryError):
    """The upstream does not answer, and the cache does not hold what was asked."""

    code, status = "UNAVAILABLE", 503


@dataclass(frozen=True)
class Upstream:
    """The registry a cache pulls through: `host[:port]`, over plain HTTP when `insecure`."""

    registry: str
    insecure: bool = False

    @classmethod
    def parse(cls, text: str) -> Upstream:
        """`HOST[:PORT]`, `http://HOST[:PORT]` (plain HTTP) or `https://HOST[:PORT]`."""
        scheme, separator, address = text.partition("://")
        if not separator:
            scheme, address = "", text
        address = address.rstrip("/")
        if (
            scheme not in ("", "http", "https")
            or not address
            or "/" in address
            or not address.isprintable()
            or " " in address
        ):
            raise InvalidReference(
                f"invalid upstream {text!r}: expected HOST[:PORT] or http(s)://HOST[:PORT]"
            )
        insecure = scheme == "http"
        return cls(address, insecure)


class Spans:
    """Sorted, disjoint [start, end) byte ranges. Replaced, never changed in place, so a worker thread
    reading `spans` sees one whole state."""

    def __init__(self, spans: list[Span] | None = None) -> None:
        self.spans: list[Span] = []
        for start, end in spans or []:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        kept = []
        for s, e in self.spans:
            if e < start or s > end:
                kept.append((s, e))
            else:
                start, end = min(s, start), max(e, end)
        self.spans = sorted([*kept, (start, end)])

    def run_end(self, pos: int) -> int:
        """The end of the held run of bytes that starts at or holds `pos`; `pos` when it is not held."""
        for s, e in self.spans:
            if s <= pos < e:
                return e
        return pos

    def gaps(self, start: int, end: int) -> list[Span]:
        """The parts of [start, end) not held."""
        found = []
        pos = start
        for s, e in self.spans:
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                found.append((pos, s))
            pos = e
            if pos >= end:
                break
        if pos < end:
            found.append((pos, end))
        return found

    def covers(self, start: int, end: int) -> bool:
        return not self.gaps(start, end)


@dataclass(eq=False)
class Fetch:
    """Byte ranges of a blob on their way from the upstream."""

    spans: list[Span]
    task: asyncio.Task[None] | None = None

    def covers(self, pos: int) -> bool:
        return any(s <= pos < e for s, e in self.spans)


@dataclass(eq=False)
class PartialBlob:
    """A blob the cache holds in part: its bytes so far in a sparse file of its size, unverified."""

    digest: Digest
    size: int
    data: Path
    index: Path
    have: Spans = field(default_factory=Spans)
    repositories: set[str] = field(default_factory=set)  # the upstream said they hold the blob
    fetches: list[Fetch] = field(default_factory=list)  # in flight
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: RegistryError | None = None  # its bytes did not hash to its digest
    promoted: bool = False  # it is in the store, whole and verified

    @classmethod
    def open(cls, directory: Path, digest: Digest, size: int | None) -> PartialBlob | None:
        """The partial blob kept in `directory` (created when `size` is given); None if there is none."""
        data = directory / digest.algorithm / digest.hex
        index = data.with_name(f"{digest.hex}.spans")
        if size is None:
            try:
                state = json.loads(index.read_text())
                blob = cls(digest, int(state["size"]), data, index, Spans([(s, e) for s, e in state["have"]]))
                blob.repositories = set(state["repositories"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            return blob if data.exists() and data.stat().st_size == blob.size else None
        data.parent.mkdir(parents=True, exist_ok=True)
        index.unlink(missing_ok=True)
        with open(data, "wb") as f:
            f.truncate(size)  # sparse: only the bytes written take room
        return cls(digest, size, data, index)

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def write(self, pieces: list[tuple[int, bytes]]) -> None:
        """Put fetched bytes in place (in a worker thread); `have` is told after, by the loop."""
        fd = os.open(self.data, os.O_WRONLY)
        try:
            for offset, piece in pieces:
                os.pwrite(fd, piece, offset)
        finally:
            os.close(fd)

    def save(self, have: list[Span]) -> None:
        """Write the index (in a worker thread): `have` was taken before the data is synced here, so
        the index never names bytes a crash could lose."""
        if self.dropped or self.promoted:
            return
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.data, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            state = {"size": self.size, "have": have, "repositories": sorted(self.repositories)}
            atomic_write(self.index, json.dumps(state).encode())

    def remove(self) -> None:
        self.index.unlink(missing_ok=True)
        self.data.unlink(missing_ok=True)


class ProxyCache:
    """The cache over a registry store; `async with` it on the serving loop (it holds the client)."""

    def __init__(self, store: BlobStore, upstream: Upstream, directory: Path) -> None:
        self.store = store
        self.upstream = upstream
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._client: RegistryClient | None = None
        self._partials: dict[Digest, PartialBlob] = {}
        self._flights: dict[Hashable, asyncio.Future[object]] = {}
        self._down_until = 0.0

    async def __aenter__(self) -> ProxyCache:
        # Credentials for the upstream: those `lazyctr login UPSTREAM` stored (podman's auth file).
        self._client = await RegistryClient(self.upstream.registry, self.upstream.insecure).__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [f.task for p in self._partials.values() for f in p.fetches if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(None, None, None)

    @property
    def client(self) -> RegistryClient:
        assert self._client is not None, "use ProxyCache in `async with`"
        return self._client

    # -- asking the upstream -----------------------------------------------------------------------

    async def _once(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        """`make()`, run once for all who ask for `key` while it runs; one asker going away (a client
        that hung up) does not cancel it for the others."""
        flight = self._flights.get(key)
        if flight is None:
            started: asyncio.Future[T] = asyncio.ensure_future(make())
            started.add_done_callback(lambda done: self._flights.pop(key, None))
            started.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._flights[key] = flight = started  # type: ignore[assignment]
        return await asyncio.shield(flight)  # type: ignore[arg-type]

    async def _ask(self, call: Awaitable[T]) -> T:
        """The upstream's answer; its failures as the errors a client of the cache gets (a 404 stays
        RegistryNotFound, for the caller to name what was not found)."""
        try:
            answer = await call
        except RegistryNotFound:
            raise
        except RegistryUnreachable as e:
            self._down_until = time.monotonic() + DOWN_FOR
            raise UpstreamUnavailable(f"upstream unavailable: {e}") from None
        except StorageError as e:  # errors, refused credentials, wrong digests, garbage
            raise UpstreamFailed(f"upstream failed: {e}") from None
        self._down_until = 0.0
        return answer

    @property
    def upstream_down(self) -> bool:
        return time.monotonic() < self._down_until

    # -- manifests ---------------------------------------------------------------------------------

    async def manifest(self, name: str, reference: str) -> tuple[Digest, bytes]:
        """A manifest by digest (from the store once fetched) or by tag (revalidated upstream)."""
        if not is_digest(reference):
            return await self._once(("tag", name, reference), lambda: self._revalidate(name, reference))
        digest = Digest(reference)
        if await asyncio.to_thread(self.store.has_manifest, name, digest):
            return await asyncio.to_thread(self.store.get_manifest, name, digest)
        return await self._once(("manifest", name, digest), lambda: self._fetch_manifest(name, digest))

    async def _fetch_manifest(
        self, name: str, reference: str, tag: str | None = None
    ) -> tuple[Digest, bytes]:
        try:
            data, _, digest = await self._ask(self.client.get_manifest(name, reference))
        except RegistryNotFound:
            raise ManifestUnknown(
                f"manifest {name}{'@' if is_digest(reference) else ':'}{reference} not found upstream",
                {"reference": reference},
            ) from None
        await asyncio.to_thread(self.store.put_manifest, name, digest, data, (tag,) if tag else ())
        return digest, data

    async def _revalidate(self, name: str, tag: str) -> tuple[Digest, bytes]:
        cached: tuple[Digest, bytes] | None = None
        with contextlib.suppress(ManifestUnknown, NameUnknown):
            cached = await asyncio.to_thread(self.store.get_manifest, name, tag)
        if cached is not None and self.upstream_down:
            return cached
        try:
            current = await self._ask(self._head_manifest(name, tag))
        except RegistryNotFound:
            raise ManifestUnknown(f"manifest {name}:{tag} not found upstream", {"reference": tag}) from None
        except (UpstreamUnavailable, UpstreamFailed) as e:
            if cached is None:
                raise
            log.warning("%s; serving the cached %s:%s", e.message, name, tag)
            return cached
        if cached is not None and cached[0] == current:
            return cached
        if current is not None and await asyncio.to_thread(self.store.has_manifest, name, current):
            _, data = await asyncio.to_thread(self.store.get_manifest, name, current)
            await asyncio.to_thread(self.store.put_manifest, name, current, data, (tag,))
            return current, data
        return await self._fetch_manifest(name, current or tag, tag)

    async def _head_manifest(self, name: str, tag: str) -> Digest | None:
        """The digest the upstream's tag names now (None when its answer does not say)."""
        transport = self.client.transport
        url = transport.url(name, f"manifests/{tag}")
        async with transport.send("HEAD", url, {"Accept": MANIFEST_ACCEPT}) as response:
            if response.status != 200:
                raise await transport.error(response, f"manifest {name}:{tag}")
            claimed = response.headers.get("Docker-Content-Digest")
        return Digest(claimed) if claimed else None

    async def tags(self, name: str) -> list[str]:
        """The upstream's tags of `name`; the cached ones when it does not answer."""
        try:
            return await self._ask(self.client.tags(name))
        except (UpstreamUnavailable, UpstreamFailed):
            return await asyncio.to_thread(self.store.tags, name)

    async def referrers(self, name: str, subject: Digest, artifact_type: str | None) -> list[Descriptor]:
        """The upstream's referrers of `subject`; those among the cached manifests when it does not answer."""
        try:
            return await self._ask(self.client.referrers(name, subject, artifact_type))
        except (UpstreamUnavailable, UpstreamFailed):
            return await asyncio.to_thread(self.store.referrers, name, subject, artifact_type)

    # -- blobs -------------------------------------------------------------------------------------

    async def blob(self, name: str, digest: Digest) -> PartialBlob | None:
        """None when the store holds the blob whole in `name` (serve it from there), else its partial
        blob. BlobUnknown when the upstream does not have it."""
        partial = self._partials.get(digest)
        if partial is not None and name in partial.repositories:
            return partial
        with contextlib.suppress(BlobUnknown):
            await asyncio.to_thread(self.store.blob_size, name, digest)
            return None
        return await self._once(("blob", name, digest), lambda: self._confirm(name, digest))

    async def _confirm(self, name: str, digest: Digest) -> PartialBlob | None:
        """Ask the upstream whether `name` holds the blob (and its size); the blob from any repository
        of the store, whole or partial, or a new partial blob."""
        partial = self._partials.get(digest) or await asyncio.to_thread(
            PartialBlob.open, self.directory, digest, None
        )
        if partial is not None and name in partial.repositories:  # from an earlier run
            self._partials[digest] = partial
            return partial
        try:
            size = await self._ask(self._blob_size(name, digest))
        except RegistryNotFound:
            raise BlobUnknown(f"blob {digest} not found in {name} upstream", {"digest": digest}) from None
        holder = await asyncio.to_thread(self.store.holder_of, digest, lambda _: True)
        if holder is not None and await asyncio.to_thread(self.store.mount_blob, name, digest, holder):
            return None  # the store has it whole from another repository: the same bytes
        partial = self._partials.get(digest) or partial
        if partial is not None and partial.size != size:
            log.warning(
                "upstream says blob %s has %d bytes, not %d: fetched again", digest, size, partial.size
            )
            self._drop(partial, UpstreamFailed(f"upstream changed the size of blob {digest}"))
            partial = None
        if partial is None:
            partial = await asyncio.to_thread(PartialBlob.open, self.directory, digest, size)
            assert partial is not None
        partial.repositories.add(name)
        self._partials[digest] = partial
        return partial

    async def _blob_size(self, name: str, digest: Digest) -> int:
        """The blob's size, from the total of a one-byte range answer: a GET, since a HEAD's length does
        not always survive the proxies between us (and an empty blob answers 416 with its size too)."""
        transport = self.client.transport
        what = f"blob {name}@{digest}"
        url = transport.url(name, f"blobs/{digest}")
        async with transport.send("GET", url, {"Range": "bytes=0-0"}) as response:
            if response.status in (206, 416):
                found = _TOTAL_RE.match(response.headers.get("Content-Range", "").strip())
                if found:
                    return int(found.group(1))
            elif response.status == 200 and response.content_length is not None:
                return response.content_length  # ranges ignored: the whole blob's length (left unread)
            elif response.status != 200:
                raise await transport.error(response, what)
        raise UpstreamFailed(f"upstream {self.upstream.registry}: {what}: an answer without its size")

    def fetch(self, name: str, partial: PartialBlob, wanted: list[Span]) -> list[Fetch]:
        """Start fetching what `wanted` needs that is neither held nor on its way; the fetches that
        bring its bytes (the new ones and those others started)."""
        missing = [gap for start, end in wanted for gap in partial.have.gaps(start, end)]
        relied = [f for f in partial.fetches if any(_overlaps(f, start, end) for start, end in missing)]
        new: list[Span] = []
        for start, end in missing:
            pos = start
            for s, e in sorted(span for f in relied for span in f.spans):
                if e <= pos or s >= end:
                    continue
                if s > pos:
                    new.append((pos, s))
                pos = max(pos, e)
            if pos < end:
                new.append((pos, end))
        new = Spans(new).spans
        if not new:
            return relied
        if sum(e - s for s, e in new) <= IN_MEMORY:
            started = [self._start(name, partial, Fetch(new), self._fetch_ranges)]
        else:
            started = [self._start(name, partial, Fetch([span]), self._fetch_stream) for span in new]
        return relied + started

    def _start(
        self,
        name: str,
        partial: PartialBlob,
        fetch: Fetch,
        how: Callable[[str, PartialBlob, Fetch], Awaitable[None]],
    ) -> Fetch:
        async def run() -> None:
            try:
                await self._ask(how(name, partial, fetch))
            finally:
                partial.fetches.remove(fetch)
                partial.notify()
            await self._settle(name, partial)

        partial.fetches.append(fetch)
        fetch.task = asyncio.ensure_future(run())
        fetch.task.add_done_callback(lambda done: done.cancelled() or done.exception())
        return fetch

    async def _fetch_ranges(self, name: str, partial: PartialBlob, fetch: Fetch) -> None:
        """Small missing ranges: all in one (multi-range) request."""
        parts = await self.client.read_ranges(name, partial.digest, [(s, e - s) for s, e in fetch.spans])
        pieces = [(s, part) for (s, _), part in zip(fetch.spans, parts, strict=True)]
        await asyncio.to_thread(partial.write, pieces)
        for offset, part in pieces:
            partial.have.add(offset, offset + len(part))

    async def _fetch_stream(self, name: str, partial: PartialBlob, fetch: Fetch) -> None:
        """A large missing range: streamed, each piece readable as soon as it is written."""
        ((start, end),) = fetch.spans
        pos = start
        async for piece in self.client.stream_range(name, partial.digest, start, end - start):
            await asyncio.to_thread(partial.write, [(pos, piece)])
            partial.have.add(pos, pos + len(piece))
            pos += len(piece)
            partial.notify()

    async def _settle(self, name: str, partial: PartialBlob) -> None:
        """After a fetch: remember what is held; a blob now complete is verified (and stored or dropped)."""
        # Saves that overlap are one: the index may lag (what it lacks is fetched again after a
        # restart), and a burst of small fetches does not cost an fsync each.
        have = list(partial.have.spans)
        await self._once(("save", partial.digest), lambda: asyncio.to_thread(partial.save, have))
        if partial.have.covers(0, partial.size):
            with contextlib.suppress(RegistryError):
                await self._once(("promote", partial.digest), lambda: self._promote(name, partial))

    async def arrived(self, partial: PartialBlob, wanted: list[Span], fetches: list[Fetch]) -> None:
        """Wait until every byte of `wanted` is held; the fetch's error when one bringing them failed."""
        for start, end in wanted:
            pos = start
            while pos < end:
                pos = await self.readable(partial, pos, fetches)

    async def readable(self, partial: PartialBlob, pos: int, fetches: list[Fetch]) -> int:
        """The end of the held bytes from `pos` on, waiting for `fetches` to bring them if need be."""
        while True:
            if partial.dropped is not None:
                raise partial.dropped
            changed = partial.changed
            end = partial.have.run_end(pos)
            if end > pos:
                return end
            fetch = next((f for f in fetches if f.covers(pos)), None)
            if fetch is None or fetch.task is None:
                raise UpstreamFailed(f"byte {pos} of blob {partial.digest} was not fetched")
            if fetch.task.done():
                error = None if fetch.task.cancelled() else fetch.task.exception()
                if isinstance(error, RegistryNotFound):
                    raise BlobUnknown(f"blob {partial.digest} not found upstream", {"digest": partial.digest})
                if isinstance(error, RegistryError):
                    raise error
                if error is not None:
                    raise UpstreamFailed(f"fetching blob {partial.digest} failed: {error}")
                if not partial.have.run_end(pos) > pos:
                    raise UpstreamFailed(f"byte {pos} of blob {partial.digest} did not arrive")
                continue
            await changed.wait()

    def reader(self, name: str, partial: PartialBlob) -> Callable[[int, int], Iterator[bytes]]:
        """Bytes [start, end) of a partial blob that have arrived (see `arrived`), in pieces, as
        `registry.server.ranges` reads them in worker threads. It never waits for the upstream: a
        worker thread blocked so is one fewer for the writes that bring the bytes."""

        def read(start: int, end: int) -> Iterator[bytes]:
            try:
                f = open(partial.data, "rb")  # noqa: SIM115 (closed below, after the pieces)
            except FileNotFoundError:
                if not partial.promoted:
                    raise
                yield from self.store.read_blob(name, partial.digest, start, end)  # verified meanwhile
                return
            with f:
                for pos in range(start, end, READ_SIZE):
                    piece = os.pread(f.fileno(), min(READ_SIZE, end - pos), pos)
                    if len(piece) != min(READ_SIZE, end - pos):
                        raise OSError(f"cached blob {partial.digest} ended at {pos + len(piece)}")
                    yield piece

        return read

    async def stream(
        self, name: str, partial: PartialBlob, start: int, end: int, fetches: list[Fetch]
    ) -> AsyncIterator[bytes]:
        """Bytes [start, end) as they arrive: for a large range, whose first bytes a client can have
        before its last ones came from the upstream."""
        read = self.reader(name, partial)
        pos = start
        while pos < end:
            stop = min(await self.readable(partial, pos, fetches), end, pos + READ_SIZE)
            yield await asyncio.to_thread(lambda start, stop: b"".join(read(start, stop)), pos, stop)
            pos = stop

    async def complete(self, name: str, partial: PartialBlob) -> None:
        """Fetch what the blob still lacks, then verify it into the store; UpstreamFailed when its
        bytes do not hash to its digest (then nothing of it is kept)."""
        wanted = [(0, partial.size)]
        await self.arrived(partial, wanted, self.fetch(name, partial, wanted))
        await self._once(("promote", partial.digest), lambda: self._promote(name, partial))

    async def _promote(self, name: str, partial: PartialBlob) -> None:
        if partial.promoted:
            return
        if partial.dropped is not None:
            raise partial.dropped
        try:
            await asyncio.to_thread(self._commit, name, partial)
        except DigestInvalid as e:
            error = UpstreamFailed(
                f"upstream {self.upstream.registry} sent bytes that are not blob {partial.digest} "
                f"({e.message}): dropped, not cached",
                {"digest": partial.digest},
            )
            log.error("%s", error.message)
            self._drop(partial, error)
            raise error from None
        partial.promoted = True
        self._partials.pop(partial.digest, None)
        await asyncio.to_thread(partial.remove)

    def _commit(self, name: str, partial: PartialBlob) -> None:
        """The complete bytes into the store through an upload, which checks them against the digest."""
        upload = self.store.start_upload(name)
        try:
            with self.store.open_upload(name, upload, 0) as out, open(partial.data, "rb") as f:
                while piece := f.read(READ_SIZE):
                    out.write(piece)
        except BaseException:
            self.store.cancel_upload(name, upload)
            raise
        self.store.finish_upload(name, upload, partial.digest)
        for other in partial.repositories - {name}:
            self.store.mount_blob(other, partial.digest, name)

    def _drop(self, partial: PartialBlob, error: RegistryError) -> None:
        partial.dropped = error
        partial.notify()
        for fetch in partial.fetches:
            if fetch.task is not None:
                fetch.task.cancel()
        if self._partials.get(partial.digest) is partial:
            del self._partials[partial.digest]
        partial.remove()


def _overlaps(fetch: Fetch, start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in fetch.spans)
