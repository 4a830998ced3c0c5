"""The pull-through cache (`lazyctr serve --proxy UPSTREAM`) in front of a real upstream `lazyctr serve`
whose JSON access log tells what left it: each miss fetched once however many clients ask at once,
manifests revalidated by digest, cached content served while the upstream is down, tampered bytes
never stored or served as the blob, bad upstream answers as clear errors, and `lazyctr pull` and a
lazy mount through the cache."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from aiohttp import web

from registry.auth import Access
from registry.client import RegistryClient
from registry.credentials import Credentials
from registry.credentials import store as store_credentials
from registry.filesystem import FilesystemDriver
from registry.htpasswd import load_htpasswd
from registry.proxy_cache import ProxyCache, Spans
from registry.proxy_cache import Upstream as ProxiedRegistry
from registry.server.app import serve
from registry.storage import BlobStore
from tests.conftest import CliRunner, assert_clean_error
from tests.lazyfs.conftest import BIG, Mounter, Published, mount, published, run_cli
from tests.registry.conftest import Registry, Reply, free_port, lazyctr_serve, sha256
from tests.registry.proxy import Proxy
from tests.registry.test_client import DockerRegistry, docker_registry

__all__ = ["docker_registry", "mount", "published"]  # the lazy tests' fixtures, used here too

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BLOB = os.urandom(6 << 20)  # 6 MiB: small ranges of it go upstream in one request, large ones stream


def request(address: str, method: str, path: str, body: bytes | None = None, **headers: str) -> Reply:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def push_image(address: str, name: str, tag: str, layer: bytes, **auth: str) -> tuple[str, bytes]:
    """A one-layer image pushed by tag; its manifest's digest and bytes."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    descriptors = []
    for data, media_type in ((config, "application/vnd.oci.image.config.v1+json"),
                             (layer, "application/vnd.oci.image.layer.v1.tar")):  # fmt: skip
        reply = request(address, "POST", f"/v2/{name}/blobs/uploads/?digest={sha256(data)}", data, **auth)
        assert reply.status == 201, reply
        descriptors.append({"mediaType": media_type, "digest": sha256(data), "size": len(data)})
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": descriptors[0], "layers": descriptors[1:]}
    ).encode()
    headers = {"Content-Type": MEDIA_MANIFEST, **auth}
    reply = request(address, "PUT", f"/v2/{name}/manifests/{tag}", manifest, **headers)
    assert reply.status == 201, reply
    return sha256(manifest), manifest


@dataclass
class Upstream:
    """A real `lazyctr serve` whose access log (JSON, a line per request) is `log`."""

    address: str
    log: Path

    def requests(self, fragment: str = "") -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [entry for entry in map(json.loads, lines) if fragment in entry["path"]]


@contextlib.contextmanager
def upstream_serve(root: Path) -> Iterator[Upstream]:
    log = root.with_name(root.name + "-access.log")
    with open(log, "wb") as out, lazyctr_serve(root, "--log-format", "json", stdout=out) as address:
        yield Upstream(address, log)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    with upstream_serve(tmp_path / "upstream") as server:
        yield server


class InThreadCache(Registry):
    """The cache's server in a thread of the test (quicker to start than `lazyctr serve --proxy`,
    which the end-to-end test runs), its storage where that command keeps it."""

    def __init__(self, root: Path, upstream: str) -> None:
        self.upstream = upstream
        super().__init__(root)

    def _run(self, read_only: bool, access: Access | None) -> None:
        store = BlobStore(FilesystemDriver(self.root))
        cache = ProxyCache(store, ProxiedRegistry.parse(self.upstream), self.root / "proxy-ranges")
        self._task = self._loop.create_task(serve(store, "127.0.0.1", self.port, proxy=cache))
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.close()


@contextlib.contextmanager
def cache_serve(tmp_path: Path, upstream: str) -> Iterator[str]:
    server = InThreadCache(tmp_path / "cache" / "registry", upstream)
    try:
        yield server.address
    finally:
        server.stop()


