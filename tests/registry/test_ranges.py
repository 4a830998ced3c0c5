"""Byte ranges of blobs: raw HTTP against our server and docker-registry, and the client's read_ranges.

read_ranges is also run against small aiohttp servers of the test's own that ignore `Range`,
refuse several ranges, or fail once, to see the fallbacks and retries.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from registry.client import RegistryClient, RegistryClientError, RegistryNotFound
from storage.errors import InvalidReference
from tests.conftest import require_tools
from tests.registry.conftest import Registry, sha256
from tests.registry.test_client import DockerRegistry

DATA = os.urandom(300_000)
DIGEST = sha256(DATA)
REPO = "test/ranges"


@pytest.fixture(params=["lazyctr", "docker-registry"])
def server_address(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The address of a running registry holding DATA in REPO: ours, then docker-registry."""
    if request.param == "lazyctr":
        server: Registry | DockerRegistry = Registry(tmp_path / "registry")
    else:
        require_tools("docker-registry")
        server = DockerRegistry(tmp_path / "docker-registry")
    try:
        asyncio.run(_push(server.address, tmp_path))
        yield server.address
    finally:
        server.stop()


async def _push(address: str, tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(DATA)
    async with RegistryClient(address) as client:  # docker-registry takes no monolithic POST
        assert await client.push_blob(REPO, DIGEST, tmp_path / "blob") == "pushed"


async def _get(
    address: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        url = f"http://{address}/v2/{REPO}/blobs/{DIGEST}"
        async with session.request(method, url, headers=headers) as response:
            # docker-registry's 416 promises the blob's Content-Length and sends a short text: not read.
            body = await response.read() if response.status < 400 else b""
            return response.status, dict(response.headers), body


# -- raw HTTP: what both servers answer -----------------------------------------------------------


def test_whole_blob_says_it_accepts_ranges(server_address: str) -> None:
    status, headers, body = asyncio.run(_get(server_address, {}))
    assert (status, body) == (200, DATA)
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Docker-Content-Digest"] == DIGEST


def test_single_range_is_206_with_content_range(server_address: str) -> None:
    status, headers, body = asyncio.run(_get(server_address, {"Range": "bytes=1000-66535"}))
    assert status == 206
    assert body == DATA[1000:66536]
    assert headers["Content-Range"] == f"bytes 1000-66535/{len(DATA)}"
    assert headers["Content-Length"] == str(65536)


def test_suffix_and_open_ranges(server_address: str) -> None:
    status, headers, body = asyncio.run(_get(server_address, {"Range": "bytes=-10"}))
    assert (status, body, headers["Content-Range"]) == (
        206,
        DATA[-10:],
        f"bytes {len(DATA) - 10}-{len(DATA) - 1}/{len(DATA)}",
    )
    status, headers, body = asyncio.run(_get(server_address, {"Range": f"bytes={len(DATA) - 5}-"}))
    assert (status, body) == (206, DATA[-5:])


def test_range_past_the_end_is_416(server_address: str) -> None:
    status, headers, _ = asyncio.run(_get(server_address, {"Range": f"bytes={len(DATA)}-{len(DATA) + 10}"}))
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_multiple_ranges_are_multipart_byteranges(server_address: str) -> None:
    async def main() -> list[tuple[str, bytes]]:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            url = f"http://{server_address}/v2/{REPO}/blobs/{DIGEST}"
            async with session.get(url, headers={"Range": "bytes=0-9,100000-165535,-3"}) as response:
                assert response.status == 206
                assert response.headers["Content-Type"].startswith("multipart/byteranges; boundary=")
                reader = aiohttp.MultipartReader.from_response(response)  # aiohttp's parser, not ours
                parts = []
                while (part := await reader.next()) is not None:
                    assert isinstance(part, aiohttp.BodyPartReader)
                    parts.append((part.headers["Content-Range"], await part.read()))
                return parts

    assert asyncio.run(main()) == [
        (f"bytes 0-9/{len(DATA)}", DATA[0:10]),
        (f"bytes 100000-165535/{len(DATA)}", DATA[100000:165536]),
        (f"bytes {len(DATA) - 3}-{len(DATA) - 1}/{len(DATA)}", DATA[-3:]),
    ]


# -- the client ----------------------------------------------------------------------------------


def some_ranges(count: int, seed: int) -> list[tuple[int, int]]:
    """`count` random ranges, unsorted, one at each end of the blob, one twice, two adjacent."""
    rng = random.Random(seed)
    ranges = [(0, 1), (len(DATA) - 7, 7), (1, 9), (1, 9)]
    while len(ranges) < count:
        offset = rng.randrange(len(DATA) - 1)
        ranges.append((offset, rng.randint(1, min(65536, len(DATA) - offset))))
    rng.shuffle(ranges)
    return ranges[:count]


def spans_of(ranges: list[tuple[int, int]]) -> int:
    """How many requests ranges take one by one: overlapping and adjacent ones are read together."""
    ends: list[int] = []
    for offset, length in sorted(ranges):
        if ends and offset <= ends[-1]:
            ends[-1] = max(ends[-1], offset + length)
        else:
            ends.append(offset + length)
    return len(ends)


def expected(ranges: list[tuple[int, int]]) -> list[bytes]:
    return [DATA[offset : offset + length] for offset, length in ranges]


def test_read_ranges_in_one_request(server_address: str) -> None:
    async def main() -> None:
        async with RegistryClient(server_address) as client:
            for count, seed in [(2, 1), (4, 1), (16, 2), (64, 3)]:
                ranges = some_ranges(count, seed)
                assert await client.read_ranges(REPO, DIGEST, ranges) == expected(ranges)
            assert await client.read_ranges(REPO, DIGEST, [(5, 10)]) == [DATA[5:15]]
            assert await client.read_ranges(REPO, DIGEST, []) == []
            assert await client.read_ranges(REPO, DIGEST, [(0, len(DATA)), (1, 1)]) == [DATA, DATA[1:2]]
            assert client.multi_range  # nothing made it fall back

    asyncio.run(main())


def test_many_concurrent_read_ranges(registry: Registry, tmp_path: Path) -> None:
    asyncio.run(_push(registry.address, tmp_path))

    async def main() -> None:
        async with RegistryClient(registry.address) as client:
            calls = [some_ranges(16, seed) for seed in range(64)]
            results = await asyncio.gather(*(client.read_ranges(REPO, DIGEST, r) for r in calls))
            assert results == [expected(r) for r in calls]

    asyncio.run(main())


def test_read_ranges_past_the_end_is_an_error_not_a_fallback(registry: Registry, tmp_path: Path) -> None:
    asyncio.run(_push(registry.address, tmp_path))

    async def main() -> None:
        async with RegistryClient(registry.address) as client:
            with pytest.raises(RegistryClientError, match=r"lacks bytes 300000\+5|416"):
                await client.read_ranges(REPO, DIGEST, [(0, 1), (len(DATA), 5)])
            assert client.multi_range

    asyncio.run(main())


@pytest.mark.parametrize("ranges", [[(-1, 5)], [(0, 0)], [(0, 5), (7, -2)]])
def test_invalid_ranges_are_refused(registry: Registry, ranges: list[tuple[int, int]]) -> None:
    async def main() -> None:
        async with RegistryClient(registry.address) as client:
            await client.read_ranges(REPO, DIGEST, ranges)

    with pytest.raises(InvalidReference, match="invalid byte range"):
        asyncio.run(main())


# -- fallbacks, against small servers of our own ------------------------------------------------


class Blobs:
    """A registry stand-in serving DATA (or `size` bytes of a pattern), recording each Range header."""

    def __init__(self, answer: Callable[[Blobs, web.Request], Awaitable[web.StreamResponse]]) -> None:
        self.answer = answer
        self.ranges: list[str | None] = []
        self.sent = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/", self.ping)
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self.get)
        return app

    async def ping(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({})

    async def get(self, request: web.Request) -> web.StreamResponse:
        self.ranges.append(request.headers.get("Range"))
        return await self.answer(self, request)

    def multi(self) -> int:
        return sum(1 for r in self.ranges if r is not None and "," in r)


async def serving(blobs: Blobs) -> TestServer:
    server = TestServer(blobs.app(), host="127.0.0.1")
    await server.start_server()
    return server


async def ignore_range(blobs: Blobs, request: web.Request) -> web.StreamResponse:
    return web.Response(body=DATA)


def no_multi_range(status: int, path: Path) -> Callable[[Blobs, web.Request], Awaitable[web.StreamResponse]]:
    """Answers several ranges with `status`, one range as aiohttp's FileResponse does (206)."""

    async def answer(blobs: Blobs, request: web.Request) -> web.StreamResponse:
        if "," in request.headers.get("Range", ""):
            return web.Response(status=status)
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    return answer


def test_read_ranges_from_a_server_that_ignores_range() -> None:
    ranges = some_ranges(8, 7)

    async def main() -> None:
        blobs = Blobs(ignore_range)
        server = await serving(blobs)
        try:
            async with RegistryClient(f"127.0.0.1:{server.port}") as client:
                assert await client.read_ranges(REPO, DIGEST, ranges) == expected(ranges)
                assert blobs.multi() == 1 and not client.multi_range
                # Next: range by range (each answered whole, sliced); then it knows Range is ignored
                # altogether and takes every range out of one whole answer.
                assert await client.read_ranges(REPO, DIGEST, ranges) == expected(ranges)
                assert len(blobs.ranges) == 1 + spans_of(ranges) and blobs.multi() == 1
                assert await client.read_ranges(REPO, DIGEST, ranges) == expected(ranges)
                assert len(blobs.ranges) == 2 + spans_of(ranges)
        finally:
            await server.close()

    asyncio.run(main())


@pytest.mark.parametrize("status", [400, 416])
def test_read_ranges_falls_back_to_single_ranges(status: int, tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(DATA)
    ranges = some_ranges(12, 11)

    async def main() -> None:
        blobs = Blobs(no_multi_range(status, tmp_path / "blob"))
        server = await serving(blobs)
        try:
            async with RegistryClient(f"127.0.0.1:{server.port}") as client:
                assert await client.read_ranges(REPO, DIGEST, ranges) == expected(ranges)
                assert blobs.multi() == 1 and len(blobs.ranges) == 1 + spans_of(ranges)
                assert not client.multi_range
                assert await client.read_ranges(REPO, DIGEST, ranges) == expected(ranges)
                assert blobs.multi() == 1 and len(blobs.ranges) == 1 + 2 * spans_of(ranges)
                assert spans_of(ranges) < len(ranges)  # the test's ranges do overlap
        finally:
            await server.close()

    asyncio.run(main())


def test_a_failing_single_range_fails_the_call_with_its_own_error(tmp_path: Path) -> None:
    (tmp_path / "blob").write_bytes(DATA)
    files = no_multi_range(400, tmp_path / "blob")

    async def gone_past_1000(blobs: Blobs, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Range", "")
        if "," not in header and int(header.removeprefix("bytes=").split("-")[0]) > 1000:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "gone"}]}, status=404)
        return await files(blobs, request)

    async def main() -> None:
        server = await serving(Blobs(gone_past_1000))
        try:
            async with RegistryClient(f"127.0.0.1:{server.port}") as client:
                with pytest.raises(RegistryNotFound, match="BLOB_UNKNOWN"):
                    await client.read_ranges(REPO, DIGEST, [(0, 10), (5000, 10), (9000, 10)])
        finally:
            await server.close()

    asyncio.run(main())


