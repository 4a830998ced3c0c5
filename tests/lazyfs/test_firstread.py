"""First reads without a profile: what a miss brings along, chosen from real pieces of real layers
(built by the store's codec), and what a mount then fetches for a start."""

from __future__ import annotations

import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from lazyfs.fetcher import (
    AHEAD_GAP,
    COALESCE_GAP,
    GUESS_REQUEST,
    RANGES_PER_REQUEST,
    Range,
    coalesce,
    requests,
    ride_along,
)
from lazyfs.firstread import (
    DIRECTORY_WINDOW,
    MAX_DIRECTORY_WINDOW,
    MISS_BUDGET,
    NEIGHBOURS,
    SMALL_FILE,
    WHOLE_FILE,
    FirstRead,
)
from lazyfs.readahead import blob_order
from lazyfs.source import ImageSource, image_tree
from storage.importer import add_layer, import_tarball
from storage.pieces import FileLayout, Piece
from storage.store import Store
from tests.lazyfs.conftest import Mounter, pull_lazily, run_cli
from tests.registry.conftest import Registry
from tests.tarfiles import info, make_tar

LIBRARY = os.urandom(3 << 19)  # 1.5 MiB that does not compress: six pieces
HUGE = os.urandom(WHOLE_FILE + (1 << 20))  # more than a miss may bring of one file
MODULES = {f"lib/mod{n:02d}.py": os.urandom(20_000 + n) for n in range(80)}  # 1.6 MB of small files
CONFIGS = {f"etc/{name}.conf": f"{name} = 1\n".encode() for name in ("a", "b", "c")}
SHARED = {f"share/doc{n}.txt": os.urandom(30_000) for n in range(8)}  # what follows etc/ in the blob
APP = {"app/app.py": b"print('hello')\n", "app/settings.py": b"DEBUG = False\n", "app/data.json": b"{}\n"}


def base_layer() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        (info("lib", tarfile.DIRTYPE), None),
        (info("lib/libbig.so"), LIBRARY),
        *((info(name), data) for name, data in MODULES.items()),
        (info("lib/huge.bin"), HUGE),
        (info("etc", tarfile.DIRTYPE), None),
        *((info(name), data) for name, data in CONFIGS.items()),
        (info("share", tarfile.DIRTYPE), None),
        *((info(name), data) for name, data in SHARED.items()),
        (info("var", tarfile.DIRTYPE), None),  # the configs again: a directory of duplicates
        *((info(name.replace("etc/", "var/")), data) for name, data in CONFIGS.items()),
    ]


@pytest.fixture(scope="module")
def image_pieces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Piece]]:
    """Every piece of a two-layer image (a base with a library, many modules, configs and docs; a
    small app layer on top), by file name, each file's pieces in file order."""
    tmp = tmp_path_factory.mktemp("firstread")
    store = Store(tmp / "root")
    with open(make_tar(tmp / "base.tar", base_layer()), "rb") as f:
        base = import_tarball(store, f, "base:1")
    app_tar = make_tar(
        tmp / "app.tar", [(info("app", tarfile.DIRTYPE), None), *((info(k), v) for k, v in APP.items())]
    )
    image = add_layer(store, base, app_tar, "app:1", "the app")
    tree = image_tree(store, image)
    by_name: dict[str, list[Piece]] = {}
    for piece in ImageSource(tree).all_pieces():  # one per digest: copies are not there
        by_name.setdefault(piece.name.removeprefix("./"), []).append(piece)
    for name in CONFIGS:  # a copy's piece, as a read of the copy asks for it
        copy = tree.node(name.replace("etc/", "var/"))
        assert copy is not None
        by_name[copy.entry.name.removeprefix("./")] = FileLayout.of(copy.content, copy.layer).pieces
    return by_name


def first_read(image_pieces: dict[str, list[Piece]]) -> FirstRead:
    """A fresh policy (it remembers what it named) over the image's pieces (the copies' own are not)."""
    image = [p for name, pieces in image_pieces.items() if not name.startswith("var/") for p in pieces]
    return FirstRead(blob_order(image))


def guessed(policy: FirstRead, miss: Piece) -> list[Piece]:
    """What a miss brings along, all tiers together."""
    return [piece for tier in policy.on_miss(miss) for piece in tier]


def names(pieces: list[Piece]) -> set[str]:
    return {p.name.removeprefix("./") for p in pieces}


def size(pieces: list[Piece]) -> int:
    return sum(p.end - p.start for p in pieces)


