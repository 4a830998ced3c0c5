"""The merged image tree: layers stacked with OCI whiteouts, links and chroot-like lookups."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from storage.errors import NotFound
from storage.layer_reader import FileRangeSource, LayerReader
from storage.layer_writer import write_chunked_layer
from storage.toc import LayerToc
from storage.tree import ImageTree
from tests.tarfiles import info, make_tar


def layer(tmp_path: Path, name: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> LayerToc:
    tar = make_tar(tmp_path / f"{name}.tar", members)
    blob = tmp_path / f"{name}.zst"
    with open(blob, "wb") as out:
        write_chunked_layer(tar, out)
    return LayerReader.open(FileRangeSource(blob)).toc


@pytest.fixture
def tree(tmp_path: Path) -> ImageTree:
    lower = layer(
        tmp_path,
        "lower",
        [
            (info("etc", tarfile.DIRTYPE), None),
            (info("etc/keep"), b"keep"),
            (info("etc/gone"), b"gone"),
            (info("opaque", tarfile.DIRTYPE), None),
            (info("opaque/old"), b"old"),
            (info("replaced"), b"file"),
            (info("data", tarfile.DIRTYPE), None),
            (info("data/deep", tarfile.DIRTYPE), None),
            (info("data/deep/file"), b"deep"),
        ],
    )
    upper = layer(
        tmp_path,
        "upper",
        [
            (info("etc/.wh.gone"), b""),
            (info("opaque", tarfile.DIRTYPE, mode=0o700), None),
            (info("opaque/.wh..wh..opq"), b""),
            (info("opaque/new"), b"new"),
            (info("replaced", tarfile.DIRTYPE), None),
            (info(".wh.data"), b""),
            (info("bin", tarfile.DIRTYPE), None),
            (info("bin/tool"), b"tool"),
            (info("bin/hard", tarfile.LNKTYPE, linkname="bin/tool"), None),
            (info("bin/abs", tarfile.SYMTYPE, linkname="/etc/keep"), None),
            (info("bin/up", tarfile.SYMTYPE, linkname="../../../../etc/keep"), None),
            (info("bin/loop", tarfile.SYMTYPE, linkname="loop"), None),
            (info("implicit/dir/file"), b"implicit"),
        ],
    )
    return ImageTree.from_tocs([lower, upper])


def paths(tree: ImageTree) -> set[str]:
    return {path for path, _ in tree.walk()}


def test_whiteout_hides_a_lower_file(tree: ImageTree) -> None:
    assert "etc/keep" in paths(tree) and "etc/gone" not in paths(tree)


def test_whiteout_hides_a_lower_directory_tree(tree: ImageTree) -> None:
    assert not any(p.startswith("data") for p in paths(tree))


def test_opaque_directory_hides_lower_children_but_keeps_its_own(tree: ImageTree) -> None:
    node = tree.lookup("opaque")
    assert set(node.children or {}) == {"new"}
    assert node.entry.mode == 0o700  # the upper layer's metadata wins


def test_directory_replaces_a_lower_file(tree: ImageTree) -> None:
    assert tree.lookup("replaced").is_dir


def test_whiteout_files_are_not_shown(tree: ImageTree) -> None:
    assert not any(".wh." in p for p in paths(tree))


def test_hard_link_reads_the_data_of_its_target(tree: ImageTree) -> None:
    node = tree.lookup("bin/hard")
    assert node.kind == "reg" and node.content.path == "bin/tool" and node.content.size == 4


def test_symlinks_resolve_inside_the_image_root(tree: ImageTree) -> None:
    assert tree.lookup("bin/abs").entry.path == "etc/keep"
    assert tree.lookup("bin/up").entry.path == "etc/keep"  # `..` stops at the image root
    assert tree.lookup("bin/abs", follow_last=False).entry.type == "symlink"


def test_missing_parents_are_implicit_directories(tree: ImageTree) -> None:
    assert tree.lookup("implicit/dir").is_dir
    assert tree.lookup("implicit/dir/file").entry.size == len(b"implicit")


def test_lookup_errors(tree: ImageTree) -> None:
    with pytest.raises(NotFound):
        tree.lookup("etc/gone")
    with pytest.raises(Exception, match="too many levels"):
        tree.lookup("bin/loop")


@pytest.mark.parametrize(
    ("upper", "expected"),
    [
        ([("a/b/new", b"n"), ("a/.wh..wh..opq", b"")], {"a", "a/b", "a/b/new"}),
        ([("a/b", None), ("a/.wh..wh..opq", b"")], {"a", "a/b"}),
        ([("a/b/new", b"n"), ("a/.wh.b", b"")], {"a", "a/b", "a/b/new", "a/other"}),
    ],
)
def test_whiteouts_hide_only_lower_layers_whatever_their_order(
    tmp_path: Path, upper: list[tuple[str, bytes | None]], expected: set[str]
) -> None:
    lower = layer(tmp_path, "lower", [(info("a/b/file"), b"old"), (info("a/other"), b"old")])
    members = [(info(n, tarfile.DIRTYPE), None) if d is None else (info(n), d) for n, d in upper]
    tree = ImageTree.from_tocs([lower, layer(tmp_path, "upper", members)])
    assert paths(tree) - {""} == expected