def cached_blob(tmp_path: Path, digest: str) -> Path:
    return tmp_path / "cache" / "registry" / "blobs" / "sha256" / digest.removeprefix("sha256:")


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def upstream_bytes(upstream: Upstream, digest: str) -> int:
    return sum(e["bytes"] for e in upstream.requests(f"/blobs/{digest}") if e["method"] == "GET")


def test_concurrent_misses_fetch_each_byte_once_upstream(upstream: Upstream, tmp_path: Path) -> None:
    push_image(upstream.address, "app", "v1", BLOB)
    digest = sha256(BLOB)
    slow = Proxy(upstream.address)  # answers late, so the cache's clients all miss at the same time
    slow.delay = 0.3
    try:
        with cache_serve(tmp_path, slow.address) as cache, ThreadPoolExecutor(16) as pool:

            def get(range_header: str | None) -> Reply:
                headers = {"Range": range_header} if range_header else {}
                return request(cache, "GET", f"/v2/app/blobs/{digest}", **headers)

            head = request(cache, "HEAD", f"/v2/app/blobs/{digest}")
            assert (head.status, head.headers["Content-Length"]) == (200, str(len(BLOB)))
            unchanged = request(cache, "GET", f"/v2/app/blobs/{digest}", **{"If-None-Match": f'"{digest}"'})
            assert unchanged.status == 304  # an HTTP cache in front revalidates for nothing
            assert upstream_bytes(upstream, digest) == 1  # neither fetched a byte of the blob

            # Two waves, so that the one-range misses come first whatever the scheduler does: a
            # two-range miss first would fetch both ranges in one multi-range request.
            replies = list(pool.map(get, ["bytes=1000-70999"] * 4))
            replies += list(pool.map(get, ["bytes=1000-70999,100000-100099"] * 2))
            assert [r.status for r in replies] == [206] * 6, replies[0].body
            assert all(r.body == BLOB[1000:71000] for r in replies[:4])
            assert BLOB[100000:100100] in replies[4].body
            assert replies[0].headers["Content-Range"] == f"bytes 1000-70999/{len(BLOB)}"
            assert replies[0].headers["Cache-Control"] == "public, max-age=31536000, immutable"
            assert replies[0].headers["ETag"] == f'"{digest}"'
            fetched = upstream.requests(f"/blobs/{digest}")
            # One byte to learn the size, then the two missing ranges: each once, for six clients.
            assert [e["method"] for e in fetched] == ["GET", "GET", "GET"], fetched
            assert upstream_bytes(upstream, digest) == 1 + 70000 + 100

            # A large range streams through (from the upstream, to every client asking at once).
            bigs = list(pool.map(get, ["bytes=200000-5999999"] * 8))  # more than the server's threads
            assert all(r.status == 206 and r.body == BLOB[200000:6000000] for r in bigs)
            assert upstream_bytes(upstream, digest) == 1 + 70000 + 100 + 5800000

            wholes = list(pool.map(get, [None, None, None]))
            assert all(r.status == 200 and r.body == BLOB for r in wholes)
            assert wholes[0].headers["Cache-Control"] == "public, max-age=31536000, immutable"
            # The rest, once, for three clients (in one multi-range answer: a few hundred bytes of framing).
            assert 1 + len(BLOB) < upstream_bytes(upstream, digest) < 1 + len(BLOB) + 1024
            whole_bytes = upstream_bytes(upstream, digest)
            assert cached_blob(tmp_path, digest).read_bytes() == BLOB
            again = get(f"bytes={len(BLOB)}-")
            assert again.status == 416  # past the end, answered from the store
            assert get("bytes=2000000-2000009").body == BLOB[2000000:2000010]
            assert upstream_bytes(upstream, digest) == whole_bytes
    finally:
        slow.stop()