def test_opening_a_file_brings_the_rest_of_it_and_nothing_else(image_pieces: dict[str, list[Piece]]) -> None:
    policy = first_read(image_pieces)
    library = image_pieces["lib/libbig.so"]
    assert len(library) == 6
    # ld.so reads the first chunk, then the last, then the others: they come in that order
    assert policy.on_miss(library[0]) == [library[-1:], library[1:-1]]
    assert guessed(policy, image_pieces["etc/a.conf"][0]) == []  # a lone config file: itself only
    assert guessed(policy, library[3]) == []  # a miss inside a file opens nothing


def test_a_file_larger_than_the_budget_brings_only_its_next_pieces(
    image_pieces: dict[str, list[Piece]],
) -> None:
    huge = image_pieces["lib/huge.bin"]
    last, guesses = first_read(image_pieces).on_miss(huge[0])
    assert last == huge[-1:]  # a zip's directory, say: the end comes first, whatever the size
    assert guesses == huge[1 : len(guesses) + 1]  # in file order, from the one after the miss
    room = WHOLE_FILE - size(last)  # the file's budget, less its last piece
    assert room - (huge[1].end - huge[1].start) < size(guesses) <= room < size(huge)


def test_the_second_file_opened_in_a_directory_brings_its_small_files(
    image_pieces: dict[str, list[Piece]],
) -> None:
    policy = first_read(image_pieces)
    modules = [image_pieces[name][0] for name in MODULES]
    assert guessed(policy, modules[10]) == []
    second = guessed(policy, modules[20])
    assert second and names(second) <= set(MODULES)  # small files only: not libbig.so, not huge.bin
    assert modules[21] in second  # the files after it in the blob first
    assert size(second) <= DIRECTORY_WINDOW + NEIGHBOURS
    policy.on_read(modules[21])  # the start reads one of them: the guesses there were right
    third = guessed(policy, modules[5])
    assert size(third) > size(second)  # so the window doubles with the next file opened there
    assert not set(second) & set(third)  # nothing is named twice
    missed, named = {modules[10], modules[20], modules[5]}, set(second) | set(third)
    while rest := [m for m in modules if m not in named | missed]:
        for piece in named:  # a start going through the directory's files reads them
            policy.on_read(piece)
        missed.add(rest[0])
        guesses = guessed(policy, rest[0])
        assert size(guesses) <= MAX_DIRECTORY_WINDOW + NEIGHBOURS
        named |= set(guesses)
    assert len(missed) <= 6  # a few misses brought the whole directory's small files


def test_a_directory_whose_guesses_go_unread_gets_no_larger_window(
    image_pieces: dict[str, list[Piece]],
) -> None:
    # apache2's start script runs a few programs of /usr/bin: each miss there doubled the window of
    # its small files, to 2 MB, and the script read none of them
    policy = first_read(image_pieces)
    modules = [image_pieces[name][0] for name in MODULES]
    guessed(policy, modules[0])
    windows = [guessed(policy, modules[n]) for n in (20, 40, 60, 75)]
    siblings = [
        [p for p in window if p.start < miss.start or p.start > miss.start + NEIGHBOURS]
        for window, miss in zip(windows, (modules[n] for n in (20, 40, 60, 75)), strict=True)
    ]
    assert all(size(window) <= DIRECTORY_WINDOW + NEIGHBOURS for window in windows)
    assert size(siblings[-1]) <= DIRECTORY_WINDOW


def test_large_files_of_a_directory_bring_no_small_ones(image_pieces: dict[str, list[Piece]]) -> None:
    policy = first_read(image_pieces)
    library, huge = image_pieces["lib/libbig.so"], image_pieces["lib/huge.bin"]
    assert guessed(policy, library[0]) == [library[-1], *library[1:-1]]
    assert names(guessed(policy, huge[0])) == {"lib/huge.bin"}  # libraries opened: not the modules


def test_neighbours_in_the_blob_come_along_across_directories(image_pieces: dict[str, list[Piece]]) -> None:
    policy = first_read(image_pieces)
    guessed(policy, image_pieces["etc/a.conf"][0])
    guesses = guessed(policy, image_pieces["etc/c.conf"][0])  # etc's last file: share/ follows it
    assert names(guesses) == {"etc/b.conf", *list(SHARED)[: len(names(guesses)) - 1]}
    assert size(guesses) <= size([image_pieces["etc/b.conf"][0]]) + NEIGHBOURS
    assert all(p.end - p.start <= SMALL_FILE for p in guesses)


def test_a_copy_of_a_file_counts_as_the_file(image_pieces: dict[str, list[Piece]]) -> None:
    """The image has one piece per digest: a read of a copy fetches the first copy's bytes, and the
    guesses are made from where that copy lies (its siblings serve the copies' siblings too)."""
    policy = first_read(image_pieces)
    copies = [image_pieces[name.replace("etc/", "var/")][0] for name in CONFIGS]
    originals = [image_pieces[name][0] for name in CONFIGS]
    assert copies[0] is not originals[0] and copies[0].start != originals[0].start
    assert guessed(policy, copies[0]) == []
    named = set(guessed(policy, copies[2]))
    assert originals[1] in named
    assert not named & set(guessed(policy, originals[1]))  # nothing named twice


