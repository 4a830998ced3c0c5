"""A real HTTP proxy on 127.0.0.1 in front of a registry (ours or docker-registry), for tests that
need to see or spoil the traffic: it counts the bytes clients upload, and can corrupt blobs or send
them slowly."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from aiohttp import web

from tests.registry.conftest import free_port


class CountingProxy:
    """Forwards every request to `upstream`; `uploaded` is the request body bytes sent to blob
    uploads so far. `corrupt` flips a byte in the middle of every whole blob it hands out;
    `trickle` > 0 sends blob answers in pieces of that many bytes, `pause` seconds apart."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.uploaded = 0
        self.blob_bytes_sent = 0
        self.corrupt = False
        self.trickle = 0
        self.pause = 0.0
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "the proxy did not start"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
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
        is_blob = request.method == "GET" and "/blobs/sha" in request.path and up.status == 200
        if is_blob and self.corrupt and body:
            body[len(body) // 2] ^= 0xFF
        kept = {
            k: v for k, v in up.headers.items() if k.lower() not in ("content-length", "transfer-encoding")
        }
        if "Location" in kept:  # docker-registry's are absolute: the client must come back through us
            kept["Location"] = kept["Location"].replace(self.upstream, self.address)
        if not (is_blob and self.trickle):
            return web.Response(status=up.status, headers=kept, body=bytes(body))
        response = web.StreamResponse(status=up.status, headers=kept)
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), self.trickle):
            await response.write(bytes(body[start : start + self.trickle]))
            self.blob_bytes_sent += len(body[start : start + self.trickle])
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
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
