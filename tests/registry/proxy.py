"""A real HTTP proxy on 127.0.0.1 in front of a registry (ours or docker-registry), for tests that
need to see or spoil the traffic: it counts what clients upload, and can hold, slow down, trickle or
corrupt the answers."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from aiohttp import web

from tests.registry.conftest import free_port


class Proxy:
    """Forwards every request to `upstream`.

    `uploaded`: the request body bytes sent to blob uploads so far. `answering` cleared: requests
    wait, unanswered, until it is set again; `delay`: seconds before each is forwarded. `corrupt`
    flips a byte in the middle of every byte-range answer (206), `corrupt_blobs` of every whole blob.
    `trickle` > 0 sends answers in pieces of that many bytes, `pause` seconds apart, as a slow network
    has them; `trickled` counts the bytes sent so. `requests`: (method, path and query) of each
    request, as it came.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.uploaded = 0
        self.delay = 0.0
        self.answering = threading.Event()
        self.answering.set()
        self.corrupt = False
        self.corrupt_blobs = False
        self.trickle = 0
        self.pause = 0.0
        self.trickled = 0
        self.requests: list[tuple[str, str]] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the proxy did not start"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        while not self.answering.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(self.delay)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        data = await request.read()
        if "/blobs/uploads/" in request.path:
            self.uploaded += len(data)
        url = f"http://{self.upstream}{request.path_qs}"
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(request.method, url, headers=headers, data=data, allow_redirects=False) as up,
        ):
            body = bytearray(await up.read())
        whole_blob = request.method == "GET" and "/blobs/sha" in request.path and up.status == 200
        if body and ((self.corrupt and up.status == 206) or (self.corrupt_blobs and whole_blob)):
            body[len(body) // 2] ^= 0xFF
        drop = ("content-length", "transfer-encoding", "content-encoding")
        kept = {k: v for k, v in up.headers.items() if k.lower() not in drop}
        if "Location" in kept:  # docker-registry's are absolute: the client must come back through us
            kept["Location"] = kept["Location"].replace(self.upstream, self.address)
        if not self.trickle:
            return web.Response(status=up.status, headers=kept, body=bytes(body))
        response = web.StreamResponse(status=up.status, headers=kept)
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), self.trickle):
            piece = bytes(body[start : start + self.trickle])
            await response.write(piece)
            self.trickled += len(piece)
            await asyncio.sleep(self.pause)
        await response.write_eof()
        return response

    def _run(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = self._runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._started.set()
        self._loop.run_forever()

    def stop(self) -> None:
        self.answering.set()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
