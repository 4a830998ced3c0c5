"""The Dockerfile parser accepts what BuildKit's frontend accepts and rejects the rest with file:line."""

from __future__ import annotations

import json
import textwrap

import pytest

from builder import Dockerfile, Instruction, parse_dockerfile
from builder.errors import BuildError, DockerfileSyntaxError
from builder.instructions import KEYWORDS, parse_duration_ns
from builder.syntax import Heredoc


def parse(text: str) -> Dockerfile:
    return parse_dockerfile(textwrap.dedent(text).lstrip("\n"))


def only(text: str) -> Instruction:
    """The one instruction after `FROM scratch`."""
    dockerfile = parse("FROM scratch\n" + textwrap.dedent(text).lstrip("\n"))
    assert len(dockerfile.instructions) == 2, dockerfile.instructions
    return dockerfile.instructions[1]


def syntax_error(text: str, filename: str = "Dockerfile") -> DockerfileSyntaxError:
    with pytest.raises(DockerfileSyntaxError) as caught:
        parse_dockerfile(textwrap.dedent(text).lstrip("\n"), filename)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{filename}:{caught.value.line}: ")
    assert isinstance(caught.value, BuildError)
    return caught.value


# --- structure ------------------------------------------------------------------------------


def test_minimal() -> None:
    dockerfile = parse_dockerfile("FROM busybox\n")
    assert dockerfile.directives == {}
    assert dockerfile.escape == "\\"
    (from_,) = dockerfile.instructions
    assert from_ == Instruction("FROM", ["busybox"], False, {}, (), 1, 1, "FROM busybox")


def test_keywords_are_case_insensitive() -> None:
    dockerfile = parse("""
        from busybox As Build
        Run echo hi
        cOpY a b
    """)
    assert [i.keyword for i in dockerfile.instructions] == ["FROM", "RUN", "COPY"]
    assert dockerfile.instructions[0].args == ["busybox As Build"]
    assert dockerfile.instructions[1].original == "Run echo hi"


@pytest.mark.parametrize(
    ("line", "keyword", "args", "exec_form"),
    [
        ("ADD a.tar /x/", "ADD", ["a.tar /x/"], False),
        ('ADD ["a b", "/x/"]', "ADD", ["a b", "/x/"], True),
        ("ARG V=1", "ARG", ["V=1"], False),
        ("CMD echo hi", "CMD", ["echo hi"], False),
        ('CMD ["echo", "hi"]', "CMD", ["echo", "hi"], True),
        ("CMD []", "CMD", [], True),
        ("COPY a b /c/", "COPY", ["a b /c/"], False),
        ('COPY ["a", "/c/"]', "COPY", ["a", "/c/"], True),
        ('ENTRYPOINT ["/bin/app", "--flag"]', "ENTRYPOINT", ["/bin/app", "--flag"], True),
        ("ENTRYPOINT exec app", "ENTRYPOINT", ["exec app"], False),
        ("ENV A=1 B=2", "ENV", ["A=1 B=2"], False),
        ("EXPOSE 80 443/tcp", "EXPOSE", ["80 443/tcp"], False),
        ("HEALTHCHECK NONE", "HEALTHCHECK", ["NONE"], False),
        ("HEALTHCHECK CMD curl -f http://x/", "HEALTHCHECK", ["CMD-SHELL", "curl -f http://x/"], False),
        ('HEALTHCHECK CMD ["curl", "-f", "x"]', "HEALTHCHECK", ["CMD", "curl", "-f", "x"], True),
        ("LABEL a=b", "LABEL", ["a=b"], False),
        ("MAINTAINER Jane <j@example.com>", "MAINTAINER", ["Jane <j@example.com>"], False),
        ("RUN apt-get update && make", "RUN", ["apt-get update && make"], False),
        ('RUN ["/bin/sh", "-c", "echo hi"]', "RUN", ["/bin/sh", "-c", "echo hi"], True),
        ('SHELL ["/bin/bash", "-eo", "pipefail"]', "SHELL", ["/bin/bash", "-eo", "pipefail"], True),
        ("STOPSIGNAL SIGTERM", "STOPSIGNAL", ["SIGTERM"], False),
        ("USER 1000:1000", "USER", ["1000:1000"], False),
        ("VOLUME /data /logs", "VOLUME", ["/data /logs"], False),
        ('VOLUME ["/data"]', "VOLUME", ["/data"], True),
        ("WORKDIR /app", "WORKDIR", ["/app"], False),
        ("ONBUILD RUN echo child", "ONBUILD", ["RUN echo child"], False),
        # not JSON: the shell form, as written
        ("CMD [echo, hi]", "CMD", ["[echo, hi]"], False),
        ('CMD ["echo", "hi"] extra', "CMD", ['["echo", "hi"] extra'], False),
        ("RUN [ -f /x ] && echo y", "RUN", ["[ -f /x ] && echo y"], False),
        ("RUN echo a # not a comment", "RUN", ["echo a # not a comment"], False),
        ("RUN   spaced\t \targs  ", "RUN", ["spaced\t \targs"], False),
        ("RUN\techo tab", "RUN", ["echo tab"], False),
    ],
)
def test_instruction_forms(line: str, keyword: str, args: list[str], exec_form: bool) -> None:
    instruction = only(line)
    assert (instruction.keyword, instruction.args, instruction.exec_form) == (keyword, args, exec_form)
    assert instruction.original == line.strip()


