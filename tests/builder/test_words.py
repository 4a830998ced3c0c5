"""Variable expansion and word splitting follow BuildKit's shell lexer (shell/lex.go), not bash."""

from __future__ import annotations

import pytest

from builder.errors import BuildError
from builder.words import SubstitutionError, expand_heredoc, expand_word, expand_words

ENV = {
    "name": "world",
    "empty": "",
    "spaced": "a  b",
    "path": "/usr/local/lib/archive.tar.gz",
    "url": "http://example.com/http://x",
    "star": "a***yy*",
    "x": "xxyy",
}


def lookup(name: str) -> str | None:
    return ENV.get(name)


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("plain", "plain"),
        ("$name", "world"),
        ("${name}", "world"),
        ("hello-$name!", "hello-world!"),
        ("${name}s", "worlds"),
        ("$names", ""),  # the longest name is taken, and it is unset
        ("$unset", ""),
        ("${unset}", ""),
        ("$", "$"),
        ("a$", "a$"),
        ("$ x", "$ x"),
        ("$1", ""),  # positional parameters are never set
        ("$12x", "x"),
        ("$@", ""),
        ("$$", ""),  # `$` is a special parameter, never set: no PID here
        ("a$$b", "ab"),
        ("a#b # c", "a#b # c"),  # not a comment inside a word
        # quotes
        ("'$name'", "$name"),
        ('"$name"', "world"),
        ("'a \" b'", 'a " b'),
        ('"a \' b"', "a ' b"),
        ("a'b'\"c\"d", "abcd"),
        ('""', ""),
        # escapes
        (r"\$name", "$name"),
        (r"\\$name", "\\world"),
        (r"a\ b", "a b"),
        (r"\a", "a"),
        ("a\\", "a"),  # a trailing escape is dropped
        (r'"a\"b"', 'a"b'),
        (r'"a\$name"', "a$name"),
        (r'"a\\b"', "a\\b"),
        (r'"a\nb"', "a\\nb"),  # inside double quotes other escapes stay literal
        (r"'a\nb'", "a\\nb"),
        ("'\\'", "\\"),
        # ${v:-w} and ${v-w}
        ("${name:-d}", "world"),
        ("${unset:-d}", "d"),
        ("${empty:-d}", "d"),
        ("${empty-d}", ""),
        ("${unset-d}", "d"),
        ("${unset:-}", ""),
        ("${name:-}", "world"),
        ("${unset:-$name}", "world"),
        ("${unset:-${empty:-${name}}}", "world"),  # nested
        ("${unset:-a b}", "a b"),
        ("${unset:-'q}'}", "q}"),
        ("${unset:-\\}}", "}"),
        # ${v:+w} and ${v+w}
        ("${name:+set}", "set"),
        ("${empty:+set}", ""),
        ("${empty+set}", "set"),
        ("${unset+set}", ""),
        ("${name:+${name}!}", "world!"),
        # ${v?m} passes set values through
        ("${name:?oops}", "world"),
        ("${empty?oops}", ""),
        # prefix and suffix removal
        ("${path#*/}", "usr/local/lib/archive.tar.gz"),
        ("${path##*/}", "archive.tar.gz"),
        ("${path%.*}", "/usr/local/lib/archive.tar"),
        ("${path%%.*}", "/usr/local/lib/archive"),
        ("${path%/*}", "/usr/local/lib"),
        ("${x#*x*y}", "y"),
        ("${x#*}", "xxyy"),  # shortest: matches nothing
        ("${x##*}", ""),
        ("${x#}", "xxyy"),
        ("${x%}", "xxyy"),
        ("${x#?}", "xyy"),
        ("${x%%y*}", "xx"),
        ("${star%%\\**\\*}", "a"),  # escaped stars are literal
        ("${x#$unset}", "xxyy"),
        ("${unset#x}", ""),
        # replacement
        ("${x/y/Y}", "xxYy"),
        ("${x//y/Y}", "xxYY"),
        ("${x/x*/-}", "-"),  # `*` is greedy in replacement patterns
        ("${x/?/-}", "-xyy"),
        ("${x//x/}", "yy"),
        ("${x/$unset/ww}", "wwxxyy"),
        ("${x///}", "xxyy"),
        ("${url/http:\\/\\//https:\\/\\/}", "https:\\/\\/example.com/http://x"),
        ("${path//\\//_}", "_usr_local_lib_archive.tar.gz"),
        ("${unset/a/b}", ""),
        # unicode names and values
        ("${name}é", "worldé"),
    ],
)
def test_expand_word(word: str, expected: str) -> None:
    assert expand_word(word, lookup) == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${unset:?must be set}", "unset: must be set"),
        ("${unset?}", "unset: is not allowed to be unset"),
        ("${empty:?}", "empty: is not allowed to be empty"),
        ("${unset:?missing $name}", "unset: missing world"),
        ("${name", "missing '}'"),
        ("${", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:-x}", "bad substitution"),
        ("${{x}}", "bad substitution"),
        ("${name:x}", "unsupported modifier (:x)"),
        ("${name=x}", "unsupported modifier (=)"),
        ("${name^}", "unsupported modifier (^)"),
        ("${name:-x", "missing '}'"),
        ("${x//ww}", "missing '/'"),
        ("${x/a/b", "missing '}'"),
        ("${x#\\x}", "invalid pattern"),
        ("'unclosed", "matching single-quote"),
        ('"unclosed', "matching double-quote"),
        ('"${name}', "matching double-quote"),
    ],
)
def test_expand_word_errors(word: str, message: str) -> None:
    with pytest.raises(SubstitutionError) as caught:
        expand_word(word, lookup)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, BuildError)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("  a\tb\n", ["a", "b"]),
        ("$spaced", ["a", "b"]),  # an unquoted expansion is split
        ('"$spaced"', ["a  b"]),
        ("'$spaced'", ["$spaced"]),
        ("x$spaced", ["xa", "b"]),
        ('"a b" c', ["a b", "c"]),
        (r"a\ b c", ["a b", "c"]),
        ("$empty", []),
        ('""', []),  # an empty quoted word disappears, as in BuildKit
        ("a '' b", ["a", "b"]),
        ('"${name}s" ${unset:-x y}', ["worlds", "x", "y"]),
        ("8080/tcp ${unset:-9090}/udp", ["8080/tcp", "9090/udp"]),
        ("", []),
    ],
)
def test_expand_words(text: str, expected: list[str]) -> None:
    assert expand_words(text, lookup) == expected