def test_a_small_layer_comes_whole_from_its_second_file(image_pieces: dict[str, list[Piece]]) -> None:
    policy = first_read(image_pieces)
    assert guessed(policy, image_pieces["app/app.py"][0]) == []
    assert names(guessed(policy, image_pieces["app/settings.py"][0])) == {"app/data.json"}


def test_no_miss_brings_more_than_the_budget(image_pieces: dict[str, list[Piece]]) -> None:
    policy = first_read(image_pieces)
    for pieces in image_pieces.values():
        assert size(guessed(policy, pieces[0])) <= MISS_BUDGET


def test_guesses_next_to_a_readers_range_ride_in_it(image_pieces: dict[str, list[Piece]]) -> None:
    modules = [image_pieces[name][0] for name in MODULES]
    demand = coalesce([modules[10]])
    riders = ride_along(demand, modules)
    assert modules[10] in riders and modules[11] in riders  # 20 KB on: within the gap
    assert all(
        p.start >= demand[0].start - COALESCE_GAP and p.end <= demand[0].end + COALESCE_GAP for p in riders
    )
    assert modules[20] not in riders


def test_guesses_go_in_small_requests(image_pieces: dict[str, list[Piece]]) -> None:
    modules = [image_pieces[name][0] for name in MODULES]
    scattered = modules[::2]  # gaps of one file (20 KB): coalesced all the same
    for limit in (0, GUESS_REQUEST):
        batches = requests(scattered, limit)
        assert sorted(p.start for group in batches for r in group for p in r.pieces) == [
            p.start for p in scattered
        ]
        if limit:
            assert len(batches) > 1
            assert all(sum(r.end - r.start for r in group) <= limit for group in batches)
        else:
            assert len(batches) == 1
    one_big = [image_pieces["lib/huge.bin"][1]]  # a piece larger than the limit still goes, alone
    assert [[(r.start, r.end) for r in g] for g in requests(one_big, 1)] == [
        [(one_big[0].start, one_big[0].end)]
    ]
    assert isinstance(requests(one_big)[0][0], Range)


def test_what_no_reader_waits_for_fetches_no_gaps(image_pieces: dict[str, list[Piece]]) -> None:
    modules = [image_pieces[name][0] for name in MODULES]
    scattered = modules[::2]  # gaps of one file (20 KB): a reader's request takes them
    assert [len(group) for group in requests(scattered)] == [1]
    groups = requests(scattered, gap=AHEAD_GAP)  # a profile's: the pieces' bytes alone, 32 to a request
    assert [(r.start, r.end) for group in groups for r in group] == [(p.start, p.end) for p in scattered]
    assert len(groups) == -(-len(scattered) // RANGES_PER_REQUEST)


# -- through a mount --------------------------------------------------------------------------------


def stats(root: Path, point: Path) -> dict[str, int]:
    data: dict[str, int] = json.loads(run_cli(root, "mount", "--stats", str(point)).stdout)
    return data


def settled(root: Path, point: Path) -> dict[str, int]:
    """The mount's statistics once what it fetches has come (no more pieces for a while)."""
    last = stats(root, point)
    for _ in range(50):
        time.sleep(0.2)
        now = stats(root, point)
        if now["pieces_fetched"] == last["pieces_fetched"]:
            return now
        last = now
    raise AssertionError("the mount kept fetching")


@pytest.mark.privileged
def test_a_start_that_reads_a_directory_finds_its_files_fetched(tmp_path: Path, mount: Mounter) -> None:
    publisher = tmp_path / "publisher"
    run_cli(publisher, "import", str(make_tar(tmp_path / "base.tar", base_layer())), "modules:1")
    registry = Registry(tmp_path / "registry")
    try:
        ref = f"{registry.address}/test/modules:1"
        run_cli(publisher, "push", "modules:1", ref)
        root = tmp_path / "client"
        pull_lazily(root, ref)
        point = mount(root, ref)
        names = list(MODULES)
        for name in names[:2]:  # two modules of a directory, as an import would
            assert (point / name).read_bytes() == MODULES[name]
        after_two = settled(root, point)
        assert after_two["pieces_fetched"] > 2  # the directory's other small files came along
        for name in names[2:6]:  # the next imports find them here
            assert (point / name).read_bytes() == MODULES[name]
        after = stats(root, point)
    finally:
        registry.stop()
    assert after["cache_misses"] == after_two["cache_misses"]
    assert after["verification_failures"] == 0 and after["fetch_errors"] == 0
