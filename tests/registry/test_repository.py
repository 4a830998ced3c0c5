"""The repository logic on each storage driver (filesystem, S3): blobs only by a verified upload,
mounts, manifests and tags, expiry, deletes; and the whole HTTP server running on each driver."""

from __future__ import annotations

import json
import time

import pytest

from registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
)
from registry.storage import BlobStore
from storage.digest import Digest
from tests.registry.conftest import Registry, sha256, stored_files

DATA = b"0123456789abcdef" * 1000


def push(store: BlobStore, name: str, *chunks: bytes) -> Digest:
    upload = store.start_upload(name)
    offset = 0
    for chunk in chunks:
        f = store.open_upload(name, upload, offset)
        f.write(chunk)
        f.close()
        offset += len(chunk)
    digest = Digest(sha256(b"".join(chunks)))
    assert store.finish_upload(name, upload, digest) == offset
    return digest


def read_whole(store: BlobStore, name: str, digest: Digest) -> bytes:
    return b"".join(store.read_blob(name, digest, 0, store.blob_size(name, digest)))


# Blobs and uploads.


def test_upload_in_chunks_becomes_a_blob_under_its_digest(store: BlobStore) -> None:
    digest = push(store, "team/app", DATA[:5000], DATA[5000:])
    assert store.blob_size("team/app", digest) == len(DATA)
    assert read_whole(store, "team/app", digest) == DATA
    assert stored_files(store.driver, "uploads/") == []
    assert stored_files(store.driver, "blobs/") == [f"blobs/sha256/{digest.hex}"]
    assert store.repository_exists("team/app")
    assert not store.repository_exists("team/other")


def test_single_part_and_empty_uploads(store: BlobStore) -> None:
    assert read_whole(store, "a/b", push(store, "a/b", DATA)) == DATA
    empty = push(store, "a/b")
    assert store.blob_size("a/b", empty) == 0


def test_digest_mismatch_is_refused_and_leaves_nothing(store: BlobStore) -> None:
    upload = store.start_upload("team/app")
    f = store.open_upload("team/app", upload, 0)
    f.write(DATA)
    f.close()
    wrong = Digest(sha256(b"something else"))
    with pytest.raises(DigestInvalid):
        store.finish_upload("team/app", upload, wrong)
    assert stored_files(store.driver, "blobs/") == []
    assert stored_files(store.driver, "uploads/") == []
    with pytest.raises(BlobUnknown):
        store.blob_size("team/app", wrong)
    with pytest.raises(BlobUploadUnknown):
        store.upload_size("team/app", upload)


def test_upload_offsets_and_ownership(store: BlobStore) -> None:
    upload = store.start_upload("team/app")
    assert store.upload_size("team/app", upload) == 0
    f = store.open_upload("team/app", upload, 0)
    f.write(b"abc")
    f.close()
    assert store.upload_size("team/app", upload) == 3
    with pytest.raises(BlobUploadInvalid):
        store.open_upload("team/app", upload, 0)
    with pytest.raises(BlobUploadUnknown):
        store.upload_size("team/other", upload)
    with pytest.raises(BlobUploadUnknown):
        store.upload_size("team/app", "0" * 32)
    # A body cut off half way is dropped whole, as the server asks with truncate(offset).
    f = store.open_upload("team/app", upload, 3)
    f.write(b"half")
    f.truncate(3)
    f.close()
    assert store.upload_size("team/app", upload) == 3
    store.cancel_upload("team/app", upload)
    assert stored_files(store.driver, "uploads/") == []
    with pytest.raises(BlobUploadUnknown):
        store.finish_upload("team/app", upload, Digest(sha256(b"abc")))


def test_mount_between_repositories(store: BlobStore) -> None:
    digest = push(store, "team/app", DATA)
    assert not store.mount_blob("team/copy", digest, "team/nothing")
    with pytest.raises(BlobUnknown):
        store.blob_size("team/copy", digest)
    assert store.mount_blob("team/copy", digest, "team/app")
    assert store.blob_size("team/copy", digest) == len(DATA)


def test_delete_blob_unlinks_only_that_repository(store: BlobStore) -> None:
    digest = push(store, "team/app", DATA)
    assert store.mount_blob("team/copy", digest, "team/app")
    store.delete_blob("team/app", digest)
    with pytest.raises(BlobUnknown):
        store.blob_size("team/app", digest)
    with pytest.raises(BlobUnknown):
        store.delete_blob("team/app", digest)
    assert read_whole(store, "team/copy", digest) == DATA


def test_expire_uploads_removes_only_idle_ones(store: BlobStore) -> None:
    old = store.start_upload("team/app")
    f = store.open_upload("team/app", old, 0)
    f.write(b"half a layer")
    f.close()
    time.sleep(2.5)  # S3 keeps LastModified in whole seconds and it cannot be set back
    fresh = store.start_upload("team/app")
    assert store.expire_uploads(3600) == 0
    assert store.expire_uploads(1.5) == 1
    with pytest.raises(BlobUploadUnknown):
        store.upload_size("team/app", old)
    assert store.upload_size("team/app", fresh) == 0
    assert stored_files(store.driver, "blobs/") == []