def test_manifests_are_revalidated_by_digest(upstream: Upstream, tmp_path: Path) -> None:
    first, manifest = push_image(upstream.address, "app", "v1", b"first layer")
    with cache_serve(tmp_path, upstream.address) as cache:
        reply = request(cache, "GET", "/v2/app/manifests/v1")
        assert (reply.status, reply.body, reply.headers["Docker-Content-Digest"]) == (200, manifest, first)
        assert request(cache, "GET", "/v2/app/manifests/v1").body == manifest
        asked = [(e["method"], e["path"].rsplit("/", 1)[1]) for e in upstream.requests("/manifests/")]
        assert asked == [
            ("PUT", "v1"),
            ("HEAD", "v1"),
            ("GET", first),
            ("HEAD", "v1"),
        ]  # the second: revalidated only

        second, newer = push_image(upstream.address, "app", "v1", b"second layer")
        reply = request(cache, "GET", "/v2/app/manifests/v1")
        assert (reply.body, reply.headers["Docker-Content-Digest"]) == (newer, second)
        assert request(cache, "GET", f"/v2/app/manifests/{first}").body == manifest  # by digest: cached
        assert request(cache, "HEAD", f"/v2/app/manifests/{first}").status == 200
        assert len(upstream.requests(first)) == 1


def test_upstream_down_serves_what_is_cached(tmp_path: Path) -> None:
    upstream = Registry(tmp_path / "upstream")
    digest, manifest = push_image(upstream.address, "app", "v1", BLOB)
    layer = sha256(BLOB)
    with cache_serve(tmp_path, upstream.address) as cache:
        assert request(cache, "GET", "/v2/app/manifests/v1").status == 200
        assert request(cache, "GET", f"/v2/app/blobs/{layer}", Range="bytes=0-99").status == 206
        wait_for(lambda: any((tmp_path / "cache").rglob("*.spans")))  # the ranges held, written down
        upstream.stop()
        # The upstream is gone: what the cache holds is still served.
        reply = request(cache, "GET", "/v2/app/manifests/v1")
        assert (reply.status, reply.body) == (200, manifest)
        assert request(cache, "GET", f"/v2/app/manifests/{digest}").body == manifest
        assert request(cache, "GET", f"/v2/app/blobs/{layer}", Range="bytes=10-49").body == BLOB[10:50]
        missing = request(cache, "GET", f"/v2/app/blobs/{layer}", Range="bytes=100-199")
        assert missing.status == 503 and missing.error_code == "UNAVAILABLE"
        assert "cannot reach registry" in missing.json()["errors"][0]["message"]
        never = request(cache, "GET", "/v2/other/manifests/v1")
        assert never.status == 503 and never.error_code == "UNAVAILABLE"
    with cache_serve(tmp_path, upstream.address) as cache:  # restarted: what it kept on disk is served
        assert request(cache, "GET", "/v2/app/manifests/v1").body == manifest
        assert request(cache, "GET", f"/v2/app/blobs/{layer}", Range="bytes=0-99").body == BLOB[:100]


