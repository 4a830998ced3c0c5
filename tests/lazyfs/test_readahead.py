"""Read-ahead along a layer's blob: when a reader opening files gets the files after them fetched too."""

from __future__ import annotations

import hashlib

from lazyfs.readahead import FILES_IN_ORDER, READ_AHEAD, ReadAhead, blob_order
from storage.digest import Digest
from storage.pieces import Frame, Piece

FILE = 20_000  # compressed bytes of each small file of the layer
HEADER = 512  # what lies between two files in the blob (a tar header)


def layer(files: int = 200) -> list[Piece]:
    """A layer of small one-piece files, one after the other in the blob."""
    pieces = []
    start = 0
    for n in range(files):
        start += HEADER
        digest = Digest("sha256:" + hashlib.sha256(str(n).encode()).hexdigest())
        frame = Frame(start, start + FILE, 0, FILE)
        pieces.append(Piece(0, digest, 0, FILE, (frame,), start + FILE, f"lib/mod{n:03d}.py"))
        start += FILE
    return pieces


def read_ahead(pieces: list[Piece]) -> ReadAhead:
    ahead = ReadAhead()
    ahead.know_layout(blob_order(pieces))
    return ahead


def test_a_reader_opening_every_file_in_order_gets_the_next_files_fetched() -> None:
    pieces = layer()
    ahead = read_ahead(pieces)
    fetched: set[Digest] = set()
    along: list[Piece] = []
    for piece in pieces[: FILES_IN_ORDER + 1]:  # a copy of the tree: each file where the last ended
        along = ahead.on_miss(piece, piece, fetched.__contains__)
        fetched.update(p.digest for p in [piece, *along])  # it reads on through them
    assert along, "no read-ahead after files opened in order"
    assert along[0] is pieces[FILES_IN_ORDER + 1]
    assert sum(p.end - p.start for p in along) <= READ_AHEAD + FILE


def test_files_a_copy_finds_fetched_already_do_not_break_its_order() -> None:
    pieces = layer()
    ahead = read_ahead(pieces)
    fetched = {p.digest for p in pieces[1::2]}  # every other file fetched with an earlier miss
    along: list[Piece] = []
    for piece in pieces[0 : 2 * FILES_IN_ORDER + 2 : 2]:  # the copy misses only on the others
        along = ahead.on_miss(piece, piece, fetched.__contains__)
        fetched.update(p.digest for p in [piece, *along])
    assert along, "no read-ahead for a copy whose skipped files were all fetched"


def test_a_start_opening_a_few_files_in_a_row_between_guesses_gets_no_read_ahead() -> None:
    # ruby again: a directory's small files were guessed and fetched, and the start then opened
    # three of them in a row, the files between them fetched (FILES_IN_ORDER was three)
    pieces = layer()
    ahead = read_ahead(pieces)
    fetched = {p.digest for p in pieces[:40]}  # guessed with an earlier miss
    for piece in pieces[10 : 10 + FILES_IN_ORDER - 1]:
        assert ahead.on_miss(piece, piece, fetched.__contains__) == [], f"read-ahead after {piece.name}"


def test_a_start_opening_a_few_files_forward_in_the_blob_gets_no_read_ahead() -> None:
    # ruby's start: rubygems' files opened in blob order, each a few files past the last one read,
    # the files in between never fetched (the old rule, a miss within 256 KB of the last one, drew
    # 1.7 MB of read-ahead it never read)
    pieces = layer()
    ahead = read_ahead(pieces)
    fetched: set[Digest] = set()
    for piece in pieces[0:40:3]:
        along = ahead.on_miss(piece, piece, fetched.__contains__)
        assert along == [], f"read-ahead after opening {piece.name}"
        fetched.add(piece.digest)


def test_a_file_opened_behind_the_last_one_is_not_in_order() -> None:
    pieces = layer()
    ahead = read_ahead(pieces)
    fetched: set[Digest] = set()
    for piece in [*pieces[10 : 10 + FILES_IN_ORDER], pieces[5], pieces[6]]:
        along = ahead.on_miss(piece, piece, fetched.__contains__)
        fetched.update(p.digest for p in [piece, *along])  # it reads on through them
    assert along == []
