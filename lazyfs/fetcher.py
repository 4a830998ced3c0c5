"""The fetch engine: the file system's threads ask for pieces of files, it fetches, verifies and caches them.

A `Piece` (storage/pieces.py) is the unit fetched and verified at once: one chunk of a file (its
digest is in the TOC), or a whole file whose chunks carry no digests of their own. The engine runs
an asyncio loop on its own thread; FUSE worker threads hand it work with `get` and block until
their pieces are verified (or the deadline passes: then the read fails with EIO, nothing ever hangs forever).

What makes it fast over a slow link:
- one fetch per piece however many readers want it (in-flight futures by digest);
- pieces asked for in the same loop tick are batched per layer, neighbours in the blob coalesced
  into ranges, several small ranges to one multi-range request; read-ahead pieces that lie next
  to what a reader waits for come in the reader's range (`ride_along`);
- batches start by priority: what a reader waits for at once, whatever else is in flight; then
  read-ahead and access profiles (in the profile's order), then background fill, while fewer than
  WORKERS requests are in flight (a reader never queues behind them);
- read-ahead: a miss also asks for the rest of its file's next MiB; a reader going on in blob
  order (through a big file, or file after file) gets a window that doubles and is renewed before
  it runs out (`Stream`), and past STREAM_AT the rest comes in one streaming GET (`_stream`),
  each piece handed over as soon as its bytes are in;
- first reads: a miss elsewhere also asks for what lazyfs.firstread guesses the starting program
  reads next (the rest of the file, small files of its directory, its neighbours, a small layer),
  unless an access profile is being prefetched: the profile knows, guesses would only compete.
Nothing leaves the engine unverified: each piece's bytes are decompressed and hashed against the
TOC's digest (`storage.pieces.unpack`), and a mismatch fails the read (EIO) and is counted, never
returned.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lazyfs.firstread import FirstRead
from lazyfs.readahead import ReadAhead, blob_order
from storage.chunks import ChunkCache
from storage.digest import Digest
from storage.errors import CorruptLayer, DigestMismatch, StorageError
from storage.layer_reader import FileRangeSource
from storage.pieces import Piece, unpack

log = logging.getLogger("lazyfs")
log.addHandler(logging.NullHandler())  # the mount daemon logs to its log file; a CLI command stays quiet

COALESCE_GAP = 64 << 10  # fetch a gap this small rather than make a reader wait for a second range
# What no reader waits for (a profile, read-ahead, fill) is bandwidth-bound, not latency-bound: a
# gap is only fetched when it is about a range's part headers. Over the flask image's profile, 64 KiB
# gaps fetched 11.7 MB for 10.4 MB of pieces (16 requests), 4 KiB ones 10.41 MB (18).
AHEAD_GAP = 4 << 10
MAX_RANGE = 2 << 20  # one range no longer than this: a reader waits for the whole range it needs
RANGES_PER_REQUEST = 32
# A stream lets bytes it does not want pass by rather than start a second GET: up to about one
# round trip's worth (100 Mbit/s, 20 ms).
STREAM_PASS = 256 << 10
WORKERS = 4  # requests in flight, but a reader's: enough to fill a long fat link, few enough to be quick
DEMAND, AHEAD, FILL = 0, 1, 2  # priorities: what a reader waits for, read-ahead and profiles, fill
FILL_BATCH = 4 << 20  # background fill: one batch of this many compressed bytes in flight at a time
# First-read guesses go in requests of at most this many bytes: a reader who then wants one of them
# waits for its request, not for all of them (about one round trip's worth at 100 Mbit/s, 20 ms).
GUESS_REQUEST = 256 << 10
# While a reader waits, read-ahead and guesses keep no more requests in flight than this: they
# share the link with it, and its answer queues behind theirs.
AHEAD_BESIDE_A_READER = 2


class FetchError(OSError):
    """A piece could not be fetched or verified in time; the read gets EIO."""


class LayerSource(Protocol):
    """Where a layer blob's compressed bytes come from: a registry, or a local file."""

    async def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]: ...

    def stream(self, offset: int, length: int) -> AsyncIterator[bytes]: ...


