"""Byte ranges of a blob: the `Range` header read as RFC 9110 says, and the 206 and 416 answers.

One range is a 206 with `Content-Range`; several are one `multipart/byteranges` body; none
satisfiable is a 416 with `Content-Range: bytes */SIZE`.

RFC 9110 section 14.2 is followed to the letter, for every storage driver alike: a header that is
not a valid `bytes` range set (another unit, garbage, or a range whose last byte comes before its
first, as `bytes=500-0`) is *ignored* and the whole blob answered with 200; one that is valid but
of which no range starts inside the blob (`bytes=SIZE-`, `bytes=-0`) is 416; a range that runs
past the end is cut to the blob's last byte.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator

from aiohttp import web

MULTIPART_IN_MEMORY = 4 << 20  # multi-range answers up to this size are read at once
_RANGE_SPEC_RE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*\Z")

Ranges = list[tuple[int, int]]  # (start, end inclusive)
Reader = Callable[[int, int], Iterator[bytes]]  # (start, end exclusive) -> the bytes, in pieces


def parse_ranges(header: str, size: int) -> Ranges | None:
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


def unsatisfiable(size: int, headers: dict[str, str]) -> web.Response:
    return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})


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
    request: web.Request, read: Reader, ranges: Ranges, size: int, headers: dict[str, str], local: bool
) -> web.StreamResponse:
    """Several ranges as `multipart/byteranges`.

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


async def send_streamed(
    request: web.Request, read: Reader, ranges: Ranges | None, size: int, headers: dict[str, str]
) -> web.StreamResponse:
    """Bytes with no local file behind them (S3): whole (`ranges` None) or in ranges, read as sent."""
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
