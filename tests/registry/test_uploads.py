"""Blob uploads: monolithic, POST+PUT, chunked PATCH, status, cancel, cross-repository mount."""

from __future__ import annotations

from pathlib import Path

from tests.registry.conftest import Registry, sha256

DATA = b"0123456789abcdef" * 1000


def start(registry: Registry, name: str = "test/up") -> str:
    reply = registry.request("POST", f"/v2/{name}/blobs/uploads/")
    assert reply.status == 202
    assert reply.headers["Range"] == "0-0"
    upload_id = reply.headers["Docker-Upload-UUID"]
    assert reply.headers["Location"] == f"/v2/{name}/blobs/uploads/{upload_id}"
    return reply.headers["Location"]


def test_monolithic_upload(registry: Registry) -> None:
    digest = sha256(DATA)
    reply = registry.request("POST", f"/v2/test/up/blobs/uploads/?digest={digest}", DATA)
    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/test/up/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert registry.request("GET", f"/v2/test/up/blobs/{digest}").body == DATA


def test_monolithic_upload_with_wrong_digest(registry: Registry) -> None:
    digest = sha256(b"something else")
    reply = registry.request("POST", f"/v2/test/up/blobs/uploads/?digest={digest}", DATA)
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")
    assert registry.request("HEAD", f"/v2/test/up/blobs/{digest}").status == 404
    assert list((registry.root / "uploads").iterdir()) == []
    assert list((registry.root / "blobs/sha256").iterdir()) == []


def test_post_then_put(registry: Registry) -> None:
    location = start(registry)
    digest = sha256(DATA)
    reply = registry.request("PUT", f"{location}?digest={digest}", DATA)
    assert reply.status == 201
    assert reply.headers["Docker-Content-Digest"] == digest
    assert registry.request("GET", f"/v2/test/up/blobs/{digest}").body == DATA
    reply = registry.request("GET", location)
    assert (reply.status, reply.error_code) == (404, "BLOB_UPLOAD_UNKNOWN")


def test_chunked_upload_in_order(registry: Registry) -> None:
    location = start(registry)
    upload_id = location.rsplit("/", 1)[1]
    reply = registry.request("PATCH", location, DATA[:5000], {"Content-Range": "0-4999"})
    assert reply.status == 202
    assert reply.headers["Range"] == "0-4999"
    assert reply.headers["Docker-Upload-UUID"] == upload_id
    location = reply.headers["Location"]
    status = registry.request("GET", location)
    assert status.status == 204
    assert status.headers["Range"] == "0-4999"
    # A streamed chunk (no Content-Range) continues where the upload stands.
    reply = registry.request("PATCH", location, DATA[5000:12000])
    assert (reply.status, reply.headers["Range"]) == (202, "0-11999")
    reply = registry.request(
        "PUT", f"{location}?digest={sha256(DATA)}", DATA[12000:], {"Content-Range": f"12000-{len(DATA) - 1}"}
    )
    assert reply.status == 201
    assert registry.request("GET", f"/v2/test/up/blobs/{sha256(DATA)}").body == DATA


def test_chunk_out_of_order_is_refused(registry: Registry) -> None:
    location = start(registry)
    registry.request("PATCH", location, DATA[:100], {"Content-Range": "0-99"})
    for bad in ("200-299", "50-149"):
        reply = registry.request("PATCH", location, DATA[:100], {"Content-Range": bad})
        assert (reply.status, reply.error_code) == (416, "BLOB_UPLOAD_INVALID")
    assert registry.request("GET", location).headers["Range"] == "0-99"
    reply = registry.request("PATCH", location, DATA[:100], {"Content-Range": "oops"})
    assert (reply.status, reply.error_code) == (416, "BLOB_UPLOAD_INVALID")
    reply = registry.request("PATCH", location, DATA[100:200], {"Content-Range": "100-199"})
    assert (reply.status, reply.headers["Range"]) == (202, "0-199")


def test_put_with_wrong_digest_removes_the_upload(registry: Registry) -> None:
    location = start(registry)
    registry.request("PATCH", location, DATA, {"Content-Range": f"0-{len(DATA) - 1}"})
    wrong = sha256(b"not it")
    reply = registry.request("PUT", f"{location}?digest={wrong}")
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")
    assert registry.request("GET", location).status == 404
    assert registry.request("HEAD", f"/v2/test/up/blobs/{wrong}").status == 404
    assert registry.request("HEAD", f"/v2/test/up/blobs/{sha256(DATA)}").status == 404


def test_put_without_digest(registry: Registry) -> None:
    location = start(registry)
    reply = registry.request("PUT", location, DATA)
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")


def test_cancel_upload(registry: Registry) -> None:
    location = start(registry)
    registry.request("PATCH", location, DATA)
    assert registry.request("DELETE", location).status == 204
    reply = registry.request("GET", location)
    assert (reply.status, reply.error_code) == (404, "BLOB_UPLOAD_UNKNOWN")
    assert list(Path(registry.root / "uploads").iterdir()) == []


def test_unknown_uploads(registry: Registry) -> None:
    for upload_id in ("0" * 32, "..", "nope"):
        for method in ("GET", "PATCH", "PUT", "DELETE"):
            reply = registry.request(method, f"/v2/test/up/blobs/uploads/{upload_id}?digest={sha256(b'')}")
            assert (reply.status, reply.error_code) == (404, "BLOB_UPLOAD_UNKNOWN"), (method, upload_id)
    # Slashes never reach the store: no route matches.
    assert registry.request("GET", "/v2/test/up/blobs/uploads/../../etc").status == 404


def test_upload_belongs_to_its_repository(registry: Registry) -> None:
    location = start(registry, "test/one")
    reply = registry.request("GET", location.replace("test/one", "test/two"))
    assert (reply.status, reply.error_code) == (404, "BLOB_UPLOAD_UNKNOWN")


def test_cross_repository_mount(registry: Registry) -> None:
    digest = registry.push_blob("test/source", DATA)
    reply = registry.request("POST", f"/v2/test/target/blobs/uploads/?mount={digest}&from=test/source")
    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/test/target/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert registry.request("GET", f"/v2/test/target/blobs/{digest}").body == DATA


def test_mount_from_a_repository_without_the_blob_starts_an_upload(registry: Registry) -> None:
    digest = registry.push_blob("test/source", DATA)
    reply = registry.request("POST", f"/v2/test/target/blobs/uploads/?mount={digest}&from=test/elsewhere")
    assert reply.status == 202
    assert "/v2/test/target/blobs/uploads/" in reply.headers["Location"]
    assert registry.request("HEAD", f"/v2/test/target/blobs/{digest}").status == 404
