"""Faults a client can cause: bodies cut off half way, and many clients pushing the same blob at once.

Malformed and oversized manifests, unknown blobs, digest mismatches, bad Content-Range, bad names
and abandoned uploads are tested with their routes (test_manifests, test_uploads, test_expiry).
Whatever happens here, a blob is visible only whole and verified, and the server keeps serving.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.registry.conftest import Registry, Reply, sha256

NAME = "test/faults"
DATA = os.urandom(4 << 20)
SPEC_CODES = {"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "SIZE_INVALID"}


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def upload_sizes(registry: Registry) -> list[int]:
    return [p.stat().st_size for p in (registry.root / "uploads").glob("*/data")]


def blob_files(registry: Registry) -> list[Path]:
    return sorted(p for p in (registry.root / "blobs").rglob("*") if p.is_file())


def send_cut_off(
    registry: Registry,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    arrived: Callable[[], bool] | None = None,
) -> None:
    """Announce `body` with its Content-Length, send only its first half and close the socket.

    `arrived` tells when the server has taken in that half, so the cut comes mid-body, not before it.
    """
    head = f"{method} {path} HTTP/1.1\r\nHost: {registry.address}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", registry.port), timeout=10) as s:
        s.sendall(head.encode() + body[: len(body) // 2])
        if arrived is not None:
            wait_for(arrived, "the first half of the body to arrive")
        else:
            time.sleep(0.2)


def assert_serving(registry: Registry) -> None:
    assert registry.request("GET", "/v2/").status == 200


def start(registry: Registry) -> str:
    reply = registry.request("POST", f"/v2/{NAME}/blobs/uploads/")
    assert reply.status == 202, reply
    return str(reply.headers["Location"])


def test_cut_off_monolithic_post_leaves_no_blob(registry: Registry) -> None:
    half = len(DATA) // 2
    send_cut_off(
        registry,
        "POST",
        f"/v2/{NAME}/blobs/uploads/?digest={sha256(DATA)}",
        DATA,
        arrived=lambda: upload_sizes(registry) == [half],
    )
    wait_for(lambda: not list((registry.root / "uploads").iterdir()), "the cut-off upload to be removed")
    assert registry.request("HEAD", f"/v2/{NAME}/blobs/{sha256(DATA)}").status == 404
    assert blob_files(registry) == []
    assert_serving(registry)
    assert registry.push_blob(NAME, DATA) == sha256(DATA)


def cut_off_the_rest(registry: Registry, method: str, query: str = "") -> str:
    """Start an upload with DATA's first 1000 bytes, then cut off a `method` request sending the rest.

    Returns the upload's location, once the server took the cut-off body back.
    """
    location = start(registry)
    assert registry.request("PATCH", location, DATA[:1000], {"Content-Range": "0-999"}).status == 202
    rest = DATA[1000:]
    send_cut_off(
        registry,
        method,
        location + query,
        rest,
        {"Content-Range": f"1000-{len(DATA) - 1}"},
        arrived=lambda: upload_sizes(registry) == [1000 + len(rest) // 2],
    )
    # A request takes effect whole or not at all: the upload stands where it stood before it.
    wait_for(lambda: upload_sizes(registry) == [1000], f"the cut-off {method} body to be undone")
    return location


def test_cut_off_patch_is_not_applied(registry: Registry) -> None:
    location = cut_off_the_rest(registry, "PATCH")
    chunk = DATA[1000:]
    assert registry.request("GET", location).headers["Range"] == "0-999"
    assert registry.request("HEAD", f"/v2/{NAME}/blobs/{sha256(DATA)}").status == 404
    assert_serving(registry)
    reply = registry.request("PATCH", location, chunk, {"Content-Range": f"1000-{len(DATA) - 1}"})
    assert reply.status == 202
    assert registry.request("PUT", f"{location}?digest={sha256(DATA)}").status == 201
    assert registry.request("GET", f"/v2/{NAME}/blobs/{sha256(DATA)}").body == DATA


def test_cut_off_final_put_does_not_finish_the_upload(registry: Registry) -> None:
    location = cut_off_the_rest(registry, "PUT", f"?digest={sha256(DATA)}")
    rest = DATA[1000:]
    assert registry.request("HEAD", f"/v2/{NAME}/blobs/{sha256(DATA)}").status == 404
    assert blob_files(registry) == []
    assert_serving(registry)
    reply = registry.request(
        "PUT", f"{location}?digest={sha256(DATA)}", rest, {"Content-Range": f"1000-{len(DATA) - 1}"}
    )
    assert reply.status == 201
    assert registry.request("GET", f"/v2/{NAME}/blobs/{sha256(DATA)}").body == DATA
    assert list((registry.root / "uploads").iterdir()) == []


def test_cut_off_manifest_put_stores_nothing(registry: Registry) -> None:
    config = registry.push_blob(NAME, b"{}")
    layer = registry.push_blob(NAME, b"layer")
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 5}],
        "annotations": {"padding": "x" * 100_000},
    }
    data = json.dumps(doc).encode()
    before = blob_files(registry)
    send_cut_off(
        registry,
        "PUT",
        f"/v2/{NAME}/manifests/latest",
        data,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert_serving(registry)
    assert registry.request("GET", f"/v2/{NAME}/manifests/latest").error_code == "MANIFEST_UNKNOWN"
    assert registry.request("GET", f"/v2/{NAME}/manifests/{sha256(data)}").error_code == "MANIFEST_UNKNOWN"
    assert blob_files(registry) == before
    assert registry.push_manifest(NAME, "latest", data).status == 201


def push_monolithic(registry: Registry) -> Reply:
    return registry.request("POST", f"/v2/{NAME}/blobs/uploads/?digest={sha256(DATA)}", DATA, timeout=60)


def push_chunked(registry: Registry) -> Reply:
    reply = registry.request("POST", f"/v2/{NAME}/blobs/uploads/", timeout=60)
    if reply.status != 202:
        return reply
    location = reply.headers["Location"]
    step = 1 << 20
    for start in range(0, len(DATA), step):
        chunk = DATA[start : start + step]
        headers = {"Content-Range": f"{start}-{start + len(chunk) - 1}"}
        reply = registry.request("PATCH", location, chunk, headers, timeout=60)
        if reply.status != 202:
            return reply
    return registry.request("PUT", f"{location}?digest={sha256(DATA)}", timeout=60)


@pytest.mark.parametrize(("push", "clients"), [(push_monolithic, 20), (push_chunked, 10)])
def test_many_clients_push_the_same_blob_at_once(
    registry: Registry, push: Callable[[Registry], Reply], clients: int
) -> None:
    barrier = threading.Barrier(clients)
    replies: list[Reply] = []
    failures: list[BaseException] = []

    def client() -> None:
        try:
            barrier.wait()
            replies.append(push(registry))
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert len(replies) == clients
    for reply in replies:
        assert reply.status == 201 or reply.error_code in SPEC_CODES, reply
    assert any(reply.status == 201 for reply in replies)

    assert blob_files(registry) == [registry.root / "blobs" / "sha256" / sha256(DATA).split(":")[1]]
    assert blob_files(registry)[0].read_bytes() == DATA
    assert list((registry.root / "uploads").iterdir()) == []
    assert registry.request("GET", f"/v2/{NAME}/blobs/{sha256(DATA)}").body == DATA