def test_backtick_escape() -> None:
    """With `# escape=`` the backslash is an ordinary character (Windows paths)."""
    assert expand_word(r"C:\Users\$name", lookup, "`") == "C:\\Users\\world"
    assert expand_word("`$name", lookup, "`") == "$name"
    assert expand_word("a` b", lookup, "`") == "a b"
    assert expand_word('"a`"b"', lookup, "`") == 'a"b'
    assert expand_words(r"C:\a\b `$x c:\d", lookup, "`") == ["C:\\a\\b", "$x", "c:\\d"]


def test_bad_escape_character() -> None:
    with pytest.raises(ValueError):
        expand_word("x", lookup, "/")


def test_heredoc_expansion_keeps_quotes() -> None:
    """COPY heredoc bodies: variables expanded, quotes kept, backslash escapes processed."""
    body = "name='$name' \"$name\"\nprice: \\$5\n${unset:-dflt}\n"
    assert expand_heredoc(body, lookup) == "name='world' \"world\"\nprice: $5\ndflt\n"


def test_lookup_order() -> None:
    """The modifier's word is expanded before the variable is looked up, as in BuildKit."""
    seen: list[str] = []

    def recording(name: str) -> str | None:
        seen.append(name)
        return ENV.get(name)

    assert expand_word("$name-${unset:-$empty}", recording) == "world-"
    assert seen == ["name", "empty", "unset"]
