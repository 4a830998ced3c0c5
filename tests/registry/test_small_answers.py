"""Small answers (a manifest, a tag list, a referrers list) cut off half way are asked for again, and
one that is always cut off is the caller's one line, like a blob's: registry.client.api._small_answer.

A stand-in registry on 127.0.0.1 (aiohttp) answers each GET with a body it cuts off after a few bytes
the first `cuts` times, whole afterwards."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from registry.client import RegistryClient
from registry.client.errors import RegistryUnreachable
from storage.digest import Digest
from storage.oci import MEDIA_INDEX, MEDIA_MANIFEST

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "layers": []}).encode()
TAGS = json.dumps({"name": "app", "tags": ["1", "2"]}).encode()
REFERRERS = json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}).encode()


class CutOff:
    """Answers whose bodies are cut off after 8 bytes the first `cuts` times each path is asked."""

    def __init__(self, cuts: int) -> None:
        self.cuts = cuts
        self.asked: dict[str, int] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v2/app/manifests/{ref}", self.answer(MANIFEST, MEDIA_MANIFEST))
        app.router.add_get("/v2/app/tags/list", self.answer(TAGS, "application/json"))
        app.router.add_get("/v2/app/referrers/{digest}", self.answer(REFERRERS, MEDIA_INDEX))
        return app

    def answer(self, body: bytes, media_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            seen = self.asked[request.path] = self.asked.get(request.path, 0) + 1
            response = web.StreamResponse(
                headers={"Content-Type": media_type, "Content-Length": str(len(body))}
            )
            await response.prepare(request)
            if seen <= self.cuts:
                await response.write(body[:8])
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(body)
            return response

        return handle


async def _asked(cuts: int) -> tuple[CutOff, tuple[bytes, list[str], int] | BaseException]:
    registry = CutOff(cuts)
    server = TestServer(registry.app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with RegistryClient(f"127.0.0.1:{server.port}") as client:
            try:
                data, _, _ = await client.get_manifest("app", "1")
                tags = await client.tags("app")
                referrers = await client.referrers("app", Digest.of(MANIFEST))
                return registry, (data, tags, len(referrers))
            except RegistryUnreachable as e:
                return registry, e
    finally:
        await server.close()


def test_a_small_answer_cut_off_once_is_asked_for_again() -> None:
    registry, got = asyncio.run(_asked(cuts=1))
    assert got == (MANIFEST, ["1", "2"], 0)
    assert sorted(registry.asked.values()) == [2, 2, 2]  # each cut once, then whole


def test_a_small_answer_always_cut_off_is_one_line_that_says_so() -> None:
    registry, got = asyncio.run(_asked(cuts=99))
    assert isinstance(got, RegistryUnreachable)
    assert str(got).startswith("cannot reach registry 127.0.0.1:") and "\n" not in str(got)
    assert list(registry.asked.values()) == [3]  # tried three times, then told


def test_whole_answers_are_asked_for_once() -> None:
    registry, got = asyncio.run(_asked(cuts=0))
    assert got == (MANIFEST, ["1", "2"], 0)
    assert sorted(registry.asked.values()) == [1, 1, 1]