def test_all_eighteen_instructions_parse() -> None:
    lines = {
        "ADD": "ADD a /b",
        "ARG": "ARG x",
        "CMD": "CMD x",
        "COPY": "COPY a /b",
        "ENTRYPOINT": "ENTRYPOINT x",
        "ENV": "ENV a=b",
        "EXPOSE": "EXPOSE 1",
        "FROM": "FROM x",
        "HEALTHCHECK": "HEALTHCHECK NONE",
        "LABEL": "LABEL a=b",
        "MAINTAINER": "MAINTAINER me",
        "ONBUILD": "ONBUILD RUN x",
        "RUN": "RUN x",
        "SHELL": 'SHELL ["sh", "-c"]',
        "STOPSIGNAL": "STOPSIGNAL 9",
        "USER": "USER u",
        "VOLUME": "VOLUME /v",
        "WORKDIR": "WORKDIR /w",
    }
    assert sorted(lines) == sorted(KEYWORDS) and len(KEYWORDS) == 18
    dockerfile = parse_dockerfile("FROM scratch\n" + "\n".join(lines.values()) + "\n")
    assert [i.keyword for i in dockerfile.instructions[1:]] == list(lines)


def test_comments_blank_lines_and_line_numbers() -> None:
    dockerfile = parse("""
        # a comment

          # an indented comment
        FROM scratch

        RUN one
            RUN indented
    """)
    assert [(i.keyword, i.line, i.end_line) for i in dockerfile.instructions] == [
        ("FROM", 4, 4),
        ("RUN", 6, 6),
        ("RUN", 7, 7),
    ]
    assert dockerfile.instructions[2].args == ["indented"]


def test_crlf_and_bom() -> None:
    dockerfile = parse_dockerfile("\ufeffFROM scratch\r\nRUN echo \\\r\n  hi\r\n")
    assert dockerfile.instructions[1].args == ["echo   hi"]
    assert dockerfile.instructions[1].end_line == 3


def test_no_trailing_newline() -> None:
    assert parse_dockerfile("FROM scratch\nRUN x").instructions[1].args == ["x"]


# --- continuations --------------------------------------------------------------------------


def test_continuation_joins_lines_and_keeps_inner_whitespace() -> None:
    instruction = only("""
        RUN apt-get update && \\
            apt-get install -y \\
              curl
    """)
    assert instruction.args == ["apt-get update &&     apt-get install -y       curl"]
    assert (instruction.line, instruction.end_line) == (2, 4)
    assert instruction.original == "RUN " + instruction.args[0]


def test_comment_inside_continuation_is_dropped() -> None:
    """The Dockerfile reference's example: `RUN echo hello \\` `# comment` `world`."""
    instruction = only("""
        RUN echo hello \\
        # comment
          # indented comment
        world
    """)
    assert instruction.args == ["echo hello world"]
    assert instruction.end_line == 5


def test_empty_continuation_lines_are_allowed() -> None:
    instruction = only("RUN echo a \\\n\n   \nb\n")
    assert instruction.args == ["echo a b"]


def test_blanks_after_the_escape_still_continue() -> None:
    assert only("RUN echo a \\  \t\nb\n").args == ["echo a b"]


def test_continuation_at_end_of_file() -> None:
    assert only("RUN echo a \\\n").args == ["echo a"]


