"""Manifests, tags, referrers, name validation and read-only mode, against a real server."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import Registry, sha256

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
NAME = "test/app"


def image(registry: Registry, name: str = NAME, layer: bytes = b"layer") -> dict[str, Any]:
    config = b'{"architecture":"amd64","os":"linux"}'
    return {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": registry.push_blob(name, config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": registry.push_blob(name, layer),
                "size": len(layer),
            }
        ],
    }


def encode(doc: dict[str, Any]) -> bytes:
    # Odd spacing on purpose: the registry must keep the bytes, not re-serialise them.
    return json.dumps(doc, indent=3).encode() + b"\n"


def test_put_and_get_by_tag_and_digest(registry: Registry) -> None:
    data = encode(image(registry))
    digest = sha256(data)
    reply = registry.push_manifest(NAME, "v1", data)
    assert reply.status == 201
    assert reply.headers["Location"] == f"/v2/{NAME}/manifests/{digest}"
    assert reply.headers["Docker-Content-Digest"] == digest
    for reference in ("v1", digest):
        got = registry.request("GET", f"/v2/{NAME}/manifests/{reference}")
        assert got.status == 200
        assert got.body == data
        assert got.headers["Content-Type"] == MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest
        head = registry.request("HEAD", f"/v2/{NAME}/manifests/{reference}")
        assert (head.status, head.body) == (200, b"")
        assert head.headers["Content-Length"] == str(len(data))
        assert head.headers["Docker-Content-Digest"] == digest


def test_put_by_digest(registry: Registry) -> None:
    data = encode(image(registry))
    reply = registry.push_manifest(NAME, sha256(data), data)
    assert reply.status == 201
    assert registry.request("GET", f"/v2/{NAME}/manifests/{sha256(data)}").body == data


def test_put_by_wrong_digest(registry: Registry) -> None:
    data = encode(image(registry))
    reply = registry.push_manifest(NAME, sha256(b"other"), data)
    assert (reply.status, reply.error_code) == (400, "DIGEST_INVALID")
    assert registry.request("GET", f"/v2/{NAME}/manifests/{sha256(data)}").status == 404


def test_manifest_with_unknown_blob(registry: Registry) -> None:
    doc = image(registry)
    doc["layers"][0]["digest"] = sha256(b"never pushed")
    reply = registry.push_manifest(NAME, "v1", doc)
    assert (reply.status, reply.error_code) == (404, "MANIFEST_BLOB_UNKNOWN")
    # A blob of another repository does not count either.
    doc = image(registry, "test/other", layer=b"only in test/other")
    reply = registry.push_manifest(NAME, "v1", doc)
    assert (reply.status, reply.error_code) == (404, "MANIFEST_BLOB_UNKNOWN")
    assert registry.request("GET", f"/v2/{NAME}/manifests/v1").status == 404


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"mediaType": 3}',
        b'{"config": "x"}',
        b'{"layers": [{"digest": "sha256:1"}]}',
    ],
)
def test_invalid_manifest(registry: Registry, body: bytes) -> None:
    reply = registry.push_manifest(NAME, "v1", body)
    assert (reply.status, reply.error_code) == (400, "MANIFEST_INVALID")


def test_content_type_must_match_media_type(registry: Registry) -> None:
    data = encode(image(registry))
    reply = registry.request("PUT", f"/v2/{NAME}/manifests/v1", data, {"Content-Type": INDEX})
    assert (reply.status, reply.error_code) == (400, "MANIFEST_INVALID")


def test_manifest_over_4_mib(registry: Registry) -> None:
    doc = image(registry)
    doc["annotations"] = {"padding": "x" * (4 << 20)}
    reply = registry.push_manifest(NAME, "v1", doc)
    assert (reply.status, reply.error_code) == (413, "SIZE_INVALID")
    assert registry.request("GET", f"/v2/{NAME}/manifests/v1").status == 404


def test_huge_manifest_is_refused_before_it_is_read(registry: Registry) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=10)
    try:
        conn.putrequest("PUT", f"/v2/{NAME}/manifests/v1")
        conn.putheader("Content-Length", str(1 << 30))
        conn.endheaders()
        reply = conn.getresponse()
        assert reply.status == 413
        assert json.loads(reply.read())["errors"][0]["code"] == "SIZE_INVALID"
    finally:
        conn.close()


def test_index_refers_to_manifests_of_the_repository(registry: Registry) -> None:
    data = encode(image(registry))
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [{"mediaType": MANIFEST, "digest": sha256(data), "size": len(data)}],
    }
    reply = registry.push_manifest(NAME, "multi", index)
    assert (reply.status, reply.error_code) == (404, "MANIFEST_BLOB_UNKNOWN")
    registry.push_manifest(NAME, sha256(data), data)
    assert registry.push_manifest(NAME, "multi", index).status == 201
    assert registry.request("GET", f"/v2/{NAME}/manifests/multi").headers["Content-Type"] == INDEX


def test_unknown_manifest(registry: Registry) -> None:
    for reference in ("nope", sha256(b"nope"), "-bad-tag"):
        reply = registry.request("GET", f"/v2/{NAME}/manifests/{reference}")
        assert (reply.status, reply.error_code) == (404, "MANIFEST_UNKNOWN"), reference


def test_delete_manifest_by_digest_and_by_tag(registry: Registry) -> None:
    data = encode(image(registry))
    registry.push_manifest(NAME, "v1", data)
    registry.push_manifest(NAME, "v2", data)
    assert registry.request("DELETE", f"/v2/{NAME}/manifests/v2").status == 202
    assert registry.request("GET", f"/v2/{NAME}/manifests/v2").status == 404
    assert registry.request("GET", f"/v2/{NAME}/manifests/v1").status == 200
    assert registry.request("DELETE", f"/v2/{NAME}/manifests/{sha256(data)}").status == 202
    for reference in ("v1", sha256(data)):
        reply = registry.request("GET", f"/v2/{NAME}/manifests/{reference}")
        assert (reply.status, reply.error_code) == (404, "MANIFEST_UNKNOWN")
    reply = registry.request("DELETE", f"/v2/{NAME}/manifests/{sha256(data)}")
    assert (reply.status, reply.error_code) == (404, "MANIFEST_UNKNOWN")


def test_subject_and_referrers(registry: Registry) -> None:
    data = encode(image(registry))
    subject = sha256(data)
    registry.push_manifest(NAME, "v1", data)
    empty = registry.push_blob(NAME, b"{}")
    referrer = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/vnd.lazyctr.profile.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [],
        "subject": {"mediaType": MANIFEST, "digest": subject, "size": len(data)},
        "annotations": {"org.example": "yes"},
    }
    reply = registry.push_manifest(NAME, sha256(encode(referrer)), encode(referrer))
    assert reply.status == 201
    assert reply.headers["OCI-Subject"] == subject
    listing = registry.request("GET", f"/v2/{NAME}/referrers/{subject}")
    assert listing.status == 200
    assert listing.headers["Content-Type"] == INDEX
    assert listing.json()["manifests"] == [
        {
            "mediaType": MANIFEST,
            "digest": sha256(encode(referrer)),
            "size": len(encode(referrer)),
            "artifactType": "application/vnd.lazyctr.profile.v1+json",
            "annotations": {"org.example": "yes"},
        }
    ]
    filtered = registry.request("GET", f"/v2/{NAME}/referrers/{subject}?artifactType=application/other")
    assert filtered.json()["manifests"] == []
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert registry.request("GET", f"/v2/{NAME}/referrers/{sha256(b'x')}").json()["manifests"] == []


def test_tag_list_with_paging(registry: Registry) -> None:
    data = encode(image(registry))
    for tag in ("c", "a", "b", "d"):
        registry.push_manifest(NAME, tag, data)
    reply = registry.request("GET", f"/v2/{NAME}/tags/list")
    assert reply.json() == {"name": NAME, "tags": ["a", "b", "c", "d"]}
    assert "Link" not in reply.headers
    reply = registry.request("GET", f"/v2/{NAME}/tags/list?n=2")
    assert reply.json()["tags"] == ["a", "b"]
    assert reply.headers["Link"] == f'</v2/{NAME}/tags/list?n=2&last=b>; rel="next"'
    reply = registry.request("GET", f"/v2/{NAME}/tags/list?n=2&last=b")
    assert reply.json()["tags"] == ["c", "d"]
    assert "Link" not in reply.headers
    assert registry.request("GET", f"/v2/{NAME}/tags/list?n=0").json()["tags"] == []
    assert registry.request("GET", f"/v2/{NAME}/tags/list?last=d").json()["tags"] == []


def test_tags_of_unknown_repository(registry: Registry) -> None:
    reply = registry.request("GET", "/v2/test/nothing/tags/list")
    assert (reply.status, reply.error_code) == (404, "NAME_UNKNOWN")


@pytest.mark.parametrize("name", ["Test/App", "test/../app", "..", "test/./app", "test//app", "test/app-"])
def test_invalid_names(registry: Registry, name: str) -> None:
    for method, path in [
        ("GET", f"/v2/{name}/tags/list"),
        ("GET", f"/v2/{name}/manifests/latest"),
        ("PUT", f"/v2/{name}/manifests/latest"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("GET", f"/v2/{name}/blobs/{sha256(b'')}"),
    ]:
        reply = registry.request(method, path, b"{}")
        assert (reply.status, reply.error_code) == (400, "NAME_INVALID"), (method, path)
    assert not any(Path(registry.root).rglob("app"))


def test_invalid_tag(registry: Registry) -> None:
    reply = registry.push_manifest(NAME, "-x", encode(image(registry)))
    assert (reply.status, reply.error_code) == (400, "MANIFEST_INVALID")


def test_read_only(tmp_path: Path) -> None:
    writable = Registry(tmp_path / "store")
    try:
        digest = writable.push_blob(NAME, b"content")
    finally:
        writable.stop()
    server = Registry(tmp_path / "store", read_only=True)
    try:
        assert server.request("GET", f"/v2/{NAME}/blobs/{digest}").body == b"content"
        for method, path in [
            ("POST", f"/v2/{NAME}/blobs/uploads/"),
            ("PUT", f"/v2/{NAME}/manifests/latest"),
            ("DELETE", f"/v2/{NAME}/blobs/{digest}"),
        ]:
            reply = server.request(method, path, b"{}")
            assert (reply.status, reply.error_code) == (403, "DENIED")
    finally:
        server.stop()
