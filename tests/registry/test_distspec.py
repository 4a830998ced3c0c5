"""The corners of the OCI distribution spec, through the real server on each storage driver
(filesystem, S3): upload cancel, malformed `Range` headers, mount without `from`."""

from __future__ import annotations

import hashlib
import json

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
    created = (reply.status, reply.headers["Location"], reply.headers["Docker-Content-Digest"])
    assert created == (201, f"/v2/other/target/blobs/{digest}", digest)
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


# sha512 digests, and algorithms nobody registered.


def sha512(data: bytes) -> str:
    return "sha512:" + hashlib.sha512(data).hexdigest()


def test_sha512_blobs_monolithic_chunked_and_streamed(served: Registry, store: BlobStore) -> None:
    monolithic, chunked, streamed = DATA, DATA[::-1], DATA[:3000]
    reply = served.request("POST", f"/v2/{REPO}/blobs/uploads/?digest={sha512(monolithic)}", monolithic)
    assert reply.status == 201 and reply.headers["Docker-Content-Digest"] == sha512(monolithic)
    assert reply.headers["Location"] == f"/v2/{REPO}/blobs/{sha512(monolithic)}"

    location = started_upload(served)
    for start in (0, 5000):
        piece = chunked[start : start + 5000]
        headers = {"Content-Range": f"{start}-{start + len(piece) - 1}"}
        location = served.request("PATCH", location, piece, headers).headers["Location"]
    assert served.request("PUT", f"{location}?digest={sha512(chunked)}", chunked[10000:]).status == 201

    location = started_upload(served)
    location = served.request("PATCH", location, streamed).headers["Location"]  # no Content-Range
    assert served.request("PUT", f"{location}?digest={sha512(streamed)}").status == 201

    for data in (monolithic, chunked, streamed):
        blob = f"/v2/{REPO}/blobs/{sha512(data)}"
        got = served.request("GET", blob)
        assert (got.status, got.body, got.headers["Docker-Content-Digest"]) == (200, data, sha512(data))
        head = served.request("HEAD", blob)
        assert (head.status, head.headers["Content-Length"]) == (200, str(len(data)))
        ranged = served.request("GET", blob, headers={"Range": "bytes=100-199"})
        assert (ranged.status, ranged.body) == (206, data[100:200])
    assert stored_files(store.driver, "blobs/sha512/") == sorted(
        f"blobs/sha512/{sha512(data).partition(':')[2]}" for data in (monolithic, chunked, streamed)
    )
    assert stored_files(store.driver, "uploads/") == []

    assert served.request("DELETE", f"/v2/{REPO}/blobs/{sha512(streamed)}").status == 202
    for method in ("GET", "HEAD", "DELETE"):
        reply = served.request(method, f"/v2/{REPO}/blobs/{sha512(streamed)}")
        assert reply.status == 404, method
        if method != "HEAD":
            assert reply.error_code == "BLOB_UNKNOWN"
    mounted = served.request("POST", f"/v2/team/copy/blobs/uploads/?mount={sha512(chunked)}&from={REPO}")
    assert mounted.status == 201
    assert served.request("GET", f"/v2/team/copy/blobs/{sha512(chunked)}").body == chunked


def test_a_sha512_upload_that_does_not_match_is_refused(served: Registry, store: BlobStore) -> None:
    reply = served.request("POST", f"/v2/{REPO}/blobs/uploads/?digest={sha512(b'other')}", DATA)
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")
    location = started_upload(served)
    reply = served.request("PUT", f"{location}?digest={sha512(b'other')}", DATA)
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")
    assert stored_files(store.driver, "blobs/sha512/") == []
    assert stored_files(store.driver, "uploads/") == []


def sha512_image(served: Registry) -> tuple[dict[str, object], bytes]:
    config, layer = b'{"architecture":"amd64","os":"linux"}', DATA
    for data in (config, layer):
        assert served.request("POST", f"/v2/{REPO}/blobs/uploads/?digest={sha512(data)}", data).status == 201
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha512(config),
            "size": 37,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha512(layer),
                "size": len(layer),
            }
        ],
    }
    return doc, json.dumps(doc).encode()


