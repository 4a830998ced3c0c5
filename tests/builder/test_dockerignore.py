""".dockerignore follows moby's patternmatcher: last match wins, `!` exceptions, `**`, parent dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.dockerignore import DockerIgnore
from builder.errors import BuildError


def excluded(patterns: str, path: str) -> bool:
    return DockerIgnore.parse(patterns).excluded(path)


@pytest.mark.parametrize(
    ("patterns", "path", "expected"),
    [
        # the Dockerfile reference's examples
        ("*/temp*", "somedir/temporary.txt", True),
        ("*/temp*", "somedir/temp", True),
        ("*/temp*", "temporary.txt", False),
        ("*/temp*", "a/b/temporary.txt", False),
        ("*/*/temp*", "somedir/subdir/temporary.txt", True),
        ("temp?", "tempa", True),
        ("temp?", "tempab", False),
        ("temp?", "temp", False),
        ("**/*.go", "main.go", True),
        ("**/*.go", "a/b/c/x.go", True),
        ("**/*.go", "a/b/c/x.gox", False),
        # plain names match at the top only, and everything below a matched directory
        ("node_modules", "node_modules", True),
        ("node_modules", "node_modules/a/b.js", True),
        ("node_modules", "web/node_modules/a.js", False),
        ("**/node_modules", "web/node_modules/a.js", True),
        # cleaning: leading "/" and "./", trailing "/", ".."
        ("/build", "build/out", True),
        ("./build/", "build", True),
        ("a/../b", "b", True),
        ("a//b", "a/b", True),
        ("  spaced  ", "spaced", True),
        # `*` and `?` never cross "/"
        ("*", "a", True),
        ("*", "a/b", True),  # through its parent "a"
        ("*.txt", "dir/a.txt", False),
        ("a/*", "a/b/c", True),
        ("a/*/c", "a/b/c", True),
        ("a/*/c", "a/b/x/c", False),
        ("a?c", "a/c", False),
        # `**`
        ("**", "anything/at/all", True),
        ("a/**", "a/b/c", True),
        ("a/**", "a", False),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("a/**/z", "a/b/c/zz", False),
        ("**/b/**", "a/b/c", True),
        # character classes and escapes
        ("file[0-9].txt", "file7.txt", True),
        ("file[0-9].txt", "filex.txt", False),
        ("file[^0-9].txt", "filex.txt", True),
        ("\\*.txt", "*.txt", True),
        ("\\*.txt", "a.txt", False),
        # regular-expression characters are literal
        ("a+b(c).txt", "a+b(c).txt", True),
        ("a.txt", "abtxt", False),
        ("$x{1}", "$x{1}", True),
        # the context itself is never excluded
        ("*", ".", False),
        ("**", "", False),
    ],
)
def test_patterns(patterns: str, path: str, expected: bool) -> None:
    assert excluded(patterns, path) is expected


def test_exceptions_last_match_wins() -> None:
    """The reference's README example, in both orders."""
    first = DockerIgnore.parse("*.md\n!README*.md\nREADME-secret.md\n")
    assert first.excluded("CHANGES.md")
    assert not first.excluded("README.md")
    assert first.excluded("README-secret.md")
    second = DockerIgnore.parse("*.md\nREADME-secret.md\n!README*.md\n")
    assert not second.excluded("README-secret.md")
    assert second.excluded("other.md")


def test_exception_inside_an_excluded_directory() -> None:
    ignore = DockerIgnore.parse("docs\n!docs/keep.md\n")
    assert ignore.excluded("docs")
    assert ignore.excluded("docs/other.md")
    assert not ignore.excluded("docs/keep.md")


def test_exception_before_exclusion_has_no_effect() -> None:
    assert excluded("!keep.txt\n*.txt\n", "keep.txt")


def test_exclude_everything_but() -> None:
    ignore = DockerIgnore.parse("*\n!src\n!Dockerfile\nsrc/**/*.pyc\n")
    assert ignore.excluded("README.md")
    assert ignore.excluded("tests/test_x.py")
    assert not ignore.excluded("Dockerfile")
    assert not ignore.excluded("src")
    assert not ignore.excluded("src/pkg/mod.py")
    assert ignore.excluded("src/pkg/mod.pyc")


