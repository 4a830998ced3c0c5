"""Byte ranges of a blob out of a registry's answers: single `206`s, `multipart/byteranges`, whole blobs.

Parts are read by the length their `Content-Range` gives, so part bodies are never searched for
the boundary, and every part must lie within a range that was asked for. The ranges a caller asks
for are merged first (`merge`): servers may refuse overlapping ranges, and fewer parts are cheaper.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp

from registry.client.errors import RegistryClientError
from registry.client.transport import READ_SIZE
from storage.errors import InvalidReference

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)\Z")
_PART_HEADERS_LIMIT = 64 << 10


def check_ranges(ranges: list[tuple[int, int]]) -> None:
    """Each (offset, length) starts at 0 or later and holds a byte at least."""
    for offset, length in ranges:
        if offset < 0 or length <= 0:
            raise InvalidReference(f"invalid byte range: offset {offset}, length {length}")


def merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
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


def range_header(spans: list[tuple[int, int]]) -> str:
    """The `Range` header asking for (start, end exclusive) spans."""
    return "bytes=" + ",".join(f"{start}-{end - 1}" for start, end in spans)


def beyond_the_end(response: aiohttp.ClientResponse, spans: list[tuple[int, int]]) -> bool:
    """A 416 that says why (`Content-Range: bytes */SIZE`) and is right: a range starts past the end."""
    size = response.headers.get("Content-Range", "").removeprefix("bytes */")
    return response.status == 416 and size.isdigit() and any(start >= int(size) for start, _ in spans)


def parse_content_range(value: str | None, what: str) -> tuple[int, int]:
    """`bytes A-B/SIZE` -> (A, B + 1)."""
    match = _CONTENT_RANGE.match((value or "").strip())
    if not match or int(match.group(2)) < int(match.group(1)):
        raise RegistryClientError(f"{what}: a partial answer with Content-Range {value!r}")
    return int(match.group(1)), int(match.group(2)) + 1


async def read_part(response: aiohttp.ClientResponse, what: str) -> tuple[int, bytes]:
    """The body of a single-range 206: (its offset, its bytes)."""
    start, end = parse_content_range(response.headers.get("Content-Range"), what)
    return start, await response.content.readexactly(end - start)


async def read_parts(
    response: aiohttp.ClientResponse, spans: list[tuple[int, int]], what: str
) -> list[tuple[int, bytes]]:
    """The parts of a 206 answer as (offset, bytes); each must lie within a span we asked for.

    Parts are read by the length their Content-Range gives, so part bodies are never searched
    for the boundary.
    """
    content_type = response.headers.get("Content-Type", "")
    if not content_type.lower().startswith("multipart/byteranges"):
        parts = [await read_part(response, what)]  # ranges joined into one
    else:
        boundary = _boundary_of(content_type, what)
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
            start, end = parse_content_range(part_range, what)
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


def _boundary_of(content_type: str, what: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip().strip('"'):
            return value.strip().strip('"').encode("latin-1")
    raise RegistryClientError(f"{what}: a multipart answer without a boundary")


def cut(parts: list[tuple[int, bytes]], offset: int, length: int, what: str) -> bytes:
    """Bytes [offset, offset+length) out of the (offset, bytes) part that holds them."""
    for start, data in parts:
        if start <= offset and offset + length <= start + len(data):
            return data[offset - start : offset - start + length]
    raise RegistryClientError(f"{what}: the answer lacks bytes {offset}+{length}")


async def slice_stream(
    content: aiohttp.StreamReader, ranges: list[tuple[int, int]], what: str
) -> list[bytes]:
    """The ranges out of a whole blob as it streams by; reading stops after the last one."""
    out = [bytearray() for _ in ranges]
    last = max(offset + length for offset, length in ranges)
    position = 0
    while position < last:
        piece = await content.read(min(READ_SIZE, last - position))
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
