"""Blob GET/HEAD/DELETE with byte ranges, against a real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.registry.conftest import Registry, sha256

DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def blob(registry: Registry) -> str:
    return registry.push_blob("test/blobs", DATA)


def test_ping(registry: Registry) -> None:
    reply = registry.request("GET", "/v2/")
    assert reply.status == 200
    assert reply.json() == {}
    assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def test_get_whole_blob_with_cache_headers(registry: Registry, blob: str) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{blob}")
    assert reply.status == 200
    assert reply.body == DATA
    assert reply.headers["Docker-Content-Digest"] == blob
    assert reply.headers["ETag"] == f'"{blob}"'
    assert reply.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert reply.headers["Accept-Ranges"] == "bytes"
    assert reply.headers["Content-Length"] == str(len(DATA))
    assert reply.headers["Content-Type"] == "application/octet-stream"


def test_head_blob(registry: Registry, blob: str) -> None:
    reply = registry.request("HEAD", f"/v2/test/blobs/blobs/{blob}")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["Content-Length"] == str(len(DATA))
    assert reply.headers["Docker-Content-Digest"] == blob


def test_if_none_match_the_digest_is_not_modified(registry: Registry, blob: str) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{blob}", headers={"If-None-Match": f'"{blob}"'})
    assert reply.status == 304


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=10-19", 10, 19), ("bytes=-100", len(DATA) - 100, len(DATA) - 1), ("bytes=10000-", 10000, 10239)],
)
def test_single_range(registry: Registry, blob: str, header: str, start: int, end: int) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{blob}", headers={"Range": header})
    assert reply.status == 206
    assert reply.body == DATA[start : end + 1]
    assert reply.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert reply.headers["Content-Length"] == str(end - start + 1)
    assert reply.headers["ETag"] == f'"{blob}"'


def test_range_past_the_end_is_clipped(registry: Registry, blob: str) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{blob}", headers={"Range": "bytes=10200-99999"})
    assert reply.status == 206
    assert reply.body == DATA[10200:]
    assert reply.headers["Content-Range"] == f"bytes 10200-10239/{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=99999-100000", "bytes=20000-,30000-"])
def test_unsatisfiable_range(registry: Registry, blob: str, header: str) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{blob}", headers={"Range": header})
    assert reply.status == 416
    assert reply.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=5-2", "bytes=0-1,9-3", "pages=1-2", "bytes=x-"])
def test_malformed_range_is_ignored(registry: Registry, blob: str, header: str) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{blob}", headers={"Range": header})
    assert reply.status == 200
    assert reply.body == DATA


def test_multiple_ranges_are_multipart(registry: Registry, blob: str) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{blob}", headers={"Range": "bytes=0-3,100-101,-2"})
    assert reply.status == 206
    content_type = reply.headers["Content-Type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    boundary = content_type.split("boundary=")[1]
    assert int(reply.headers["Content-Length"]) == len(reply.body)
    parts = reply.body.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    found = []
    for part in parts[1:-1]:
        head, _, body = part.partition(b"\r\n\r\n")
        assert body.endswith(b"\r\n")
        found.append((head.decode().split("Content-Range: ")[1], body[:-2]))
    assert found == [
        (f"bytes 0-3/{len(DATA)}", DATA[0:4]),
        (f"bytes 100-101/{len(DATA)}", DATA[100:102]),
        (f"bytes 10238-10239/{len(DATA)}", DATA[-2:]),
    ]


def test_blob_is_only_visible_where_it_was_pushed(registry: Registry, blob: str) -> None:
    reply = registry.request("GET", f"/v2/test/other/blobs/{blob}")
    assert reply.status == 404
    assert reply.error_code == "BLOB_UNKNOWN"
    assert registry.request("HEAD", f"/v2/test/other/blobs/{blob}").status == 404


def test_unknown_and_malformed_digests(registry: Registry) -> None:
    reply = registry.request("GET", f"/v2/test/blobs/blobs/{sha256(b'nothing')}")
    assert (reply.status, reply.error_code) == (404, "BLOB_UNKNOWN")
    reply = registry.request("GET", "/v2/test/blobs/blobs/sha256:1234")
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")


def test_delete_blob(registry: Registry, blob: str) -> None:
    registry.push_blob("test/keeps", DATA)
    assert registry.request("DELETE", f"/v2/test/blobs/blobs/{blob}").status == 202
    assert registry.request("GET", f"/v2/test/blobs/blobs/{blob}").status == 404
    reply = registry.request("DELETE", f"/v2/test/blobs/blobs/{blob}")
    assert (reply.status, reply.error_code) == (404, "BLOB_UNKNOWN")
    assert registry.request("GET", f"/v2/test/keeps/blobs/{blob}").body == DATA


def test_empty_blob(registry: Registry) -> None:
    digest = registry.push_blob("test/empty", b"")
    reply = registry.request("GET", f"/v2/test/empty/blobs/{digest}")
    assert (reply.status, reply.body) == (200, b"")
    assert (
        registry.request("GET", f"/v2/test/empty/blobs/{digest}", headers={"Range": "bytes=0-"}).status == 416
    )


def test_blob_file_is_stored_under_its_digest(registry: Registry, blob: str) -> None:
    path = Path(registry.root) / "blobs/sha256" / blob.split(":")[1]
    assert path.read_bytes() == DATA
    assert (Path(registry.root) / "repositories/test/blobs/_layers" / blob.split(":")[1]).exists()