# Manifests and tags.


def manifest(n: int) -> bytes:
    return json.dumps({"schemaVersion": 2, "n": n}).encode()


def test_manifests_and_tags(store: BlobStore) -> None:
    digest = store.put_manifest("team/app", "v1", manifest(1))
    assert digest == sha256(manifest(1))
    assert store.get_manifest("team/app", "v1") == (digest, manifest(1))
    assert store.get_manifest("team/app", digest) == (digest, manifest(1))
    assert store.has_manifest("team/app", digest)
    assert not store.has_manifest("team/other", digest)
    assert store.blob_size("team/app", digest) == len(manifest(1))
    assert store.manifest_digests("team/app") == [digest]
    with pytest.raises(DigestInvalid):
        store.put_manifest("team/app", sha256(b"other"), manifest(2))
    with pytest.raises(ManifestUnknown):
        store.get_manifest("team/app", "v2")
    with pytest.raises(ManifestUnknown):
        store.get_manifest("team/other", "v1")


def test_tags_are_listed_in_lexical_order(store: BlobStore) -> None:
    with pytest.raises(NameUnknown):
        store.tags("team/app")
    for i, tag in enumerate(["v2", "latest", "V1", "a-b", "v10", "1.0"]):
        store.put_manifest("team/app", tag, manifest(i))
    store.put_manifest("team/app/sub", "zz", manifest(9))  # a nested repository's tags stay its own
    assert store.tags("team/app") == sorted(["v2", "latest", "V1", "a-b", "v10", "1.0"])
    assert store.tags("team/app/sub") == ["zz"]


def test_delete_manifest_by_tag_and_by_digest(store: BlobStore) -> None:
    digest = store.put_manifest("team/app", "v1", manifest(1))
    store.put_manifest("team/app", "also", manifest(1))
    other = store.put_manifest("team/app", "v2", manifest(2))
    store.delete_manifest("team/app", "v1")
    assert store.tags("team/app") == ["also", "v2"]
    assert store.has_manifest("team/app", digest)
    store.delete_manifest("team/app", digest)
    assert store.tags("team/app") == ["v2"]
    assert not store.has_manifest("team/app", digest)
    assert store.manifest_digests("team/app") == [other]
    with pytest.raises(ManifestUnknown):
        store.delete_manifest("team/app", digest)


# The whole server on each driver.


def test_server_push_pull(served: Registry, store: BlobStore) -> None:
    registry = served
    started = registry.request("POST", "/v2/team/app/blobs/uploads/")
    location = started.headers["Location"]
    reply = registry.request("PATCH", location, DATA[:5000], {"Content-Range": "0-4999"})
    assert (reply.status, reply.headers["Range"]) == (202, "0-4999")
    reply = registry.request("PATCH", reply.headers["Location"], DATA[5000:])
    assert reply.headers["Range"] == f"0-{len(DATA) - 1}"
    digest = sha256(DATA)
    assert registry.request("PUT", f"{reply.headers['Location']}?digest={digest}").status == 201
    assert registry.request("GET", f"/v2/team/app/blobs/{digest}").body == DATA
    ranged = registry.request("GET", f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert (ranged.status, ranged.body) == (206, DATA[10:20])

    wrong = registry.request("POST", f"/v2/team/app/blobs/uploads/?digest={sha256(b'x')}", DATA)
    assert (wrong.status, wrong.error_code) == (400, "DIGEST_INVALID")
    assert stored_files(store.driver, "uploads/") == []

    mounted = registry.request("POST", f"/v2/team/copy/blobs/uploads/?mount={digest}&from=team/app")
    assert mounted.status == 201
    config = registry.push_blob("team/app", b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": len(DATA)}
        ],
    }
    for tag in ("v2", "v1", "latest"):
        assert registry.push_manifest("team/app", tag, doc).status == 201
    assert registry.request("GET", "/v2/team/app/tags/list").json()["tags"] == ["latest", "v1", "v2"]
    assert registry.request("GET", "/v2/team/app/tags/list?n=1&last=latest").json()["tags"] == ["v1"]
    got = registry.request(
        "GET", "/v2/team/app/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
    )
    assert got.status == 200 and json.loads(got.body) == doc
    assert registry.request("DELETE", "/v2/team/app/manifests/v1").status == 202
    assert registry.request("GET", "/v2/team/app/tags/list").json()["tags"] == ["latest", "v2"]
    assert registry.request("DELETE", f"/v2/team/app/blobs/{digest}").status == 202
    assert registry.request("HEAD", f"/v2/team/app/blobs/{digest}").status == 404
    assert registry.request("HEAD", f"/v2/team/copy/blobs/{digest}").status == 200
