"""Uploads abandoned by clients that died half way are removed after a timeout, never becoming blobs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from registry.filesystem import FilesystemDriver
from registry.storage import BlobStore
from tests.registry.conftest import Registry


def test_an_abandoned_upload_expires_and_never_becomes_a_blob(registry: Registry) -> None:
    started = registry.request("POST", "/v2/team/app/blobs/uploads/")
    location = started.headers["Location"]
    assert registry.request("PATCH", location, b"half a layer", {"Content-Range": "0-11"}).status == 202
    fresh = registry.request("POST", "/v2/team/app/blobs/uploads/").headers["Location"]
    uploads = registry.root / "uploads"
    upload_id = location.rstrip("/").rsplit("/", 1)[1].split("?")[0]
    old = time.time() - 7200
    os.utime(uploads / upload_id / "data", (old, old))  # the client died two hours ago

    assert BlobStore(FilesystemDriver(registry.root)).expire_uploads(3600) == 1
    assert registry.request("GET", location).error_code == "BLOB_UPLOAD_UNKNOWN"
    assert registry.request("GET", fresh).status == 204  # a live upload stays
    assert not list((registry.root / "blobs").rglob("*")) or all(
        p.is_dir() for p in (registry.root / "blobs").rglob("*")
    )


def test_expiry_copes_with_a_half_created_upload(tmp_path: Path) -> None:
    store = BlobStore(FilesystemDriver(tmp_path))
    (tmp_path / "uploads" / "0").mkdir()  # a crash between mkdir and writing its files
    old = time.time() - 7200
    os.utime(tmp_path / "uploads" / "0", (old, old))
    assert store.expire_uploads(3600) == 1
