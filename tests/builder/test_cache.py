"""The build cache: keys from definitions, entries that point at layer blobs, cache mount dirs."""

from __future__ import annotations

from pathlib import Path

from builder.cache import BuildCache, CacheEntry, LayerRef, cache_key
from storage.digest import Digest
from storage.oci import MEDIA_LAYER_ZSTD, Descriptor
from storage.store import Store


def test_a_key_depends_on_every_part_and_on_nothing_else() -> None:
    assert cache_key("parent", "RUN", ["sh", "-c", "x"]) == cache_key("parent", "RUN", ["sh", "-c", "x"])
    assert cache_key("parent", "RUN", ["sh", "-c", "x"]) != cache_key("other", "RUN", ["sh", "-c", "x"])
    assert cache_key("p", {"a": 1, "b": 2}) == cache_key("p", {"b": 2, "a": 1})
    assert cache_key("p", ["a", "b"]) != cache_key("p", ["ab"])


def _layer(store: Store, content: bytes) -> LayerRef:
    digest = store.put_blob(content)
    return LayerRef(Descriptor(MEDIA_LAYER_ZSTD, digest, len(content), {"k": "v"}), Digest.of(b"tar"))


def test_an_entry_comes_back_as_it_was_put(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    cache = BuildCache(store)
    layer = _layer(store, b"layer")
    cache.put("a" * 64, CacheEntry("2024-01-01T00:00:00Z", layer))
    cache.put("b" * 64, CacheEntry("2024-01-02T00:00:00Z", None))
    assert cache.get("a" * 64) == CacheEntry("2024-01-01T00:00:00Z", layer)
    assert cache.get("b" * 64) == CacheEntry("2024-01-02T00:00:00Z", None)
    assert cache.get("c" * 64) is None
    assert len(cache.entries()) == 2


def test_an_entry_whose_blob_was_collected_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    cache = BuildCache(store)
    cache.put("a" * 64, CacheEntry("2024-01-01T00:00:00Z", _layer(store, b"layer")))
    store.gc()  # no image names the blob
    assert cache.get("a" * 64) is None


def test_a_damaged_entry_is_a_miss(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    cache = BuildCache(store)
    cache.put("a" * 64, CacheEntry("2024-01-01T00:00:00Z", None))
    next((tmp_path / "root" / "cache" / "index").glob("*/*.json")).write_text("{not json")
    assert cache.get("a" * 64) is None


def test_no_cache_reads_nothing_but_still_writes(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    BuildCache(store).put("a" * 64, CacheEntry("2024-01-01T00:00:00Z", None))
    disabled = BuildCache(store, enabled=False)
    assert disabled.get("a" * 64) is None
    disabled.put("b" * 64, CacheEntry("2024-01-01T00:00:00Z", None))
    assert BuildCache(store).get("b" * 64) is not None


def test_putting_the_same_entry_again_writes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    cache = BuildCache(store)
    cache.put("a" * 64, CacheEntry("2024-01-01T00:00:00Z", None))
    path = next((tmp_path / "root" / "cache" / "index").glob("*/*.json"))
    inode = path.stat().st_ino
    cache.put("a" * 64, CacheEntry("2024-01-01T00:00:00Z", None))
    assert path.stat().st_ino == inode


def test_cache_mount_dirs_are_kept_per_id(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    cache = BuildCache(store)
    first = cache.mount_dir("/root/.cache")
    (first / "kept").write_text("x")
    assert (BuildCache(store).mount_dir("/root/.cache") / "kept").read_text() == "x"
    assert cache.mount_dir("../../etc") != first
    assert cache.mount_dir("../../etc").parent == tmp_path / "root" / "cache" / "mounts"