def test_a_manifest_pushed_by_sha512_digest_is_kept_under_it(served: Registry) -> None:
    _, data = sha512_image(served)
    digest = sha512(data)
    reply = served.push_manifest(REPO, f"{digest}?tag=v1&tag=stable", data)
    assert reply.status == 201, reply
    assert reply.headers["Docker-Content-Digest"] == digest
    assert reply.headers["Location"] == f"/v2/{REPO}/manifests/{digest}"
    assert reply.headers["OCI-Tag"] == "v1,stable"
    assert served.request("GET", f"/v2/{REPO}/tags/list").json()["tags"] == ["stable", "v1"]
    for reference in (digest, "v1", "stable"):
        for method in ("GET", "HEAD"):
            got = served.request(method, f"/v2/{REPO}/manifests/{reference}")
            assert (got.status, got.headers["Docker-Content-Digest"]) == (200, digest), (method, reference)
            assert got.body == (data if method == "GET" else b"")
    # Pushed by tag, the same bytes are named by their sha256, as every registry does.
    assert served.push_manifest(REPO, "by-tag", data).headers["Docker-Content-Digest"] == sha256(data)
    assert served.request("DELETE", f"/v2/{REPO}/manifests/{digest}").status == 202
    for reference in (digest, "v1"):
        reply = served.request("GET", f"/v2/{REPO}/manifests/{reference}")
        assert (reply.status, reply.error_code) == (404, "MANIFEST_UNKNOWN")
    assert served.request("GET", f"/v2/{REPO}/tags/list").json()["tags"] == ["by-tag"]


def test_a_manifest_that_does_not_match_its_sha512_digest_is_refused(served: Registry) -> None:
    _, data = sha512_image(served)
    reply = served.push_manifest(REPO, sha512(data + b" "), data)
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")
    reply = served.push_manifest(REPO, "v1?tag=v2", data)  # ?tag= is for a push by digest
    assert (reply.status, reply.error_code) == (400, "MANIFEST_INVALID")
    reply = served.push_manifest(REPO, f"{sha512(data)}?tag=-bad", data)
    assert (reply.status, reply.error_code) == (400, "MANIFEST_INVALID")
    assert served.request("HEAD", f"/v2/{REPO}/manifests/{sha512(data)}").status == 404


def test_referrers_of_a_sha512_subject(served: Registry) -> None:
    _, data = sha512_image(served)
    subject = sha512(data)
    assert served.push_manifest(REPO, subject, data).status == 201
    empty = served.push_blob(REPO, b"{}")
    artifact = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [],
        "subject": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": subject,
            "size": len(data),
        },
    }
    artifact_data = json.dumps(artifact).encode()
    reply = served.push_manifest(REPO, sha512(artifact_data), artifact_data)
    assert (reply.status, reply.headers["OCI-Subject"]) == (201, subject)
    (listed,) = served.request("GET", f"/v2/{REPO}/referrers/{subject}").json()["manifests"]
    assert (listed["digest"], listed["artifactType"]) == (
        sha512(artifact_data),
        "application/vnd.example.sbom",
    )
    assert served.request("GET", f"/v2/{REPO}/referrers/{sha512(b'none')}").json()["manifests"] == []


@pytest.mark.parametrize(
    "digest",
    [
        "md5:" + "0" * 32,
        "sha1:" + "0" * 40,
        "sha384:" + "0" * 96,
        "sha512:" + "0" * 64,
        "sha512:" + "A" * 128,
    ],
)
def test_unknown_algorithms_and_malformed_sha512_are_digest_invalid(served: Registry, digest: str) -> None:
    requests = [
        ("GET", f"/v2/{REPO}/blobs/{digest}"),
        ("DELETE", f"/v2/{REPO}/blobs/{digest}"),
        ("POST", f"/v2/{REPO}/blobs/uploads/?digest={digest}"),
        ("POST", f"/v2/{REPO}/blobs/uploads/?mount={digest}"),
        ("PUT", f"/v2/{REPO}/manifests/{digest}"),
        ("GET", f"/v2/{REPO}/referrers/{digest}"),
    ]
    if not digest.startswith("sha512:"):  # a malformed sha512 names no manifest: 404, as before
        requests.append(("GET", f"/v2/{REPO}/manifests/{digest}"))
    for method, path in requests:
        reply = served.request(method, path, b"{}")
        assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID"), (method, path)
    reply = served.request("HEAD", f"/v2/{REPO}/blobs/{digest}")
    assert reply.status == 400