def test_escaped_escape_at_end_still_continues() -> None:
    """BuildKit only looks at the last character: `\\\\` at the end continues too."""
    assert only("RUN echo a\\\\\nb\n").args == ["echo a\\b"]


def test_hash_in_the_middle_is_not_a_comment() -> None:
    assert only("ENV url=http://x/#frag").args == ["url=http://x/#frag"]


# --- directives -----------------------------------------------------------------------------


def test_directives() -> None:
    dockerfile = parse("""
        # syntax=docker/dockerfile:1.7
        #  ESCAPE = `
        # check=skip=all
        FROM scratch
    """)
    assert dockerfile.directives == {"syntax": "docker/dockerfile:1.7", "escape": "`", "check": "skip=all"}
    assert dockerfile.escape == "`"


def test_backtick_escape_for_windows_paths() -> None:
    """The reference's example: with escape=` a trailing `\\` is part of a path, not a continuation."""
    dockerfile = parse("""
        # escape=`

        FROM mcr.microsoft.com/windows/servercore
        COPY testfile.txt c:\\
        RUN dir c:\\ `
            /s
    """)
    copy, run = dockerfile.instructions[1:]
    assert copy.args == ["testfile.txt c:\\"]
    assert run.args == ["dir c:\\     /s"]
    assert (run.line, run.end_line) == (5, 6)


@pytest.mark.parametrize(
    "text",
    [
        "\n# escape=`\nFROM scratch\n",  # after a blank line
        "# a comment\n# escape=`\nFROM scratch\n",  # after a comment
        "# unknown=x\n# escape=`\nFROM scratch\n",  # an unknown directive is a comment
        "FROM scratch\n# escape=`\n",  # after an instruction
    ],
)
def test_directive_that_is_only_a_comment(text: str) -> None:
    dockerfile = parse_dockerfile(text)
    assert dockerfile.escape == "\\"
    assert "escape" not in dockerfile.directives


def test_comments_do_not_continue() -> None:
    """`# direc \\` + `tive=value` is no directive: the comment ends, the next line is an instruction."""
    error = syntax_error("# direc \\\ntive=value\nFROM scratch\n")
    assert error.line == 2
    assert "unknown instruction: tive=value" in str(error)


def test_duplicate_directive() -> None:
    error = syntax_error("# escape=\\\n# Escape=`\nFROM scratch\n")
    assert error.line == 2
    assert "only one escape parser directive" in str(error)


def test_bad_escape_directive() -> None:
    error = syntax_error("# escape=x\nFROM scratch\n")
    assert error.line == 1
    assert "invalid escape token" in str(error)


# --- flags ----------------------------------------------------------------------------------


def test_flags() -> None:
    instruction = only("COPY --from=build --chown=app:app --chmod=0755 --link a b /dst/")
    assert instruction.flags == {"from": ["build"], "chown": ["app:app"], "chmod": ["0755"], "link": ["true"]}
    assert instruction.args == ["a b /dst/"]


def test_repeated_flags_and_quotes() -> None:
    instruction = only('RUN --mount=type=cache,target=/root/.cache --mount="type=bind,source=a b" make')
    assert instruction.flags == {"mount": ["type=cache,target=/root/.cache", "type=bind,source=a b"]}
    assert instruction.args == ["make"]


def test_bool_flag_values() -> None:
    assert only("COPY --link=false a /b").flags == {"link": ["false"]}
    assert only("ADD --keep-git-dir=TRUE https://x/y.git /b").flags == {"keep-git-dir": ["true"]}


def test_double_dash_ends_flags() -> None:
    instruction = only("RUN -- --not-a-flag")
    assert instruction.flags == {}
    assert instruction.args == ["--not-a-flag"]


def test_from_platform_and_healthcheck_flags() -> None:
    dockerfile = parse("""
        FROM --platform=$BUILDPLATFORM golang:1.22 AS build
        HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 CMD curl -f http://localhost/
    """)
    from_, health = dockerfile.instructions
    assert from_.flags == {"platform": ["$BUILDPLATFORM"]}
    assert from_.args == ["golang:1.22 AS build"]
    assert health.flags == {"interval": ["30s"], "timeout": ["3s"], "start-period": ["5s"], "retries": ["3"]}
    assert health.args == ["CMD-SHELL", "curl -f http://localhost/"]


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        ("0", 0),
        ("30s", 30_000_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("300ms", 300_000_000),
        ("2us", 2_000),
        (".5s", 500_000_000),
        ("1h2m3s4ms", 3_723_004_000_000),
    ],
)
def test_parse_duration(text: str, nanoseconds: int) -> None:
    assert parse_duration_ns(text) == nanoseconds


