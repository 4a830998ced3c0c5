"""A chunk file changed on disk is never served: not by the daemon that verified it, not by a new mount
(which trusts sealed chunk files without hashing them again), not from the kernel's page cache."""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from storage.chunks import ChunkCache
from storage.digest import Digest
from tests.lazyfs.conftest import BIG, Mounter, Published, pull_lazily, run_cli
from tests.runtime.polling import wait_for

CHUNK = 256 << 10  # the codec's chunk size: BIG is six of them


def chunk_file(root: Path, data: bytes) -> Path:
    digest = hashlib.sha256(data).hexdigest()
    return root / "chunks" / digest[:2] / digest


def flip_bytes(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))


def drop_page_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fetched(root: Path, point: Path) -> int:
    stats = json.loads(run_cli(root, "mount", "--stats", str(point)).stdout)
    return int(stats["pieces_fetched"])


@pytest.mark.privileged
def test_a_changed_cache_file_is_never_served(published: Published, tmp_path: Path, mount: Mounter) -> None:
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    first = mount(root, published.ref, "--timeout", "3")
    assert (first / "data/big.bin").read_bytes() == BIG  # every chunk fetched, verified, cached
    changed = chunk_file(root, BIG[:CHUNK])
    flip_bytes(changed)

    drop_page_caches()  # the running daemon has the chunk in memory, verified: the same good bytes
    assert (first / "data/big.bin").read_bytes() == BIG

    second = mount(root, published.ref, "--timeout", "3")  # a new daemon: only the chunk files
    assert (second / "data/big.bin").read_bytes() == BIG
    assert fetched(root, second) == 1  # the changed chunk, fetched again; the five others were trusted
    assert Digest.of(changed.read_bytes()).hex == changed.name

    flip_bytes(changed)
    published.registry.stop()
    third = mount(root, published.ref, "--timeout", "3")
    with open(third / "data/big.bin", "rb") as f:
        with pytest.raises(OSError) as caught:
            f.read(CHUNK)
        assert caught.value.errno == errno.EIO  # nowhere to fetch good bytes from: no bytes at all
        f.seek(CHUNK)
        assert f.read() == BIG[CHUNK:]  # the untouched chunks are still served
    assert not changed.exists()  # the changed file was thrown away
    for point in (first, second, third):
        run_cli(root, "umount", str(point))


def test_a_sealed_chunk_is_trusted_until_its_file_changes(tmp_path: Path) -> None:
    data = os.urandom(4096)
    digest = Digest.of(data)
    ChunkCache(tmp_path).put(digest, data)
    assert (tmp_path / "seals" / digest.hex[:1]).read_text().startswith(digest.hex + " ")
    assert ChunkCache(tmp_path).get(digest) == data  # another process: sealed, read as it is

    path = ChunkCache(tmp_path).path(digest)
    flip_bytes(path)
    assert ChunkCache(tmp_path).get(digest) is None  # changed: hashed, found wrong, removed
    assert not path.exists()

    ChunkCache(tmp_path).put(digest, data)
    with open(tmp_path / "seals" / digest.hex[:1], "a") as log:
        log.write("not a seal\n" + digest.hex[:10])  # garbage and a torn line are skipped
    assert ChunkCache(tmp_path).get(digest) == data


def test_an_unsealed_chunk_file_is_hashed_before_use(tmp_path: Path) -> None:
    data = os.urandom(4096)
    digest = Digest.of(data)
    cache = ChunkCache(tmp_path)
    cache.put(digest, data)
    (tmp_path / "seals" / digest.hex[:1]).unlink()  # e.g. written by a version that kept no seals
    assert ChunkCache(tmp_path).get(digest) == data  # hashed, found right, sealed again
    assert (tmp_path / "seals" / digest.hex[:1]).read_text().startswith(digest.hex + " ")


def passed_through(root: Path, point: Path) -> int:
    return int(json.loads(run_cli(root, "mount", "--stats", str(point)).stdout)["passed_through"])


@pytest.mark.privileged
def test_a_changed_chunk_file_is_never_passed_through(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    """A file of one chunk is passed through to its chunk file (the kernel reads it, not lazyfs) only
    while that is the very file that was verified."""
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    first = mount(root, published.ref, "--timeout", "3")
    assert (first / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"  # fetched, verified, cached
    assert passed_through(root, first) == 0
    second = mount(root, published.ref, "--timeout", "3")
    assert (second / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"
    assert passed_through(root, second) == 1  # sealed: the kernel reads the chunk file itself

    changed = chunk_file(root, b"#!/bin/sh\necho tool\n")
    changed.write_bytes(b"#!/bin/sh\necho evil\n")  # same size, new ctime
    third = mount(root, published.ref, "--timeout", "3")
    assert (third / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"  # fetched again
    assert passed_through(root, third) == 0 and fetched(root, third) == 1
    for point in (first, second, third):
        run_cli(root, "umount", str(point))


@pytest.mark.privileged
def test_a_file_changed_in_the_plain_root_is_never_passed_through(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    """Once the image's plain root is assembled, opens are passed through to its files, but not to
    one changed on disk since (read through lazyfs from the verified chunks instead)."""
    root = tmp_path / "client"
    pull_lazily(root, published.ref)
    filling = mount(root, published.ref, "--fill")
    wait_for(
        lambda: json.loads(run_cli(root, "mount", "--stats", str(filling)).stdout)["plain_root"],
        what="a root",
    )
    plain = Path(json.loads(run_cli(root, "mount", "--stats", str(filling)).stdout)["plain_root"])
    run_cli(root, "umount", str(filling))

    point = mount(root, published.ref, "--timeout", "3")  # finds the plain root
    assert (point / "data/big.bin").read_bytes() == BIG
    assert passed_through(root, point) == 1
    run_cli(root, "umount", str(point))

    flip_bytes(plain / "data/big.bin")
    drop_page_caches()
    point = mount(root, published.ref, "--timeout", "3")
    assert (point / "data/big.bin").read_bytes() == BIG  # from the chunk cache, verified
    assert (point / "bin/tool").read_bytes() == b"#!/bin/sh\necho tool\n"  # unchanged: passed through
    assert passed_through(root, point) == 1
    run_cli(root, "umount", str(point))
