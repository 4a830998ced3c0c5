"""`lazyctr build --profile-from IMAGE` records a profile derived from IMAGE's, and `--profile-order`
writes the profiled files first in a layer, so that their chunks are one contiguous range."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from lazyfs.profile import DERIVED_FROM, load_profile, save_profile
from storage.oci import PROFILE_TYPE, Manifest
from storage.pieces import Piece, file_pieces
from storage.store import Image, Store
from storage.toc import TocEntry
from tests.builder.test_build import build, write
from tests.conftest import CliRunner, assert_clean_error
from tests.lazyfs.conftest import run_cli
from tests.lazyfs.test_profile import wait_for
from tests.registry.conftest import Registry

pytestmark = pytest.mark.privileged

PROFILED = ["app/f17.txt", "app/f03.txt", "app/f11.txt"]  # in the order a start read them


def context(tmp_path: Path) -> Path:
    """20 files of 128 KiB that compress to about half: a profiled file's neighbours are far apart."""
    files = {f"app/f{i:02}.txt": os.urandom(1 << 16).hex() for i in range(20)}
    return write(tmp_path / "ctx", {"Dockerfile": "FROM scratch\nCOPY app /app\n", **files})


def top_files(store: Store, image: Image) -> list[TocEntry]:
    return [e for e in store.layer_toc(image.manifest.layers[-1]).entries if e.type == "reg"]


def profile_of(store: Store, image: Image, paths: list[str]) -> list[dict[str, str]]:
    layer = image.manifest.layers[-1]
    by_path = {e.path: e for e in top_files(store, image)}
    return [
        {"layer": str(layer.digest), "digest": str(p.digest)}
        for path in paths
        for p in file_pieces(by_path[path])
        if isinstance(p, Piece)
    ]


def contents(store: Store, image: Image) -> set[tuple[object, ...]]:
    """What a layer holds, whatever its order: every entry's path, type, mode, owner, time, digest."""
    toc = store.layer_toc(image.manifest.layers[-1])
    return {(e.path, e.type, e.mode, e.uid, e.gid, e.size, e.modtime, e.digest) for e in toc.entries}


def version_two(lazyctr: CliRunner, store: Store, ctx: Path) -> str:
    """Build app:1, give it a profile of PROFILED, edit f11.txt and build app:2 with --profile-order."""
    build(lazyctr, ctx, "-t", "app:1")
    save_profile(store, store.image("app:1"), profile_of(store, store.image("app:1"), PROFILED))
    (ctx / "app/f11.txt").write_text("edited\n" * 1000)
    return build(lazyctr, ctx, "-t", "app:2", "--profile-order").out


def test_profile_order_places_the_profiled_files_first(
    lazyctr: CliRunner, root: Path, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    store = Store(root)
    out = version_two(lazyctr, store, ctx)
    v1 = store.image("app:1")
    assert "access profile inherited from app:1: 3 pieces (0 kept, 3 mapped by path)" in out
    v2 = store.image("app:2")
    files = top_files(store, v2)
    assert [e.path for e in files[:3]] == PROFILED
    assert store.layer_toc(v2.manifest.layers[-1]).entries[0].path == "app"  # its directory before them
    start, end = files[0].offset, files[2].end_offset
    assert all(e.offset >= end for e in files[3:])  # nothing else between: one range of the blob
    assert load_profile(store, v2) == profile_of(store, v2, PROFILED)  # the new layer's pieces
    assert all(start <= e.offset < end for e in files[:3])

    # The same files as a layer written in the usual order, only the order differs.
    build(lazyctr, ctx, "-t", "app:plain", "--no-cache")
    plain = store.image("app:plain")
    assert contents(store, plain) == contents(store, v2)
    assert [e.path for e in top_files(store, plain)] == sorted(e.path for e in files)
    assert plain.config.diff_ids != v2.config.diff_ids
    assert load_profile(store, plain) == []  # nothing asked for one

    # --profile-from: another repository, the profile of the image named; an ordinary, derived one.
    out = build(lazyctr, ctx, "-t", "other:5", "--profile-from", "app:1").out
    assert "access profile inherited from app:1: 3 pieces" in out
    other = store.image("other:5")
    (descriptor,) = store.referrers(other.descriptor.digest, PROFILE_TYPE)
    assert Manifest.parse(store.read_blob(descriptor.digest)).annotations[DERIVED_FROM] == str(
        v1.descriptor.digest
    )
    assert [e.path for e in top_files(store, other)] == sorted(e.path for e in files)  # cached: as it was


def test_bad_profile_sources_are_one_line(lazyctr: CliRunner, root: Path, tmp_path: Path) -> None:
    ctx = context(tmp_path)
    assert_clean_error(
        build(lazyctr, ctx, "--profile-from", "nosuch:1", ok=False), "--profile-from: image not known"
    )
    build(lazyctr, ctx, "-t", "app:1")
    assert_clean_error(
        build(lazyctr, ctx, "-t", "app:2", "--profile-from", "app:1", ok=False),
        "--profile-from: app:1 has no access profile",
    )
    assert_clean_error(
        build(lazyctr, ctx, "-t", "app:2", "--profile-order", ok=False),
        "--profile-order: no profile to order by",
    )
    assert_clean_error(build(lazyctr, ctx, "--profile-order", ok=False), "--profile-order: no profile")
    assert [name for name, _ in Store(root).names()] == ["app:1"]  # nothing built or named


def test_a_cold_start_prefetches_the_ordered_files_in_one_request(
    lazyctr: CliRunner, root: Path, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    version_two(lazyctr, Store(root), ctx)
    registry = Registry(tmp_path / "registry")
    try:
        ref = f"{registry.address}/test/app:2"
        assert "referrers 1" in lazyctr("push", "app:2", ref).out  # the derived profile goes along
        client = tmp_path / "client"
        point = tmp_path / "mnt"
        point.mkdir()
        run_cli(client, "pull", ref)
        run_cli(client, "mount", ref, str(point))
        try:

            def stats() -> dict[str, int]:
                return dict(json.loads(run_cli(client, "mount", "--stats", str(point)).stdout))

            wait_for(lambda: stats()["pieces_fetched"] == 3)
            assert stats()["requests"] == 1  # three files, one range of the layer blob
            assert (point / "app/f11.txt").read_text() == "edited\n" * 1000
            assert stats()["requests"] == 1 and stats()["prefetch_hits"] >= 1
        finally:
            subprocess.run(["fusermount3", "-uz", str(point)], capture_output=True)
    finally:
        registry.stop()
