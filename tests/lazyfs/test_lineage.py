"""Profiles follow the image's history: a new version inherits its previous version's profile, at
pull (from the store) and at push (from the store, else the target repository's tags), and a lazy
mount of the new version prefetches it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tarfile
from pathlib import Path

import pytest

from lazyfs.lineage import inherit_profile, profiled_paths, store_ancestor
from lazyfs.profile import DERIVED_FROM, load_profile, save_profile
from registry.client import RegistryClient
from storage.importer import add_layer
from storage.oci import PROFILE_TYPE, Manifest
from storage.pieces import Piece, file_pieces
from storage.store import Image, Store
from tests.lazyfs.conftest import BIG, Mounter, Published, make_image, pull_lazily, run_cli
from tests.lazyfs.test_profile import stats, wait_for
from tests.tarfiles import info, make_tar

BIG_EDITED = BIG[: 1 << 18] + os.urandom(len(BIG) - (1 << 18))  # the first chunk as it was


def pieces_of(store: Store, image: Image, path: str) -> list[dict[str, str]]:
    """The profile entries for every piece of the file at `path` (the topmost layer holding it)."""
    for index in reversed(range(len(image.manifest.layers))):
        layer = image.manifest.layers[index]
        for entry in store.layer_toc(layer).entries:
            if entry.path == path and entry.type == "reg":
                found = [p for p in file_pieces(entry) if isinstance(p, Piece)]
                return [{"layer": str(layer.digest), "digest": str(p.digest)} for p in found]
    raise AssertionError(f"{path} is in no layer")


def next_version(store: Store, tmp: Path, name: str = "rich:2", small: bytes = b"third version\n") -> Image:
    """rich:1's base layer, and a new top layer: small.txt and big.bin edited, shared.txt as it was."""
    upper = make_tar(
        tmp / f"upper-{name}.tar",
        [
            (info("etc", tarfile.DIRTYPE), None),
            (info("etc/small.txt"), small),
            (info("data", tarfile.DIRTYPE), None),
            (info("data/big.bin"), BIG_EDITED),
            (info("shared.txt"), b"the same bytes in two images\n" * 100),
        ],
    )
    return add_layer(store, store.image("rich-base:1"), upper, name, "the next version")


def version_one_profile(store: Store, v1: Image) -> list[dict[str, str]]:
    """What a start of rich:1 read: bin/tool (base), small.txt and shared.txt (top), big.bin's first
    two chunks (base)."""
    return [
        *pieces_of(store, v1, "bin/tool"),
        *pieces_of(store, v1, "etc/small.txt"),
        *pieces_of(store, v1, "data/big.bin")[:2],
        *pieces_of(store, v1, "shared.txt"),
    ]


async def tags(registry: str, repo: str) -> list[str]:
    async with RegistryClient(registry) as client:
        return sorted(await client.tags(repo))