@pytest.mark.parametrize("text", ["", "10", "s", "1x", "1s2", "ten seconds", "1 s"])
def test_parse_bad_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ns(text)


def test_healthcheck_zero_means_default() -> None:
    assert only("HEALTHCHECK --interval=0 --retries=0 CMD true").flags == {
        "interval": ["0"],
        "retries": ["0"],
    }


# --- heredocs -------------------------------------------------------------------------------


def test_run_heredoc_script() -> None:
    dockerfile = parse("""
        FROM busybox
        RUN <<EOF
        echo hello
        echo $HOME
        EOF
        RUN echo after
    """)
    run, after = dockerfile.instructions[1:]
    assert run.args == ["<<EOF"]
    assert run.heredocs == (Heredoc("EOF", "echo hello\necho $HOME\n", expand=True, chomp=False),)
    assert (run.line, run.end_line) == (2, 5)
    assert after.line == 6 and after.args == ["echo after"]


def test_heredoc_as_stdin_of_a_command() -> None:
    instruction = only("""
        RUN python3 <<EOF
        print("hi")
        EOF
    """)
    assert instruction.args == ["python3 <<EOF"]
    assert instruction.heredocs == (Heredoc("EOF", 'print("hi")\n', True, False),)


def test_quoted_delimiters_disable_expansion() -> None:
    for delimiter in ("'EOF'", '"EOF"', 'E"O"F'):
        instruction = only(f"RUN cat <<{delimiter}\n$x\nEOF\n")
        assert instruction.heredocs == (Heredoc("EOF", "$x\n", expand=False, chomp=False),), delimiter


def test_chomp_strips_leading_tabs() -> None:
    instruction = only("RUN <<-EOT\n\techo a\n\t\t  b\n  c\n\tEOT\n")
    assert instruction.heredocs == (Heredoc("EOT", "echo a\n  b\n  c\n", True, True),)


def test_without_chomp_a_tabbed_terminator_is_content() -> None:
    instruction = only("RUN <<EOT\n\tEOT\nEOT\n")
    assert instruction.heredocs[0].content == "\tEOT\n"


def test_several_heredocs_on_one_line() -> None:
    instruction = only("""
        COPY <<robots.txt <<humans.txt /usr/share/nginx/html/
        User-agent: *
        robots.txt
        (made by people)
        humans.txt
    """)
    assert instruction.args == ["<<robots.txt <<humans.txt /usr/share/nginx/html/"]
    assert [h.name for h in instruction.heredocs] == ["robots.txt", "humans.txt"]
    assert [h.content for h in instruction.heredocs] == ["User-agent: *\n", "(made by people)\n"]
    assert instruction.end_line == 6


def test_heredoc_body_keeps_blank_lines_comments_and_escapes() -> None:
    instruction = only("RUN <<EOF\n\n# not a comment \\\nEOF \nx\nEOF\n")
    assert instruction.heredocs[0].content == "\n# not a comment \\\nEOF \nx\n"


def test_heredoc_after_continuation_and_empty_body() -> None:
    instruction = only("RUN --network=none \\\n  cat <<EOF\nEOF\n")
    assert instruction.args == ["cat <<EOF"]
    assert instruction.flags == {"network": ["none"]}
    assert instruction.heredocs == (Heredoc("EOF", "", True, False),)


def test_heredoc_with_file_descriptor_and_redirect() -> None:
    instruction = only("RUN 3<<EOF cat <&3 > /out\nx\nEOF\n")
    assert [h.name for h in instruction.heredocs] == ["EOF"]


@pytest.mark.parametrize(
    "line",
    [
        'RUN echo "<<EOF"',  # quoted: not a heredoc
        "RUN echo '<<EOF'",
        "RUN cat<<EOF",  # BuildKit only sees a word that starts with <<
        "RUN echo a << b",  # a space after << ends the word
        'CMD ["cat", "<<EOF"]',  # only RUN, COPY and ADD
        'RUN ["cat", "<<EOF"]',  # never in the exec form
        "ENV a=<<EOF",
    ],
)
def test_not_heredocs(line: str) -> None:
    dockerfile = parse_dockerfile(f"FROM scratch\n{line}\nRUN next\n")
    assert dockerfile.instructions[1].heredocs == ()
    assert dockerfile.instructions[2].args == ["next"]