def test_a_whole_answer_is_read_only_as_far_as_the_last_range() -> None:
    size = 512 << 20

    async def endless(blobs: Blobs, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(size)})
        await response.prepare(request)
        piece = bytes(1 << 20)
        try:
            while blobs.sent < size:
                await response.write(piece)
                blobs.sent += len(piece)
        except (ConnectionError, RuntimeError):
            pass  # the client went away: what we wanted
        return response

    async def main() -> None:
        blobs = Blobs(endless)
        server = await serving(blobs)
        try:
            async with RegistryClient(f"127.0.0.1:{server.port}") as client:
                got = await client.read_ranges(REPO, DIGEST, [(10, 5), (1 << 20, 3)])
                assert got == [bytes(5), bytes(3)]
            await asyncio.sleep(0.2)
            assert blobs.sent < size // 4, blobs.sent
        finally:
            await server.close()

    asyncio.run(main())


def test_read_ranges_retries_a_body_cut_off_and_a_503(tmp_path: Path) -> None:
    answers = iter(["503", "cut", "ok"])

    async def flaky(blobs: Blobs, request: web.Request) -> web.StreamResponse:
        what = next(answers, "ok")
        if what == "503":
            return web.Response(status=503)
        boundary = "b0undary"
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Range: bytes {a}-{b}/{len(DATA)}\r\n\r\n".encode()
                + DATA[a : b + 1]
                + b"\r\n"
                for a, b in [(0, 99), (1000, 1099)]
            )
            + f"--{boundary}--\r\n".encode()
        )
        response = web.StreamResponse(
            status=206,
            headers={
                "Content-Type": f"multipart/byteranges; boundary={boundary}",
                "Content-Length": str(len(body)),
            },
        )
        await response.prepare(request)
        if what == "cut":
            await response.write(body[:150])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        return response

    async def main() -> None:
        blobs = Blobs(flaky)
        server = await serving(blobs)
        try:
            async with RegistryClient(f"127.0.0.1:{server.port}") as client:
                got = await client.read_ranges(REPO, DIGEST, [(1000, 100), (0, 100)])
                assert got == [DATA[1000:1100], DATA[0:100]]
                assert len(blobs.ranges) == 3 and client.multi_range
        finally:
            await server.close()

    asyncio.run(main())


def test_parts_we_did_not_ask_for_are_refused() -> None:
    async def liar(blobs: Blobs, request: web.Request) -> web.StreamResponse:
        boundary = "xyz"
        body = (
            f"--{boundary}\r\nContent-Range: bytes 5000-5099/{len(DATA)}\r\n\r\n".encode()
            + DATA[5000:5100]
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return web.Response(
            status=206, body=body, headers={"Content-Type": f"multipart/byteranges; boundary={boundary}"}
        )

    async def main() -> None:
        server = await serving(Blobs(liar))
        try:
            async with RegistryClient(f"127.0.0.1:{server.port}") as client:
                with pytest.raises(RegistryClientError, match="did not ask for"):
                    await client.read_ranges(REPO, DIGEST, [(0, 10), (100, 10)])
        finally:
            await server.close()

    asyncio.run(main())