def test_tampered_upstream_bytes_are_never_stored_or_served_as_the_blob(
    registry: Registry, tmp_path: Path
) -> None:
    push_image(registry.address, "app", "v1", BLOB)
    digest = sha256(BLOB)
    tamper = Proxy(registry.address)
    tamper.corrupt = tamper.corrupt_blobs = True  # a byte flipped in every blob and range answer
    try:
        with cache_serve(tmp_path, tamper.address) as cache:
            whole = request(cache, "GET", f"/v2/app/blobs/{digest}")
            assert whole.status == 502 and whole.error_code == "UNKNOWN"
            assert f"sent bytes that are not blob {digest}" in whole.json()["errors"][0]["message"]
            assert not cached_blob(tmp_path, digest).exists()
            assert not list((tmp_path / "cache" / "registry" / "proxy-ranges").rglob("*.spans"))

            # A range cannot be checked until the whole blob is known: it passes as the upstream sent
            # it (lazyfs checks its chunks), but the blob it belongs to is never completed from it.
            part = request(cache, "GET", f"/v2/app/blobs/{digest}", Range="bytes=0-9999")
            assert part.status == 206 and part.body != BLOB[:10000]
            assert request(cache, "GET", f"/v2/app/blobs/{digest}").status == 502
            assert not cached_blob(tmp_path, digest).exists()

            tamper.corrupt = tamper.corrupt_blobs = False  # an honest upstream again
            whole = request(cache, "GET", f"/v2/app/blobs/{digest}")
            assert (whole.status, whole.body) == (200, BLOB)
            assert cached_blob(tmp_path, digest).read_bytes() == BLOB
            assert request(cache, "GET", f"/v2/app/blobs/{digest}", Range="bytes=0-9999").body == BLOB[:10000]
    finally:
        tamper.stop()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadUpstream:
    """A real HTTP server that answers every request with `status`, `body` and `headers`, or as
    `handler` says."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.status, self.body, self.headers = 500, b"", dict[str, str]()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        started = threading.Event()

        async def answer(request: web.Request) -> web.StreamResponse:
            return web.Response(status=self.status, body=self.body, headers=self.headers)

        def run() -> None:
            loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handler or answer)
            runner = web.AppRunner(app)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            started.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert started.wait(10)


async def half_then_hang_up(request: web.Request) -> web.StreamResponse:
    """Byte ranges of BLOB; of a large one, the first half, then the connection closes."""
    first, last = map(int, request.headers["Range"].removeprefix("bytes=").split("-"))
    response = web.StreamResponse(status=206, headers={"Content-Range": f"bytes {first}-{last}/{len(BLOB)}"})
    response.content_length = last + 1 - first
    await response.prepare(request)
    if last - first < 1000:
        await response.write(BLOB[first : last + 1])
        await response.write_eof()
    else:
        await response.write(BLOB[first : first + (last - first) // 2])
        await asyncio.sleep(0.1)
        assert request.transport is not None
        request.transport.close()
    return response


def test_an_upstream_cut_off_half_way_cuts_the_answer_and_keeps_what_came(tmp_path: Path) -> None:
    bad = BadUpstream(half_then_hang_up)
    digest = sha256(BLOB)
    with cache_serve(tmp_path, bad.address) as cache:
        host, port = cache.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", f"/v2/app/blobs/{digest}", headers={"Range": "bytes=100-5000099"})
        response = conn.getresponse()
        assert response.status == 206  # streamed as it came: then the upstream hung up
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        conn.close()
        assert request(cache, "GET", f"/v2/app/blobs/{digest}", Range="bytes=100-199").body == BLOB[100:200]


def test_spans_hold_merged_byte_ranges() -> None:
    spans = Spans([(10, 20), (30, 40)])
    assert spans.gaps(0, 50) == [(0, 10), (20, 30), (40, 50)]
    assert spans.gaps(12, 18) == [] and spans.covers(30, 40) and not spans.covers(15, 25)
    spans.add(20, 30)
    assert spans.spans == [(10, 40)] and spans.run_end(15) == 40 and spans.run_end(40) == 40


def test_bad_upstream_answers_are_clear_errors(tmp_path: Path, lazyctr: CliRunner) -> None:
    bad = BadUpstream()
    digest = sha256(b"anything")
    with cache_serve(tmp_path, bad.address) as cache:
        bad.status = 404
        assert request(cache, "GET", "/v2/app/manifests/v1").error_code == "MANIFEST_UNKNOWN"
        assert request(cache, "GET", f"/v2/app/blobs/{digest}").error_code == "BLOB_UNKNOWN"

        bad.status = 500
        reply = request(cache, "GET", "/v2/app/manifests/v1")
        assert (reply.status, reply.error_code) == (502, "UNKNOWN")
        assert "upstream failed" in reply.json()["errors"][0]["message"]
        assert "HTTP 500" in reply.json()["errors"][0]["message"]
        assert_clean_error(lazyctr("pull", f"{cache}/app:v1", ok=False), "upstream failed")

        bad.status, bad.body = 200, b"not a manifest at all"
        bad.headers = {"Docker-Content-Digest": digest, "Content-Type": MEDIA_MANIFEST}
        reply = request(cache, "GET", "/v2/app/manifests/v1")
        assert (reply.status, reply.error_code) == (502, "UNKNOWN")
        assert "does not match its digest" in reply.json()["errors"][0]["message"]
        bad.headers = {}  # other bytes than the blob's
        reply = request(cache, "GET", f"/v2/app/blobs/{digest}")
        assert (reply.status, reply.error_code) == (502, "UNKNOWN")
        assert f"sent bytes that are not blob {digest}" in reply.json()["errors"][0]["message"]
        bad.status = 206  # a partial answer that does not say of what
        reply = request(cache, "GET", f"/v2/other/blobs/{digest}", Range="bytes=0-1")
        assert reply.status == 502 and "without its size" in reply.json()["errors"][0]["message"]

        assert request(cache, "PUT", "/v2/app/manifests/v2", b"{}").error_code == "DENIED"  # read-only
    assert_clean_error(lazyctr("serve", "--proxy", "ftp://somewhere/x", ok=False), "invalid upstream")


def test_the_cache_logs_in_to_the_upstream_with_stored_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "htpasswd").write_text(f"alice:{hashed}\n")
    upstream = Registry(tmp_path / "upstream", access=Access(load_htpasswd(tmp_path / "htpasswd")))
    alice = Credentials("alice", "s3cret")
    try:
        _, manifest = push_image(upstream.address, "app", "v1", b"layer", Authorization=alice.basic())
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))  # none stored yet
        with cache_serve(tmp_path, upstream.address) as cache:
            reply = request(cache, "GET", "/v2/app/manifests/v1")
            assert (reply.status, reply.error_code) == (502, "UNKNOWN")
            assert f"run `lazyctr login {upstream.address}`" in reply.json()["errors"][0]["message"]
        store_credentials(upstream.address, alice)
        with cache_serve(tmp_path, upstream.address) as cache:
            reply = request(cache, "GET", "/v2/app/manifests/v1")
            assert (reply.status, reply.body) == (200, manifest)
            layer = sha256(b"layer")
            assert request(cache, "GET", f"/v2/app/blobs/{layer}", Range="bytes=1-3").body == b"aye"
    finally:
        upstream.stop()


def test_the_cache_in_front_of_docker_registry(docker_registry: DockerRegistry, tmp_path: Path) -> None:
    """The CNCF registry (docker-registry) as the upstream: manifests, ranges and whole blobs."""
    (tmp_path / "layer").write_bytes(BLOB)
    config = b"{}"
    (tmp_path / "config").write_bytes(config)
    doc = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config),
            "size": 2,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(BLOB), "size": len(BLOB)}
        ],
    }
    manifest = json.dumps(doc).encode()

    async def push() -> None:
        async with RegistryClient(docker_registry.address) as client:
            for name in ("config", "layer"):
                data = (tmp_path / name).read_bytes()
                await client.push_blob("app", sha256(data), tmp_path / name)
            await client.put_manifest("app", "v1", manifest, MEDIA_MANIFEST)

    asyncio.run(push())
    digest = sha256(BLOB)
    with cache_serve(tmp_path, docker_registry.address) as cache:
        assert request(cache, "GET", "/v2/app/manifests/v1").body == manifest
        part = request(cache, "GET", f"/v2/app/blobs/{digest}", Range="bytes=10-19,5000000-5000009")
        assert part.status == 206 and BLOB[10:20] in part.body and BLOB[5000000:5000010] in part.body
        assert request(cache, "GET", f"/v2/app/blobs/{digest}").body == BLOB
        assert cached_blob(tmp_path, digest).read_bytes() == BLOB


@pytest.mark.privileged
def test_pull_and_lazy_mount_through_the_cache(published: Published, tmp_path: Path, mount: Mounter) -> None:
    with lazyctr_serve(tmp_path / "cache", "--proxy", published.registry.address) as cache:
        ref = f"{cache}/test/rich:1"
        nodes = [tmp_path / "node1", tmp_path / "node2"]
        for node in nodes:
            run_cli(node, "pull", ref)
            point = mount(node, ref, "--timeout", "5")
            assert (point / "data/big.bin").read_bytes() == BIG
            assert (point / "etc/small.txt").read_text() == "second version\n"
            run_cli(node, "umount", str(point))
        eager = tmp_path / "eager"
        run_cli(eager, "pull", "--eager", ref)
        point = mount(eager, ref)
        assert (point / "data/big.bin").read_bytes() == BIG
        run_cli(eager, "umount", str(point))
