"""The local store: OCI layout, names, resolution, atomic writes and garbage collection."""

from __future__ import annotations

import json
import multiprocessing
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from storage.digest import Digest
from storage.errors import DigestMismatch, InvalidReference, NotFound
from storage.files import file_lock
from storage.oci import MEDIA_CONFIG, Descriptor, ImageConfig, Manifest
from storage.store import Store


def put_image(store: Store, name: str, marker: str) -> Manifest:
    layer = store.put_blob(f"layer {marker}".encode())
    config = ImageConfig(diff_ids=[layer], history=[{"created_by": marker}]).to_bytes()
    manifest = Manifest(
        Descriptor(MEDIA_CONFIG, store.put_blob(config), len(config)),
        [Descriptor("application/vnd.oci.image.layer.v1.tar", layer, len(f"layer {marker}"))],
    )
    store.put_image(name, manifest)
    return manifest


def test_new_store_is_an_oci_layout(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert json.loads((tmp_path / "store/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((tmp_path / "store/index.json").read_text())
    assert index["schemaVersion"] == 2 and index["manifests"] == []
    assert store.blobs == tmp_path / "store/blobs/sha256"


def test_blobs_are_stored_under_their_digest_and_verified(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = store.put_blob(b"hello")
    assert digest == Digest.of(b"hello")
    assert store.read_blob(digest) == b"hello"
    store.blob_path(digest).write_bytes(b"tampered")
    with pytest.raises(DigestMismatch):
        store.read_blob(digest)
    with pytest.raises(NotFound):
        store.read_blob(Digest.of(b"absent"))


def test_names_live_in_index_json_as_ref_name_annotations(tmp_path: Path) -> None:
    store = Store(tmp_path)
    put_image(store, "busybox:latest", "a")
    index = json.loads((tmp_path / "store/index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "busybox:latest"
    ]


def test_resolve_by_name_tag_digest_and_id_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path)
    put_image(store, "busybox:latest", "a")
    put_image(store, "localhost:5000/team/app:1.0", "b")
    image = store.image("busybox")
    assert image.name == "busybox:latest"
    assert store.image("busybox:latest").id == image.id
    assert store.image(image.id.hex[:12]).name == "busybox:latest"
    assert store.image(str(image.descriptor.digest)).name == "busybox:latest"
    assert store.image("localhost:5000/team/app:1.0").name == "localhost:5000/team/app:1.0"
    with pytest.raises(NotFound, match="image not known"):
        store.image("busybox:other")
    with pytest.raises(NotFound):
        store.image("nothing")


def test_tag_replaces_an_existing_name_and_untag_removes_it(tmp_path: Path) -> None:
    store = Store(tmp_path)
    put_image(store, "app:latest", "a")
    second = put_image(store, "app:latest", "b")
    assert [name for name, _ in store.names()] == ["app:latest"]
    assert store.image("app").manifest.config.digest == second.config.digest
    store.untag(["app:latest"])
    assert store.names() == []


def test_gc_removes_only_unreferenced_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path)
    put_image(store, "keep:latest", "keep")
    dropped = put_image(store, "drop:latest", "drop")
    stray = store.put_blob(b"stray")
    (store.blobs / ".abc.crashed.tmp").write_bytes(b"half")  # a crashed writer's temporary
    (store.layout / ".index.json.x.tmp").write_bytes(b"{")
    store.untag(["drop:latest"])
    removed, freed = store.gc()
    assert removed == 4  # drop's manifest, config and layer, and the stray blob
    assert freed > 0
    assert not store.has_blob(stray) and not store.has_blob(dropped.config.digest)
    assert not list(store.blobs.glob(".*")) and not list(store.layout.glob(".*.tmp"))
    image = store.image("keep")
    for descriptor in [image.descriptor, image.manifest.config, *image.manifest.layers]:
        assert store.has_blob(descriptor.digest)


def _hold_ingest_lock(root: str, locked: Connection, release: Connection) -> None:
    """A writer in another process: hold the shared lock until told, and mark that it let go."""
    with file_lock(Path(root) / "locks" / "gc.lock", shared=True):
        locked.send(True)
        release.recv()
        (Path(root) / "released").touch()


def test_gc_waits_for_writers_in_other_processes(tmp_path: Path) -> None:
    store = Store(tmp_path)
    locked_recv, locked_send = multiprocessing.Pipe(duplex=False)
    release_recv, release_send = multiprocessing.Pipe(duplex=False)
    writer = multiprocessing.get_context("fork").Process(
        target=_hold_ingest_lock, args=(str(tmp_path), locked_send, release_recv)
    )
    writer.start()
    assert locked_recv.poll(30), "the writer never took its lock"
    gc_saw_release: list[bool] = []

    def collect() -> None:
        store.gc()
        gc_saw_release.append((tmp_path / "released").exists())

    gc = threading.Thread(target=collect)
    gc.start()
    gc.join(0.2)  # a gc that does not wait would be done by now; one that waits is still blocked
    release_send.send(True)
    gc.join(30)
    writer.join(30)
    assert gc_saw_release == [True]  # gc finished only after the writer let go of its shared lock


def test_digest_grammar(tmp_path: Path) -> None:
    with pytest.raises(InvalidReference):
        Digest("sha256:abc")
    with pytest.raises(InvalidReference):
        Digest("md5:" + "0" * 32)
    with pytest.raises(InvalidReference):
        Digest("sha256:" + "A" * 64)
    with pytest.raises(InvalidReference):
        Digest("sha256:" + "a" * 64 + "\n")  # it would end up in a blob path
    assert Digest("sha256:" + "a" * 64).hex == "a" * 64
