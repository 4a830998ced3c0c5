"""What only the S3 driver does: byte ranges as ranged S3 GETs, and the local cache of whole blobs.

The behaviours every driver shares (uploads, mounts, manifests, tags, expiry, the whole server)
run on S3 too, in test_repository.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.blobcache import BlobCache
from registry.s3 import S3Driver
from registry.storage import BlobStore
from storage.digest import Digest
from tests.registry.conftest import Registry

DATA = b"0123456789abcdef" * 1000


def s3_server(driver: S3Driver, tmp_path: Path, cache_size: int) -> tuple[Registry, BlobCache]:
    """A server on the driver's bucket with its own cache of `cache_size` bytes."""
    cache = BlobCache(tmp_path / f"cache-{cache_size}", cache_size)
    return Registry(tmp_path / "unused-root", backend=BlobStore(driver, cache)), cache


def cached(cache: BlobCache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir())


def test_ranges_are_ranged_s3_gets_and_never_fill_the_cache(s3_driver: S3Driver, tmp_path: Path) -> None:
    registry, cache = s3_server(s3_driver, tmp_path, 1 << 30)
    try:
        digest = registry.push_blob("team/app", DATA)
        path = f"/v2/team/app/blobs/{digest}"
        ranged = registry.request("GET", path, headers={"Range": "bytes=1000-1099"})
        assert (ranged.status, ranged.body) == (206, DATA[1000:1100])
        assert ranged.headers["Content-Range"] == f"bytes 1000-1099/{len(DATA)}"
        assert ranged.headers["Accept-Ranges"] == "bytes"
        multi = registry.request("GET", path, headers={"Range": "bytes=0-9,-5"})
        assert multi.status == 206 and multi.headers["Content-Type"].startswith("multipart/byteranges")
        assert DATA[0:10] in multi.body and DATA[-5:] in multi.body
        assert int(multi.headers["Content-Length"]) == len(multi.body)
        beyond = registry.request("GET", path, headers={"Range": f"bytes={len(DATA)}-"})
        assert (beyond.status, beyond.headers["Content-Range"]) == (416, f"bytes */{len(DATA)}")
        head = registry.request("HEAD", path, headers={"Range": "bytes=0-9"})
        assert (head.status, head.headers["Content-Length"]) == (206, "10")
        assert cached(cache) == []  # no range fetched the whole blob
        assert registry.request("GET", path).body == DATA
        assert cached(cache) == [digest.split(":")[1]]
        ranged = registry.request("GET", path, headers={"Range": "bytes=10-19"})  # now from the cache
        assert (ranged.status, ranged.body) == (206, DATA[10:20])
        multi = registry.request("GET", path, headers={"Range": "bytes=0-9,-5"})
        assert multi.status == 206 and DATA[0:10] in multi.body and DATA[-5:] in multi.body
    finally:
        registry.stop()


def test_cache_drops_the_least_recently_used_blobs(s3_driver: S3Driver, tmp_path: Path) -> None:
    blobs = [bytes([i]) * 10_000 for i in range(3)]
    registry, cache = s3_server(s3_driver, tmp_path, 25_000)  # room for two
    try:
        a, b, c = (registry.push_blob("team/app", blob).split(":")[1] for blob in blobs)
        for digest in (a, b, a, c):
            reply = registry.request("GET", f"/v2/team/app/blobs/sha256:{digest}")
            assert reply.status == 200 and len(reply.body) == 10_000
        assert cached(cache) == sorted([a, c])
        # A restart keeps the cache and its order (a was used before c).
        again = BlobCache(cache.directory, 25_000)
        BlobStore(s3_driver, again).locate_blob("team/app", Digest(f"sha256:{b}"), whole=True)
        assert cached(again) == sorted([b, c])
    finally:
        registry.stop()


@pytest.mark.parametrize("cache_size", [0, 5_000])
def test_blobs_too_large_for_the_cache_are_streamed(
    s3_driver: S3Driver, tmp_path: Path, cache_size: int
) -> None:
    registry, cache = s3_server(s3_driver, tmp_path, cache_size)
    try:
        digest = registry.push_blob("team/app", DATA)
        reply = registry.request("GET", f"/v2/team/app/blobs/{digest}")
        assert (reply.status, reply.body, reply.headers["Content-Length"]) == (200, DATA, str(len(DATA)))
        assert reply.headers["Docker-Content-Digest"] == digest
        assert cached(cache) == []
        empty = registry.push_blob("team/app", b"")
        assert registry.request("GET", f"/v2/team/app/blobs/{empty}").body == b""
    finally:
        registry.stop()