def test_parse_comments_blank_lines_and_bom() -> None:
    ignore = DockerIgnore.parse("\ufeff# comment\n\n   \n*.log\r\n  # not at column 0: a pattern\n! tmp \n")
    assert [(p.text, p.exception) for p in ignore.patterns] == [
        ("*.log", False),
        ("# not at column 0: a pattern", False),
        ("tmp", True),
    ]
    assert ignore.excluded("x.log")
    assert not ignore.excluded("# comment")


def test_empty_ignores_nothing() -> None:
    ignore = DockerIgnore.parse("")
    assert ignore.patterns == []
    assert not ignore.excluded("anything/at/all")


@pytest.mark.parametrize("text", ["!\n", "! \n", "[a\n"])
def test_bad_patterns(text: str) -> None:
    with pytest.raises(BuildError) as caught:
        DockerIgnore.parse(text)
    assert ".dockerignore" in str(caught.value)
    assert "\n" not in str(caught.value)


# --- finding the file -----------------------------------------------------------------------


def test_for_context(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    dockerfile = context / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    assert DockerIgnore.for_context(context, dockerfile).patterns == []

    (context / ".dockerignore").write_text("*.log\n")
    assert DockerIgnore.for_context(context, dockerfile).excluded("a.log")

    (context / "Dockerfile.dockerignore").write_text("*.tmp\n")
    ignore = DockerIgnore.for_context(context, dockerfile)
    assert ignore.excluded("a.tmp")
    assert not ignore.excluded("a.log")  # the Dockerfile's own ignore file wins, it is not merged


def test_for_context_with_a_dockerfile_elsewhere(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    context.mkdir()
    (context / ".dockerignore").write_text("*.log\n")
    other = tmp_path / "build" / "app.Dockerfile"
    other.parent.mkdir()
    other.write_text("FROM scratch\n")
    assert DockerIgnore.for_context(context, other).excluded("a.log")
    (other.parent / "app.Dockerfile.dockerignore").write_text("secret\n")
    ignore = DockerIgnore.for_context(context, other)
    assert ignore.excluded("secret")
    assert not ignore.excluded("a.log")


def test_for_context_unreadable(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").mkdir()  # a directory where the file should be
    with pytest.raises(BuildError, match="cannot read"):
        DockerIgnore.for_context(tmp_path, tmp_path / "Dockerfile")


# --- walking a context ----------------------------------------------------------------------


def make_tree(root: Path, files: list[str]) -> None:
    for name in files:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(name)


def test_walk(tmp_path: Path) -> None:
    make_tree(tmp_path, ["Dockerfile", "a.log", "src/main.py", "src/cache/x.pyc", "empty/", "b-c", "b/d"])
    os.symlink("/etc", tmp_path / "link-to-etc")
    os.symlink("src", tmp_path / "link-to-src")
    ignore = DockerIgnore.parse("*.log\n**/cache\n")
    assert list(ignore.walk(tmp_path)) == [
        "Dockerfile",
        "b",
        "b-c",
        "b/d",
        "empty",
        "link-to-etc",  # symlinks are listed, never followed
        "link-to-src",
        "src",
        "src/main.py",
    ]


def test_walk_descends_excluded_directories_with_exceptions(tmp_path: Path) -> None:
    make_tree(tmp_path, ["vendor/a/keep.txt", "vendor/a/drop.txt", "vendor/b/x", "other/keep.txt", "top.txt"])
    ignore = DockerIgnore.parse("vendor\nother\n!vendor/*/keep.txt\n")
    assert list(ignore.walk(tmp_path)) == ["top.txt", "vendor", "vendor/a", "vendor/a/keep.txt"]


def test_walk_with_double_star_exception(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a/b/c/README.md", "a/b/c/x.py", "a/y.md", "z.py"])
    ignore = DockerIgnore.parse("*\n!**/*.md\n")
    assert list(ignore.walk(tmp_path)) == ["a", "a/b", "a/b/c", "a/b/c/README.md", "a/y.md"]


def test_walk_everything_excluded(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a/b", "c"])
    assert list(DockerIgnore.parse("*\n").walk(tmp_path)) == []


def test_walk_missing_context(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot read"):
        list(DockerIgnore.parse("").walk(tmp_path / "missing"))