def test_a_new_version_inherits_kept_and_path_mapped_pieces(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    v1 = make_image(store, tmp_path)
    save_profile(store, v1, version_one_profile(store, v1))
    v2 = next_version(store, tmp_path)

    inherited = inherit_profile(store, v2)
    assert inherited is not None and inherited.ancestor == "rich:1"
    big = pieces_of(store, v2, "data/big.bin")
    expected = [
        *pieces_of(store, v2, "bin/tool"),  # an unchanged layer: the very same piece
        *pieces_of(store, v2, "etc/small.txt"),  # changed: the new layer's piece, by path
        *big[:2],  # changed: the new file's pieces of the same bytes, not all six
        *pieces_of(store, v2, "shared.txt"),  # same bytes, now in the new layer
    ]
    assert load_profile(store, v2) == expected
    assert expected[0]["layer"] == str(v1.manifest.layers[0].digest)  # kept: base layer unchanged
    assert big[0]["digest"] == pieces_of(store, v1, "data/big.bin")[0]["digest"]  # unedited chunk
    assert big[1]["digest"] != pieces_of(store, v1, "data/big.bin")[1]["digest"]
    assert (inherited.kept, inherited.mapped) == (1, 4)
    # An ordinary profile, marked as derived; the image digest is what it was.
    (descriptor,) = store.referrers(v2.descriptor.digest, PROFILE_TYPE)
    artifact = Manifest.parse(store.read_blob(descriptor.digest))
    assert artifact.annotations[DERIVED_FROM] == str(v1.descriptor.digest)
    assert store.image("rich:2").descriptor == v2.descriptor
    assert inherit_profile(store, v2) is None  # it has one now


def test_a_recorded_profile_beats_a_derived_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    v1 = make_image(store, tmp_path)
    save_profile(store, v1, version_one_profile(store, v1))
    v2 = next_version(store, tmp_path)
    own = pieces_of(store, v2, "data/tagged")
    save_profile(store, v2, own)
    assert inherit_profile(store, v2) is None and load_profile(store, v2) == own
    save_profile(store, v2, [], derived_from=v1.descriptor.digest)  # a later derived one loses
    assert load_profile(store, v2) == own


def test_a_version_whose_layer_toc_is_missing_inherits_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    v1 = make_image(store, tmp_path)
    save_profile(store, v1, version_one_profile(store, v1))
    v2 = next_version(store, tmp_path)
    store.blob_path(v2.manifest.layers[-1].digest).unlink()  # as a layer containerd unpacks itself
    assert inherit_profile(store, v2) is None and load_profile(store, v2) == []


def test_the_ancestor_is_the_closest_version_with_a_profile(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    v1 = make_image(store, tmp_path)
    v2 = next_version(store, tmp_path, "elsewhere:2")
    assert store_ancestor(store, v2.name, v2) is None  # no profile
    # A later version has a profile: a version inherits from an earlier one, never from a later one.
    future = dataclasses.replace(v1.config, created="2099-01-01T00:00:00Z").to_bytes()
    manifest = dataclasses.replace(
        v1.manifest,
        config=dataclasses.replace(v1.manifest.config, digest=store.put_blob(future), size=len(future)),
    )
    store.put_image("rich:9", manifest)
    save_profile(store, store.image("rich:9"), version_one_profile(store, v1))
    assert store_ancestor(store, v2.name, v2) is None
    save_profile(store, v1, version_one_profile(store, v1))
    found = store_ancestor(store, v2.name, v2)
    assert found is not None and found.name == "rich:1"  # another repository, sharing the base
    paths = profiled_paths(store, found.layers, found.pieces)
    assert paths == ["bin/tool", "etc/small.txt", "data/big.bin", "shared.txt"]
    assert store_ancestor(store, "unrelated:1") is None  # nothing shared, another repository
    by_name = store_ancestor(store, "rich:7")  # a build to come: the repository's images, rich:9 too
    assert by_name is not None and by_name.name in ("rich:1", "rich:9")


@pytest.mark.privileged
def test_pull_and_push_derive_and_a_mount_prefetches_it(
    published: Published, tmp_path: Path, mount: Mounter
) -> None:
    publisher = Store(published.publisher_root)
    ref2, ref3 = published.ref.replace(":1", ":2"), published.ref.replace(":1", ":3")
    next_version(publisher, tmp_path)
    assert "inherited" not in run_cli(published.publisher_root, "push", "rich:2", ref2).stdout  # none yet

    # rich:1's profile is recorded on a client; it pushes it, and the registry has it.
    recorder = tmp_path / "recorder"
    v1 = pull_lazily(recorder, published.ref)
    save_profile(Store(recorder), v1, version_one_profile(Store(recorder), v1))
    assert "referrers 1" in run_cli(recorder, "push", published.ref).stdout

    # Pull time: that client has rich:1 and its profile, so rich:2 inherits it, with no round trip.
    pulled = run_cli(recorder, "pull", ref2)
    assert f"access profile inherited from {published.ref}: 5 pieces (1 kept, 4 mapped" in pulled.stderr
    v2 = Store(recorder).image(ref2)
    assert pulled.stdout.strip() == str(v2.id)
    assert len(load_profile(Store(recorder), v2)) == 5

    # Mount time: a client that got rich:2 without the CLI (as `run` pulls a missing image) and has
    # rich:1's profile inherits when a lazy mount comes up, and the mount prefetches it.
    mounter = tmp_path / "mounter"
    save_profile(
        Store(mounter), pull_lazily(mounter, published.ref), version_one_profile(Store(recorder), v1)
    )
    pull_lazily(mounter, ref2)
    at_mount = mount(mounter, ref2)
    wait_for(lambda: stats(mounter, at_mount)["pieces_fetched"] == 5)
    assert stats(mounter, at_mount)["prefetched"] == 5
    assert load_profile(Store(mounter), Store(mounter).image(ref2)) == load_profile(Store(recorder), v2)

    # Push time: the publisher's store has no profile of the repository, the target repository's
    # rich:1 has one; a relative in the store (another repository sharing the base layer, with a
    # profile) does not beat the version's own history.
    relative = publisher.image("rich-base:1")
    save_profile(publisher, relative, pieces_of(publisher, relative, "bin/tool"))
    v3 = next_version(publisher, tmp_path, "rich:3", b"fourth version\n")
    pushed = run_cli(published.publisher_root, "push", "rich:3", ref3).stdout
    assert f"access profile inherited from {published.ref}: 5 pieces (1 kept, 4 mapped by path)" in pushed
    assert "referrers 1" in pushed
    assert load_profile(publisher, v1) == []  # the ancestor's profile was only read
    derived = load_profile(publisher, v3)
    assert derived[1] == pieces_of(publisher, v3, "etc/small.txt")[0]

    # An older version pushed now inherits nothing from the newer ones (store or registry).
    past = dataclasses.replace(v1.config, created="2000-01-01T00:00:00Z").to_bytes()
    config = dataclasses.replace(v1.manifest.config, digest=publisher.put_blob(past), size=len(past))
    publisher.put_image("rich:0", dataclasses.replace(v1.manifest, config=config))
    ref0 = published.ref.replace(":1", ":0")
    assert "inherited" not in run_cli(published.publisher_root, "push", "rich:0", ref0).stdout

    assert asyncio.run(tags(published.registry.address, "test/rich")) == ["0", "1", "2", "3"]
    assert asyncio.run(tags(published.registry.address, "test/nosuch")) == []

    # A cold client gets it with the pull, and a lazy mount fetches those pieces up front.
    client = tmp_path / "client"
    assert "inherited" not in run_cli(client, "pull", ref3).stderr  # it came as the image's referrer
    assert load_profile(Store(client), Store(client).image(ref3)) == derived
    point = mount(client, ref3)
    wait_for(lambda: stats(client, point)["pieces_fetched"] == 5)
    assert stats(client, point)["prefetched"] == 5
    assert (point / "etc/small.txt").read_bytes() == b"fourth version\n"
    assert (point / "data/big.bin").read_bytes()[: 2 << 18] == BIG_EDITED[: 2 << 18]
    after = stats(client, point)
    assert after["prefetch_hits"] >= 3 and after["pieces_fetched"] > 5  # the rest of big.bin on demand
