"""The build context: Go wildcards, .dockerignore, paths that leave the context, remembered digests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.context import BuildContext, OutsideContext, go_match
from builder.dockerignore import DockerIgnore
from builder.errors import BuildError
from tests.builder.trees import write_tree


def make(root: Path, files: dict[str, bytes | str]) -> Path:
    return write_tree(root, files)


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*", ".hidden", True),  # Go's * matches a leading dot
        ("*.txt", "a.txt", True),
        ("*.txt", "a.txt.bak", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[a-c]x", "bx", True),
        ("[^a-c]x", "bx", False),
        ("[^a-c]x", "dx", True),
        ("[\\]]", "]", True),
        ("\\*", "*", True),
        ("\\*", "a", False),
        ("file[0-9][0-9]", "file42", True),
    ],
)
def test_wildcards_are_go_filepath_match(pattern: str, name: str, matches: bool) -> None:
    assert go_match(pattern, name) is matches


@pytest.mark.parametrize("pattern", ["[a", "[]a]", "[a-]", "x\\", "[z-a]"])
def test_bad_patterns_are_build_errors(pattern: str) -> None:
    with pytest.raises(BuildError, match="bad pattern"):
        go_match(pattern, "a")


def test_glob_cleans_paths_and_follows_links_inside(tmp_path: Path) -> None:
    files: dict[str, bytes | str] = {"a.txt": b"", "b.txt": b"", "sub/c.txt": b""}
    files |= {"lnk": "sub", "sub/up": "../a.txt"}
    root = make(tmp_path / "ctx", files)
    context = BuildContext.plain(root)
    assert context.glob("*.txt") == [("a.txt", "a.txt"), ("b.txt", "b.txt")]
    assert context.glob("/sub/../a.txt") == [("a.txt", "a.txt")]  # absolute = from the context root
    assert context.glob("./lnk/c*") == [("lnk/c.txt", "sub/c.txt")]
    assert context.glob("sub/up") == [("sub/up", "a.txt")]
    assert context.glob(".") == [("", "")]
    assert context.glob("nothing*") == []


@pytest.mark.parametrize(
    ("files", "pattern"),
    [
        ({}, "../x"),
        ({}, "sub/../../x"),
        ({"abs": "/etc/passwd"}, "abs"),
        ({"rel": "../outside"}, "rel"),
        ({"rel": "../outside"}, "rel/inner"),
        ({"d/deep": "../../outside"}, "d/*"),
    ],
)
def test_paths_leaving_the_context_are_refused(
    tmp_path: Path, files: dict[str, bytes | str], pattern: str
) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/inner").write_bytes(b"secret")
    context = BuildContext.plain(make(tmp_path / "ctx", {"keep": b"", **files}))
    with pytest.raises(OutsideContext, match="outside the build context"):
        context.glob(pattern)


def test_dockerignore_hides_paths_but_keeps_parents_of_exceptions(tmp_path: Path) -> None:
    root = make(
        tmp_path / "ctx",
        {"app/main.py": b"", "app/debug.log": b"", "docs/a.md": b"", "docs/keep.md": b"", ".git/HEAD": b""},
    )
    context = BuildContext(root, DockerIgnore.parse("*/*.log\ndocs\n!docs/keep.md\n.git\n"))
    assert context.children("") == ["app", "docs"]
    assert context.children("app") == ["main.py"]
    assert context.children("docs") == ["keep.md"]
    assert context.glob("docs/*") == [("docs/keep.md", "docs/keep.md")]
    assert context.glob(".git/HEAD") == []
    assert context.glob("app/debug.log") == []


def test_file_digests_are_remembered_across_builds(tmp_path: Path) -> None:
    root = make(tmp_path / "ctx", {"big": b"x" * 100})
    cache = tmp_path / "cache" / "digests.json"
    first = BuildContext.plain(root)
    first.digest_cache = cache
    st = first.lstat("big")
    digest = first.file_digest("big", st)
    first.save_digests()
    # Prove the next build reads the remembered digest instead of hashing: plant a marker value.
    saved = json.loads(cache.read_text())
    saved["digests"] = {key: "remembered" for key in saved["digests"]}
    cache.write_text(json.dumps(saved))
    second = BuildContext(root, DockerIgnore.parse(""), digest_cache=cache)
    assert second.file_digest("big", second.lstat("big")) == "remembered"
    # A changed file is hashed again.
    (root / "big").write_bytes(b"y" * 100)
    os.utime(root / "big", ns=(st.st_mtime_ns + 10**9, st.st_mtime_ns + 10**9))
    assert second.file_digest("big", second.lstat("big")) not in ("remembered", digest)