def test_unterminated_heredoc() -> None:
    error = syntax_error("FROM scratch\nRUN <<EOF\necho hi\n")
    assert error.line == 2
    assert "unterminated heredoc" in str(error) and "'EOF'" in str(error)


def test_onbuild_heredoc() -> None:
    instruction = only("ONBUILD RUN <<EOF\necho child\nEOF\n")
    assert instruction.trigger is not None
    assert instruction.trigger.keyword == "RUN"
    assert instruction.trigger.heredocs == (Heredoc("EOF", "echo child\n", True, False),)
    assert instruction.heredocs == instruction.trigger.heredocs


# --- per-instruction rules ------------------------------------------------------------------


def test_onbuild_trigger_is_parsed() -> None:
    instruction = only("ONBUILD COPY --chown=1 . /app/src")
    assert instruction.args == ["COPY --chown=1 . /app/src"]
    assert instruction.trigger == Instruction(
        "COPY", [". /app/src"], False, {"chown": ["1"]}, (), 2, 2, "COPY --chown=1 . /app/src"
    )


BAD_HEALTHCHECK_FLAGS = [
    ("--interval=10", "HEALTHCHECK --interval: invalid duration '10'"),
    ("--timeout=-1s", "cannot be negative"),
    ("--start-period=10us", "cannot be less than 1ms"),
    ("--retries=x", "expected a whole number"),
    ("--retries=-1", "cannot be negative"),
]
BAD_ONBUILD = [
    ("ONBUILD ONBUILD RUN x", "ONBUILD ONBUILD"),
    ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
    ("ONBUILD maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
    ("ONBUILD", "ONBUILD requires"),
    ("ONBUILD RUUN x", "unknown instruction: RUUN"),
]
BAD_FROM = [
    ("FROM", "FROM requires either one or three arguments"),
    ("FROM a b", "FROM requires either one or three arguments"),
    ("FROM a AS", "FROM requires either one or three arguments"),
    ("FROM a IS b", "expected AS"),
    ("FROM a AS 1st", "invalid name for build stage"),
    ("FROM a AS my$stage", "invalid name for build stage"),
]


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        *[
            (f"FROM scratch\nHEALTHCHECK {flags} CMD true\n", message)
            for flags, message in BAD_HEALTHCHECK_FLAGS
        ],
        *[(f"FROM scratch\n{line}\n", message) for line, message in BAD_ONBUILD],
        *[(f"{line}\n", message) for line, message in BAD_FROM],
    ],
)
def test_bad_healthcheck_flags_onbuild_and_from(dockerfile: str, message: str) -> None:
    assert message in str(syntax_error(dockerfile))


def test_stage_names() -> None:
    dockerfile = parse("FROM a AS Build-1.x_y\nFROM b as other\n")
    assert [i.args for i in dockerfile.instructions] == [["a AS Build-1.x_y"], ["b as other"]]


BAD_FLAGS = [
    ("COPY --form=x a b", "unknown flag --form for COPY"),
    ("ENV --x=1 a=b", "unknown flag --x for ENV"),
    ("RUN --from=x echo", "unknown flag --from for RUN"),
    ("COPY --from a b", "expected a value for --from"),
    ("COPY --from=a --from=b a b", "duplicate flag specified: --from"),
    ("COPY --link=maybe a b", "expected true or false for --link"),
    ('RUN --mount="type=bind echo', "expected a closing"),
]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN", "RUN requires at least one argument"),
        ("COPY", "COPY and ADD require"),
        ("COPY onlyone", "COPY and ADD require"),
        ('ADD ["onlyone"]', "COPY and ADD require"),
        ("ENV", "ENV requires at least one argument"),
        ("LABEL", "LABEL requires at least one argument"),
        ("ARG", "ARG requires at least one argument"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("USER", "USER requires at least one argument"),
        ("WORKDIR", "WORKDIR requires at least one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires at least one argument"),
        ("MAINTAINER", "MAINTAINER requires at least one argument"),
        ("VOLUME", "VOLUME requires at least one path"),
        ("VOLUME []", "VOLUME requires at least one path"),
        ('VOLUME [""]', "VOLUME paths can not be empty"),
        ("SHELL /bin/bash -c", "SHELL requires the arguments in JSON form"),
        ("SHELL []", "SHELL requires the arguments in JSON form"),
        ("HEALTHCHECK", "expected HEALTHCHECK NONE or"),
        ("HEALTHCHECK curl x", "expected HEALTHCHECK NONE or"),
        ("HEALTHCHECK CMD", "HEALTHCHECK CMD requires a command"),
        ("HEALTHCHECK NONE now", "HEALTHCHECK NONE takes no arguments"),
        ('CMD ["a", 1]', "JSON array of strings only"),
        ('RUN ["a", null]', "JSON array of strings only"),
        ("ENV novalue", "ENV novalue: expected a value"),
        ("LABEL novalue", "LABEL novalue: expected a value"),
        ("ENV a=1 b", "can't find = in 'b'"),
        ("ENV =1", "ENV names can not be blank"),
        ("ARG =1", "ARG names can not be blank"),
        ('ENV a="unclosed', "expected a closing"),
        *BAD_FLAGS,
    ],
)
def test_bad_flags_and_missing_or_bad_arguments(line: str, message: str) -> None:
    error = syntax_error(f"FROM scratch\n{line}\n")
    assert error.line == 2
    assert message in str(error)