class FileLayerSource:
    """A layer blob in a local file (the store's), read on worker threads."""

    def __init__(self, path: Path) -> None:
        self._blob = FileRangeSource(path)

    async def read_ranges(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        read = self._blob.read_range
        return await asyncio.to_thread(lambda: [read(offset, size) for offset, size in ranges])

    async def stream(self, offset: int, length: int) -> AsyncIterator[bytes]:
        while length > 0:
            piece = await asyncio.to_thread(self._blob.read_range, offset, min(length, 1 << 20))
            yield piece
            offset, length = offset + len(piece), length - len(piece)

    def close(self) -> None:
        self._blob.close()


@dataclass
class Stats:
    """What the engine did; written to the mount's stats file."""

    bytes_fetched: int = 0
    requests: int = 0
    pieces_fetched: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    prefetch_hits: int = 0
    prefetched: int = 0
    filled: int = 0
    passed_through: int = 0  # opens the kernel serves from a local file (lazyfs.kernel)
    verification_failures: int = 0
    fetch_errors: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10000))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in vars(self).items() if k != "latencies"}
        ordered = sorted(self.latencies)
        for p in (50, 90, 99):
            out[f"latency_p{p}_ms"] = (
                round(ordered[min(len(ordered) - 1, len(ordered) * p // 100)] * 1000, 2) if ordered else None
            )
        return out


class Fetcher:
    def __init__(
        self,
        sources: Sequence[LayerSource],
        cache: ChunkCache,
        timeout: float = 30.0,
        on_access: Callable[[Piece], None] | None = None,
    ) -> None:
        self.sources = sources
        self.cache = cache
        self.timeout = timeout
        self.stats = Stats()
        self._on_access = on_access
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lazyfs-fetch", daemon=True)
        self._inflight: dict[Digest, asyncio.Future[bytes]] = {}
        # Not yet batched, by (layer, priority, order, request): order is a profile's, or a guess's
        # tier, else 0; request: the most bytes one request of them may ask for (0: no limit).
        self._queued: dict[tuple[int, int, int, int], list[Piece]] = {}
        self._flush_scheduled = False
        self._pending: list[Batch] = []  # batches not started yet
        self._batch_of: dict[Digest, Batch] = {}
        self._requests: dict[asyncio.Task[None], Batch] = {}  # in flight
        self._prefetched: set[Digest] = set()
        self._lock = threading.Lock()
        self.read_ahead = ReadAhead()
        self.first_read: FirstRead | None = None  # once the layout is known
        # Counts the opens the kernel served itself (passed through) so far: the guesses they read
        # must be known as read before the next guesses are chosen (the daemon's; else counted late).
        self.count_opens: Callable[[], None] = lambda: None
        self._profiled = False  # an access profile is prefetched: it knows what a start reads
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Cancel what is still being fetched and end the loop."""
        if not self._thread.is_alive():
            return

        async def wind_down() -> None:
            self._stopping = True  # what was waiting to start does not start now
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(wind_down(), self._loop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():  # closed here, not by the garbage collector at exit
            self._loop.close()

    def call(self, coroutine: Awaitable[Any]) -> Any:
        """Run a coroutine on the engine's loop (e.g. closing a registry client)."""

        async def wrap() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(self.timeout)

    # -- the side of the file system's threads ------------------------------------------------------

    def get(self, pieces: Sequence[Piece], ahead: Sequence[Piece] = ()) -> list[bytes]:
        """The verified bytes of `pieces`, fetching what the cache lacks (and `ahead`, unawaited)."""
        out: list[bytes | None] = []
        missing: list[Piece] = []
        from_disk = False
        for piece in pieces:
            if self._on_access is not None:
                self._on_access(piece)
            data = self.cache.get_from_memory(piece.digest)
            if data is None:
                data = self.cache.get(piece.digest)
                from_disk = data is not None
            out.append(data)
            if data is None:
                missing.append(piece)
            else:
                self._count_hit(piece)
            self._read_on(piece)  # a reader waiting for a stream's bytes keeps it going too
        if not missing:
            if from_disk and ahead:  # a reader going through cached chunks: have the disk read on
                self.cache.advise([p.digest for p in ahead])
            return out  # type: ignore[return-value]
        with self._lock:
            self.stats.cache_misses += len(missing)
        along = self.read_ahead.on_miss(missing[-1], ahead[-1] if ahead else missing[-1], self.cache.contains)
        first_read = self.first_read
        if first_read is not None and not along:
            self.count_opens()
            tiers = first_read.on_miss(missing[0])
        else:
            tiers = []
        ahead = [p for p in [*ahead, *along] if not self.cache.contains(p.digest)]
        guesses = [[p for p in tier if not self.cache.contains(p.digest)] for tier in tiers]
        future: Future[list[bytes]] = asyncio.run_coroutine_threadsafe(
            self._wait(missing, ahead, guesses), self._loop
        )
        try:
            fetched = iter(future.result(self.timeout))
        except (FutureTimeout, CancelledError):
            future.cancel()
            raise FetchError(5, f"no answer from the registry within {self.timeout:g} s") from None
        except FetchError:
            raise
        except (StorageError, OSError) as e:
            raise FetchError(5, str(e)) from None
        return [data if data is not None else next(fetched) for data in out]

    def know_layout(self, pieces: Sequence[Piece]) -> None:
        """Every piece of the image, for read-ahead along the layers and guesses at first reads."""
        layers = blob_order(pieces)
        self.read_ahead.know_layout(layers)
        self.first_read = None if self._profiled else FirstRead(layers)

    def _read_on(self, piece: Piece) -> None:
        """Ask for what the read-ahead wants next, if anything, as it says: a window, or a stream."""
        plan = self.read_ahead.on_read(piece)
        if plan is None:
            return
        pieces, streaming = plan
        if streaming:
            asyncio.run_coroutine_threadsafe(self._stream(piece.layer, pieces), self._loop)
        else:
            todo = [p for p in pieces if not self.cache.contains(p.digest)]
            asyncio.run_coroutine_threadsafe(self._want(todo, AHEAD), self._loop)

    def prefetch(self, pieces: Sequence[Piece]) -> None:
        """Start fetching `pieces` (an access profile) without waiting; they go in the given order."""
        self._profiled, self.first_read = True, None  # guesses would only compete with the profile
        todo = [p for p in pieces if not self.cache.contains(p.digest)]
        with self._lock:
            self._prefetched.update(p.digest for p in todo)
            self.stats.prefetched += len(todo)
        # In groups that keep the profile's order: what startup read first is fetched first.
        groups: list[list[Piece]] = [[]]
        size = 0
        for piece in todo:
            if size >= MAX_RANGE:
                groups.append([])
                size = 0
            groups[-1].append(piece)
            size += piece.end - piece.start

        async def want_all() -> None:
            for order, group in enumerate(groups, 1):
                await self._want(group, AHEAD, order)

        asyncio.run_coroutine_threadsafe(want_all(), self._loop)

    def fill(self, pieces: Sequence[Piece]) -> Future[None]:
        """Fetch `pieces` in the background, a few MiB at a time, so reads keep the link first; the
        future is done when every one was tried."""
        return asyncio.run_coroutine_threadsafe(self._fill(list(pieces)), self._loop)

    async def _fill(self, pieces: list[Piece]) -> None:
        batch: list[Piece] = []
        size = 0
        for piece in [*pieces, None]:
            if piece is not None and not self.cache.contains(piece.digest):
                batch.append(piece)
                size += piece.end - piece.start
            if batch and (piece is None or size >= FILL_BATCH):
                futures = await self._want(batch, FILL)
                await asyncio.gather(*futures.values(), return_exceptions=True)
                with self._lock:
                    self.stats.filled += len(batch)
                batch, size = [], 0

    def served_locally(self, pieces: Sequence[Piece]) -> None:
        """A file the kernel reads from local disk by itself was opened: its pieces count as read
        from the cache (and as accessed, for the access profile)."""
        with self._lock:
            self.stats.passed_through += 1
        for piece in pieces:
            if self._on_access is not None:
                self._on_access(piece)
            self._count_hit(piece)

    def _count_hit(self, piece: Piece) -> None:
        if (first_read := self.first_read) is not None:
            first_read.on_read(piece)
        with self._lock:
            self.stats.cache_hits += 1
            if piece.digest in self._prefetched:
                self._prefetched.discard(piece.digest)
                self.stats.prefetch_hits += 1

    # -- the loop's side ----------------------------------------------------------------------------

    async def _wait(
        self, missing: list[Piece], ahead: list[Piece], guesses: list[list[Piece]]
    ) -> list[bytes]:
        futures = await self._want(missing, DEMAND)
        await self._want(ahead, AHEAD)
        for order, tier in enumerate(guesses):  # the most urgent tier's requests start first
            await self._want(tier, AHEAD, order, GUESS_REQUEST)
        with self._lock:
            for piece in missing:
                if piece.digest in self._prefetched:
                    self._prefetched.discard(piece.digest)
                    self.stats.prefetch_hits += 1
        return list(await asyncio.gather(*(futures[p.digest] for p in missing)))

    async def _want(
        self, pieces: list[Piece], priority: int, order: int = 0, request: int = 0
    ) -> dict[Digest, asyncio.Future[bytes]]:
        futures: dict[Digest, asyncio.Future[bytes]] = {}
        for piece in pieces:
            future = self._inflight.get(piece.digest)
            if future is not None:  # asked for already: a reader waiting for it moves it up
                batch = self._batch_of.get(piece.digest)
                if batch is not None and priority < batch.priority:
                    batch.priority = priority
                    self._loop.call_soon(self._dispatch)
            else:
                future = self._loop.create_future()
                # Fetched between the caller's cache miss and now? Then it is in the cache.
                data = self.cache.get(piece.digest)
                if data is not None:
                    future.set_result(data)
                else:
                    self._inflight[piece.digest] = future
                    self._queued.setdefault((piece.layer, priority, order, request), []).append(piece)
            futures[piece.digest] = future
        if self._queued and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)  # later in this tick: batch what other threads ask too
        return futures

    def _flush(self) -> None:
        """Turn what was asked for in this tick into batches: neighbours coalesced into ranges,
        small ranges several to a (multi-range) request, large ones a request each; read-ahead
        next to what a reader waits for joins the reader's ranges."""
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        for key, pieces in queued.items():
            layer, priority, order, _ = key
            if priority != DEMAND:
                continue
            demand = coalesce(pieces)
            for other in [k for k in queued if k[:2] == (layer, AHEAD)]:
                riders = set(ride_along(demand, queued[other]))
                pieces += riders
                queued[other] = [p for p in queued[other] if p not in riders]
        for (layer, priority, order, request), pieces in queued.items():
            for group in requests(pieces, request, COALESCE_GAP if priority == DEMAND else AHEAD_GAP):
                batch = Batch(layer, group, priority, order)
                self._pending.append(batch)
                for r in group:
                    for piece in r.pieces:
                        self._batch_of[piece.digest] = batch
        self._dispatch()

    def _dispatch(self) -> None:
        """Start the batches that may start, the most urgent first: every one a reader waits for,
        the others while fewer than WORKERS requests are in flight."""
        while self._pending and not self._stopping:
            batch = min(self._pending, key=lambda b: (b.priority, b.order, b.layer, b.ranges[0].start))
            if batch.priority != DEMAND:
                readers = sum(1 for running in self._requests.values() if running.priority == DEMAND)
                others = len(self._requests) - readers
                if len(self._requests) >= WORKERS or (readers and others >= AHEAD_BESIDE_A_READER):
                    return
            self._pending.remove(batch)
            for r in batch.ranges:
                for piece in r.pieces:
                    self._batch_of.pop(piece.digest, None)
            request = self._loop.create_task(self._fetch(batch.layer, batch.ranges))
            self._requests[request] = batch
            request.add_done_callback(self._done)

    def _done(self, request: asyncio.Task[None]) -> None:
        self._requests.pop(request, None)
        self._dispatch()

    async def _stream(self, layer: int, pieces: list[Piece]) -> None:
        """Fetch pieces (in blob order) with streaming GETs, handing each over as soon as its bytes
        are in: what a reader going through a whole layer (or a big file) needs, at the link's
        full rate, without a request per window.

        Pieces cached or asked for elsewhere are skipped: their bytes pass by a GET if there are
        at most STREAM_PASS of them in a row, else the next run of pieces gets its own GET. (One GET
        through them all fetched the megabytes random reads had cached again: a fifth more bytes
        than the layers hold.)"""
        runs: list[list[Piece]] = []
        for piece in pieces:
            if piece.digest in self._inflight or self.cache.contains(piece.digest):
                continue
            self._inflight[piece.digest] = self._loop.create_future()
            if not runs or piece.start - runs[-1][-1].end > STREAM_PASS:
                runs.append([])
            runs[-1].append(piece)
        started = 0
        try:
            for run in runs:
                started += 1
                await self._stream_run(layer, run)
        finally:  # cancelled (the mount is going away): nobody waits forever for a later run
            for run in runs[started:]:
                for piece in run:
                    self._settle(piece, error=FetchError(5, "the fetch was cancelled"))

    async def _stream_run(self, layer: int, own: list[Piece]) -> None:
        """One streaming GET from the first of `own` to the end of the last; bytes between them
        that no piece of `own` holds (tar headers) pass by."""
        base, end = own[0].start, max(p.end for p in own)
        buffer = bytearray()  # the stream's bytes from `base` on
        skip = 0  # bytes still to come that lie before `base` (between pieces no one waits for)
        done = 0
        started = time.monotonic()
        with self._lock:
            self.stats.requests += 1
        try:
            arriving = self.sources[layer].stream(base, end - base).__aiter__()
            while done < len(own):
                try:
                    data = await asyncio.wait_for(arriving.__anext__(), self.timeout)
                except StopAsyncIteration:
                    raise CorruptLayer(f"the stream of layer {layer} ended early") from None
                with self._lock:
                    self.stats.bytes_fetched += len(data)
                if skip:
                    cut = min(skip, len(data))
                    data, skip = data[cut:], skip - cut
                buffer += data
                ready = []
                while done < len(own) and own[done].end <= base + len(buffer):
                    ready.append(own[done])
                    done += 1
                if ready:
                    chunk = Range(base, base + len(buffer), ready)
                    await asyncio.to_thread(self._unpack, chunk, bytes(buffer))
                    received = base + len(buffer)
                    keep_from = own[done].start if done < len(own) else received
                    del buffer[: max(0, keep_from - base)]
                    skip = max(0, keep_from - received)
                    base = max(base, keep_from)
            with self._lock:
                self.stats.latencies.append(time.monotonic() - started)
        except Exception as e:
            log.warning("streaming layer %d failed: %s", layer, e)
            with self._lock:
                self.stats.fetch_errors += 1
            for piece in own[done:]:
                self._settle(piece, error=FetchError(5, str(e) or "timed out"))
        finally:
            for piece in own[done:]:  # cancelled (the mount is going away): nobody waits forever
                self._settle(piece, error=FetchError(5, "the fetch was cancelled"))

    async def _fetch(self, layer: int, ranges: list[Range]) -> None:
        started = time.monotonic()
        try:
            blobs = await asyncio.wait_for(
                self.sources[layer].read_ranges([(r.start, r.end - r.start) for r in ranges]), self.timeout
            )
            with self._lock:
                self.stats.requests += 1
                self.stats.bytes_fetched += sum(len(b) for b in blobs)
                self.stats.latencies.append(time.monotonic() - started)
            unpacking = (asyncio.to_thread(self._unpack, r, b) for r, b in zip(ranges, blobs, strict=True))
            await asyncio.gather(*unpacking)
        except Exception as e:  # whatever went wrong, every waiting reader gets EIO, none hangs
            message = str(e) or "timed out"
            log.warning("fetching %d ranges of layer %d failed: %s", len(ranges), layer, message)
            with self._lock:
                self.stats.fetch_errors += 1
            for r in ranges:
                for piece in r.pieces:
                    self._settle(piece, error=FetchError(5, message))

    def _unpack(self, r: Range, blob: bytes) -> None:
        """Decompress and verify each piece of a fetched range (on a worker thread), then hand it over."""
        for piece in r.pieces:
            try:
                data = unpack(piece, blob, r.start)
            except (CorruptLayer, DigestMismatch) as e:
                log.error("verification failed: %s", e)
                with self._lock:
                    self.stats.verification_failures += 1
                self._loop.call_soon_threadsafe(self._settle, piece, None, FetchError(5, str(e)))
                continue
            try:
                self.cache.put(piece.digest, data)
            except OSError as e:  # a full disk, say: the reader still gets the (verified) bytes
                log.warning("cannot cache chunk %s: %s", piece.digest, e)
            with self._lock:
                self.stats.pieces_fetched += 1
            self._loop.call_soon_threadsafe(self._settle, piece, data)

    def _settle(self, piece: Piece, data: bytes | None = None, error: BaseException | None = None) -> None:
        future = self._inflight.pop(piece.digest, None)
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
            future.exception()  # a prefetch nobody waits for must not log "never retrieved"
        else:
            future.set_result(data)  # type: ignore[arg-type]


@dataclass(eq=False)
class Batch:
    """Ranges of one layer fetched in one request, and how urgently."""

    layer: int
    ranges: list[Range]
    priority: int
    order: int = 0  # within a priority: a profile's order (or a guess's tier) first, then blob order


@dataclass
class Range:
    start: int
    end: int
    pieces: list[Piece]


def ride_along(demand: list[Range], ahead: list[Piece]) -> list[Piece]:
    """The pieces of `ahead` that lie within COALESCE_GAP of a range a reader waits for: fetched in
    that range, they cost the reader a few ms more (64 KiB at 100 Mbit/s: 5 ms) and no request."""
    return [
        piece
        for piece in ahead
        if any(r.start - COALESCE_GAP <= piece.start and piece.end <= r.end + COALESCE_GAP for r in demand)
    ]


def requests(pieces: list[Piece], limit: int = 0, gap: int = COALESCE_GAP) -> list[list[Range]]:
    """Pieces of one layer as the ranges of each request (gaps up to `gap` fetched): small ranges
    several to a (multi-range) request, large ones a request each; with a `limit`, no request asks
    for more bytes than that (unless a single piece is larger)."""
    longest = min(limit, MAX_RANGE) if limit else MAX_RANGE
    ranges = coalesce(pieces, longest, gap)
    small = [r for r in ranges if r.end - r.start < MAX_RANGE // 4]
    large = [[r] for r in ranges if r.end - r.start >= MAX_RANGE // 4]
    groups: list[list[Range]] = []
    size = 0
    for r in small:
        if not groups or len(groups[-1]) == RANGES_PER_REQUEST or (limit and size + r.end - r.start > limit):
            groups.append([])
            size = 0
        groups[-1].append(r)
        size += r.end - r.start
    return groups + large


def coalesce(pieces: list[Piece], longest: int = MAX_RANGE, gap: int = COALESCE_GAP) -> list[Range]:
    """Neighbouring pieces of one layer blob, merged into ranges (gaps up to `gap` fetched) of at
    most `longest` bytes (unless a single piece is longer)."""
    ranges: list[Range] = []
    for piece in sorted(pieces, key=lambda p: p.start):
        last = ranges[-1] if ranges else None
        if (
            last is not None
            and piece.start - last.end <= gap
            and max(last.end, piece.end) - last.start <= longest
        ):
            last.end = max(last.end, piece.end)
            last.pieces.append(piece)
        else:
            ranges.append(Range(piece.start, piece.end, [piece]))
    return ranges
