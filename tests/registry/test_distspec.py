"""The corners of the OCI distribution spec, through the real server on each storage driver
(filesystem, S3): upload cancel, malformed `Range` headers, mount without `from`."""

from __future__ import annotations

import pytest

from registry.storage import BlobStore
from tests.registry.conftest import Registry, sha256, stored_files

DATA = bytes(range(256)) * 40
REPO = "team/app"


def started_upload(registry: Registry, name: str = REPO) -> str:
    reply = registry.request("POST", f"/v2/{name}/blobs/uploads/")
    assert reply.status == 202, reply
    return str(reply.headers["Location"])


# Upload cancel.


def test_cancelled_upload_is_gone(served: Registry, store: BlobStore) -> None:
    location = started_upload(served)
    assert served.request("PATCH", location, DATA[:1000]).status == 202
    assert stored_files(store.driver, "uploads/") != []
    reply = served.request("DELETE", location)
    assert (reply.status, reply.body) == (204, b"")
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        reply = served.request(method, f"{location}?digest={sha256(DATA[:1000])}", DATA[1000:])
        assert (reply.status, reply.error_code) == (404, "BLOB_UPLOAD_UNKNOWN"), method
    assert stored_files(store.driver, "uploads/") == []
    assert served.request("HEAD", f"/v2/{REPO}/blobs/{sha256(DATA[:1000])}").status == 404


def test_cancel_belongs_to_the_uploads_repository(served: Registry) -> None:
    location = started_upload(served)
    reply = served.request("DELETE", location.replace(REPO, "team/other"))
    assert (reply.status, reply.error_code) == (404, "BLOB_UPLOAD_UNKNOWN")
    assert served.request("GET", location).status == 204  # still there


# Malformed and unsatisfiable ranges: RFC 9110 14.2, the same on every driver.


@pytest.mark.parametrize(
    "header",
    [
        "bytes=500-0",
        "bytes=abc",
        "bytes=",
        "bytes=5-3,1-2",
        "bytes=1-2,x",
        "items=0-1",
        "bytes 0-1",
        "bytes=--1",
    ],
)
def test_a_malformed_range_is_ignored(served: Registry, header: str) -> None:
    digest = served.push_blob(REPO, DATA)
    for method in ("GET", "HEAD"):
        reply = served.request(method, f"/v2/{REPO}/blobs/{digest}", headers={"Range": header})
        assert reply.status == 200, (method, header)
        assert "Content-Range" not in reply.headers
        assert reply.headers["Content-Length"] == str(len(DATA))
        assert reply.body == (DATA if method == "GET" else b"")


@pytest.mark.parametrize(
    "header", [f"bytes={len(DATA)}-", f"bytes={len(DATA) + 5}-{len(DATA) + 9}", "bytes=-0"]
)
def test_an_unsatisfiable_range_is_416(served: Registry, header: str) -> None:
    digest = served.push_blob(REPO, DATA)
    for method in ("GET", "HEAD"):
        reply = served.request(method, f"/v2/{REPO}/blobs/{digest}", headers={"Range": header})
        assert reply.status == 416, (method, header)
        assert reply.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_a_range_past_the_end_is_cut_to_the_blob(served: Registry) -> None:
    digest = served.push_blob(REPO, DATA)
    reply = served.request(
        "GET", f"/v2/{REPO}/blobs/{digest}", headers={"Range": f"bytes=10-{len(DATA) * 2}"}
    )
    assert (reply.status, reply.body) == (206, DATA[10:])
    assert reply.headers["Content-Range"] == f"bytes 10-{len(DATA) - 1}/{len(DATA)}"


# Mount without `from`.


def test_mount_without_from_finds_a_repository_holding_the_blob(served: Registry, store: BlobStore) -> None:
    served.push_blob("team", b"a blob of a parent repository")
    digest = served.push_blob("team/deep/source", DATA)
    reply = served.request("POST", f"/v2/other/target/blobs/uploads/?mount={digest}")
    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/other/target/blobs/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    assert served.request("GET", f"/v2/other/target/blobs/{digest}").body == DATA
    assert stored_files(store.driver, "uploads/") == []
    assert sorted(store.repositories()) == ["other/target", "team", "team/deep/source"]


def test_mount_without_from_of_a_blob_nobody_holds_starts_an_upload(
    served: Registry, store: BlobStore
) -> None:
    digest = served.push_blob("team/source", DATA)
    assert (
        served.request("DELETE", f"/v2/team/source/blobs/{digest}").status == 202
    )  # the file stays: unlinked
    for unknown in (digest, sha256(b"never pushed")):
        reply = served.request("POST", f"/v2/team/target/blobs/uploads/?mount={unknown}")
        assert reply.status == 202 and "/v2/team/target/blobs/uploads/" in reply.headers["Location"]
        assert served.request("HEAD", f"/v2/team/target/blobs/{unknown}").status == 404


def test_mount_of_a_malformed_digest_is_refused(served: Registry) -> None:
    reply = served.request("POST", "/v2/team/target/blobs/uploads/?mount=sha256:nothex")
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")