def test_env_label_arg_forms() -> None:
    dockerfile = parse("""
        ARG A B=2 C=
        FROM scratch
        ENV key value with spaces
        ENV a="x y" b=z\\ w c=''
        LABEL "com.example.vendor"="ACME Inc" version=1.0
    """)
    assert [i.args for i in dockerfile.instructions] == [
        ["A B=2 C="],
        ["scratch"],
        ["key value with spaces"],
        ["a=\"x y\" b=z\\ w c=''"],
        ['"com.example.vendor"="ACME Inc" version=1.0'],
    ]


# --- errors about the file as a whole -------------------------------------------------------


def test_unknown_instruction_names_file_and_line() -> None:
    error = syntax_error("FROM scratch\n\nRUUN echo\n", filename="app.Dockerfile")
    assert str(error).startswith("app.Dockerfile:3: unknown instruction: RUUN")
    assert "did you mean RUN?" in str(error)
    assert (error.filename, error.line) == ("app.Dockerfile", 3)


def test_unknown_instruction_keeps_its_spelling() -> None:
    assert "unknown instruction: frobnicate" in str(syntax_error("FROM a\nfrobnicate x\n"))


@pytest.mark.parametrize("line", ["RUN echo", "ENV a=b", "COPY a b", "ONBUILD RUN x", "LABEL a=b"])
def test_instruction_before_from(line: str) -> None:
    error = syntax_error(f"# comment\nARG V=1\n{line}\nFROM scratch\n")
    assert error.line == 3
    assert "expected FROM before" in str(error)


def test_args_before_from_are_allowed() -> None:
    dockerfile = parse("ARG BASE=alpine\nARG TAG\nFROM $BASE:$TAG\n")
    assert [i.keyword for i in dockerfile.instructions] == ["ARG", "ARG", "FROM"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "# syntax=x\n"])
def test_empty_dockerfile(text: str) -> None:
    assert "expected at least one instruction" in str(syntax_error(text))


def test_only_args() -> None:
    assert "expected a FROM instruction" in str(syntax_error("ARG a=1\n"))


# --- the JSON form of the AST ---------------------------------------------------------------


def test_to_json() -> None:
    dockerfile = parse("""
        # syntax=docker/dockerfile:1
        FROM alpine AS base
        COPY --link <<EOF /etc/motd
        hi
        EOF
        ONBUILD RUN make
    """)
    data = dockerfile.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data[0] == {
        "keyword": "FROM",
        "args": ["alpine AS base"],
        "exec_form": False,
        "flags": {},
        "heredocs": [],
        "line": 2,
        "end_line": 2,
        "original": "FROM alpine AS base",
        "trigger": None,
        "expanded": False,
    }
    assert data[1]["heredocs"] == [{"name": "EOF", "content": "hi\n", "expand": True, "chomp": False}]
    assert data[1]["flags"] == {"link": ["true"]}
    assert (data[1]["line"], data[1]["end_line"]) == (3, 5)
    assert data[2]["trigger"]["keyword"] == "RUN"
    assert data[2]["trigger"]["args"] == ["make"]


def test_instructions_are_frozen() -> None:
    instruction = only("RUN x")
    with pytest.raises(AttributeError):
        instruction.keyword = "CMD"  # type: ignore[misc]
