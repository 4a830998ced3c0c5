"""ARG/ENV scoping and where variables are expanded follow BuildKit's Dockerfile frontend."""

from __future__ import annotations

import textwrap

import pytest

from builder import Instruction, parse_dockerfile
from builder.errors import BuildError
from builder.syntax import Heredoc
from builder.variables import (
    StageVariables,
    arg_declarations,
    expand_instruction,
    global_args,
    key_value_pairs,
    platform_args,
)
from builder.words import SubstitutionError

VARS = {"v": "1.2", "name": "app", "spaced": "a b", "dir": "/srv", "empty": ""}


def parse_one(line: str, escape: str = "\\") -> Instruction:
    prefix = "# escape=`\n" if escape == "`" else ""
    return parse_dockerfile(f"{prefix}FROM scratch\n{line}\n").instructions[1]


def expand(line: str, variables: dict[str, str] | None = None, escape: str = "\\") -> Instruction:
    values = VARS if variables is None else variables
    return expand_instruction(parse_one(line, escape), values.get, escape)


# --- expand_instruction: where BuildKit expands ---------------------------------------------


@pytest.mark.parametrize(
    ("line", "args"),
    [
        ("COPY app-$v.tar ${dir}/", ["app-1.2.tar", "/srv/"]),
        ("COPY $spaced /dst/", ["a b", "/dst/"]),  # split before expansion: one source
        ("ADD https://x/$name-$v.tgz /opt/", ["https://x/app-1.2.tgz", "/opt/"]),
        ('COPY ["$name", "${dir}/x y"]', ["app", "/srv/x y"]),  # JSON items are expanded too
        ("COPY '$name' /d", ["$name", "/d"]),
        ("COPY \\$name /d", ["$name", "/d"]),
        ("VOLUME $dir /var/$name", ["/srv", "/var/app"]),
        ('VOLUME ["$dir/data"]', ["/srv/data"]),
        ("EXPOSE 80 ${port:-8080}/tcp", ["80", "8080/tcp"]),
        ("EXPOSE $ports", ["1", "2"]),  # EXPOSE splits the expansion again
        ("WORKDIR $dir/$name", ["/srv/app"]),
        ('WORKDIR "$dir/my app"', ["/srv/my app"]),
        ("USER ${name}:${name}", ["app:app"]),
        ("STOPSIGNAL ${sig:-SIGQUIT}", ["SIGQUIT"]),
        ("ENV a=$v b=${name}-x", ["a=1.2", "b=app-x"]),
        ("ENV legacy some $name value", ["legacy=some app value"]),
        ("ENV q=\"a  $name\" r='$name' s=a\\ b", ["q=a  app", "r=$name", "s=a b"]),
        ("LABEL version=$v \"desc\"='x y'", ["version=1.2", "desc=x y"]),
        ('LABEL "com.$name.k"="$v"', ["com.app.k=1.2"]),
        ("ARG x=$v y", ["x=1.2", "y"]),
        ("ARG e=", ["e="]),
    ],
)
def test_expanded(line: str, args: list[str]) -> None:
    instruction = expand(line, {**VARS, "ports": "1 2"})
    assert instruction.args == args
    assert instruction.expanded


@pytest.mark.parametrize(
    "line",
    [
        "RUN echo $name",
        'RUN ["echo", "$name"]',
        "CMD echo $name",
        'CMD ["$name"]',
        "ENTRYPOINT $name",
        'SHELL ["$name", "-c"]',
        "HEALTHCHECK CMD check $name",
        "MAINTAINER $name",
        "ONBUILD COPY $name /x",  # expanded when the trigger runs in the child build
    ],
)
def test_not_expanded(line: str) -> None:
    instruction = parse_one(line)
    assert expand_instruction(instruction, VARS.get, "\\") == instruction


def test_from_expands_only_the_image_and_platform() -> None:
    instruction = parse_dockerfile("FROM --platform=$p ${img}:$tag AS base\n").instructions[0]
    expanded = expand_instruction(instruction, {"img": "alpine", "tag": "3", "p": "linux/arm64"}.get, "\\")
    assert expanded.args == ["alpine:3", "AS", "base"]
    assert expanded.flags == {"platform": ["linux/arm64"]}


def test_copy_flags() -> None:
    instruction = expand("COPY --from=$name --chown=$name:$name --chmod=${m:-644} --link --exclude=*.$v a /b")
    assert instruction.flags == {
        "from": ["app"],
        "chown": ["app:app"],
        "chmod": ["644"],
        "link": ["true"],
        "exclude": ["*.1.2"],
    }


def test_add_flags() -> None:
    instruction = expand("ADD --checksum=sha256:$name --chown=$name https://x/y /z")
    assert instruction.flags == {"checksum": ["sha256:app"], "chown": ["app"]}


def test_run_mount_values_are_expanded() -> None:
    instruction = expand("RUN --mount=type=cache,id=$name-$v,target=$dir/c --mount=type=secret,id=x cc $name")
    assert instruction.flags["mount"] == ["type=cache,id=app-1.2,target=/srv/c", "type=secret,id=x"]
    assert instruction.args == ["cc $name"]


def test_copy_heredocs() -> None:
    instruction = parse_dockerfile(
        "FROM scratch\nCOPY <<EOF <<'RAW' /etc/$name/\nv=$v \"q\" \\$x\nEOF\nv=$v\nRAW\n"
    ).instructions[1]
    expanded = expand_instruction(instruction, VARS.get, "\\")
    assert expanded.args == ["<<EOF", "<<'RAW'", "/etc/app/"]  # heredoc words stay as written
    assert expanded.heredocs == (
        Heredoc("EOF", 'v=1.2 "q" $x\n', True, False),  # quotes kept, escapes processed
        Heredoc("RAW", "v=$v\n", False, False),
    )


def test_run_heredocs_are_left_to_the_shell() -> None:
    instruction = parse_dockerfile("FROM scratch\nRUN <<EOF\necho $name\nEOF\n").instructions[1]
    assert expand_instruction(instruction, VARS.get, "\\").heredocs[0].content == "echo $name\n"


def test_backtick_escape() -> None:
    instruction = expand("COPY C:\\src\\$name `$name c:\\dst\\", escape="`")
    assert instruction.args == ["C:\\src\\app", "$name", "c:\\dst\\"]


def test_expanding_twice_changes_nothing() -> None:
    once = expand("ENV a=\\$b")
    assert once.args == ["a=$b"]
    assert expand_instruction(once, {"b": "no"}.get, "\\") == once


def test_substitution_error_names_line_and_variable() -> None:
    with pytest.raises(SubstitutionError) as caught:
        expand("WORKDIR ${dest:?set --build-arg dest}")
    message = str(caught.value)
    assert message.startswith("line 2: WORKDIR: ")
    assert "dest: set --build-arg dest" in message
    assert "\n" not in message


def test_unbalanced_quote_is_a_build_error() -> None:
    with pytest.raises(BuildError, match="double-quote"):
        expand('COPY "a b" /dst/')  # as in BuildKit: the shell form does not group quoted words


# --- key_value_pairs and arg_declarations ---------------------------------------------------


def test_env_uses_the_old_values() -> None:
    """`ENV a=1 b=$a`: every pair of one ENV is expanded with the values before it."""
    stage = StageVariables.for_stage({}, {}, ["a=0"])
    instruction = expand_instruction(parse_one("ENV a=1 b=$a"), stage.lookup, "\\")
    stage.set_env(key_value_pairs(instruction))
    assert stage.image_env() == ["a=1", "b=0"]
    second = expand_instruction(parse_one("ENV c=$a"), stage.lookup, "\\")
    stage.set_env(key_value_pairs(second))
    assert stage.lookup("c") == "1"


def test_pairs_of_unexpanded_instructions() -> None:
    assert key_value_pairs(parse_one('LABEL a="x y" b=$v')) == [("a", "x y"), ("b", "$v")]
    assert key_value_pairs(parse_one("ENV k some value")) == [("k", "some value")]
    assert arg_declarations(parse_one("ARG a b=1 c=")) == [("a", None), ("b", "1"), ("c", "")]


def test_arg_declarations_tell_no_default_from_empty() -> None:
    instruction = expand("ARG a b=$v c=")
    assert arg_declarations(instruction) == [("a", None), ("b", "1.2"), ("c", "")]
    assert key_value_pairs(instruction) == [("a", ""), ("b", "1.2"), ("c", "")]


def test_pairs_of_other_instructions() -> None:
    with pytest.raises(BuildError):
        key_value_pairs(parse_one("RUN x"))
    with pytest.raises(BuildError):
        arg_declarations(parse_one("ENV a=b"))


# --- scoping --------------------------------------------------------------------------------


def test_global_args_in_order_with_build_args() -> None:
    parsed = parse_dockerfile(
        textwrap.dedent("""
        ARG REGISTRY=docker.io
        ARG IMAGE=${REGISTRY}/library/alpine
        ARG TAG
        ARG UNUSED=$LATER
        ARG LATER=x
        FROM $IMAGE:${TAG:-latest}
        ARG NOT_GLOBAL=1
    """).lstrip("\n")
    )
    values = global_args(parsed, {"REGISTRY": "quay.io", "UNDECLARED": "z"})
    assert {k: v for k, v in values.items() if k not in platform_args()} == {
        "REGISTRY": "quay.io",
        "IMAGE": "quay.io/library/alpine",
        "TAG": None,
        "UNUSED": "",  # LATER is declared after it
        "LATER": "x",
    }
    from_ = expand_instruction(parsed.instructions[5], values.get, "\\")
    assert from_.args == ["quay.io/library/alpine:latest"]


def test_automatic_platform_args() -> None:
    values = platform_args()
    assert values["TARGETOS"] == values["BUILDOS"] == "linux"
    assert values["TARGETPLATFORM"].startswith(f"linux/{values['TARGETARCH']}")
    parsed = parse_dockerfile("FROM busybox:$TARGETARCH\n")
    args = global_args(parsed, {})
    expanded = expand_instruction(parsed.instructions[0], args.get, "\\")
    assert expanded.args == [f"busybox:{values['TARGETARCH']}"]


def test_global_arg_is_invisible_in_a_stage_until_redeclared() -> None:
    stage = StageVariables.for_stage({"VERSION": "1"}, {}, [])
    assert stage.lookup("VERSION") is None
    stage.declare_arg("VERSION", None)
    assert stage.lookup("VERSION") == "1"


def test_redeclared_with_a_default_wins_over_the_global() -> None:
    stage = StageVariables.for_stage({"VERSION": "1", "E": "g"}, {}, [])
    stage.declare_arg("VERSION", "2")
    stage.declare_arg("E", "")
    assert stage.lookup("VERSION") == "2"
    assert stage.lookup("E") == ""


def test_build_args_override_defaults() -> None:
    stage = StageVariables.for_stage({"VERSION": "1"}, {"VERSION": "9", "OTHER": "o"}, [])
    stage.declare_arg("VERSION", "2")
    assert stage.lookup("VERSION") == "9"
    assert stage.lookup("OTHER") is None  # a build arg nobody declares is not visible
    stage.declare_arg("OTHER", None)
    assert stage.lookup("OTHER") == "o"


def test_arg_without_value_is_unset() -> None:
    stage = StageVariables.for_stage({}, {}, [])
    stage.declare_arg("NOTHING", None)
    assert stage.lookup("NOTHING") is None
    assert stage.used_args() == {}
    assert stage.run_env() == []


def test_stage_platform_arg() -> None:
    stage = StageVariables.for_stage({}, {}, [])
    stage.declare_arg("TARGETARCH", None)
    assert stage.lookup("TARGETARCH") == platform_args()["TARGETARCH"]


def test_env_wins_over_arg() -> None:
    stage = StageVariables.for_stage({}, {"MODE": "arg"}, [])
    stage.declare_arg("MODE", None)
    stage.set_env([("MODE", "env")])
    assert stage.lookup("MODE") == "env"
    stage.declare_arg("MODE", "later-arg")  # an ARG after the ENV does not shadow it
    assert stage.lookup("MODE") == "env"
    assert stage.run_env() == ["MODE=env"]


def test_base_env_order_and_updates() -> None:
    stage = StageVariables.for_stage({}, {}, ["PATH=/usr/bin:/bin", "HOME=/root", "EMPTY=", "NOEQ"])
    assert stage.lookup("PATH") == "/usr/bin:/bin"
    assert stage.lookup("NOEQ") == ""
    stage.set_env([("LANG", "C.UTF-8"), ("PATH", "/opt/bin:/bin")])
    assert stage.image_env() == ["PATH=/opt/bin:/bin", "HOME=/root", "EMPTY=", "NOEQ=", "LANG=C.UTF-8"]


def test_run_env_and_used_args() -> None:
    stage = StageVariables.for_stage({"G": "g"}, {"B": "b"}, ["PATH=/bin"])
    stage.declare_arg("G", None)
    stage.declare_arg("B", "default")
    stage.declare_arg("U", None)
    stage.set_env([("E", "e")])
    assert stage.run_env() == ["PATH=/bin", "E=e", "G=g", "B=b"]
    assert stage.used_args() == {"G": "g", "B": "b"}
    assert stage.image_env() == ["PATH=/bin", "E=e"]  # ARGs never reach the image config


def test_a_whole_stage() -> None:
    """A multi-stage file walked the way the build engine walks it."""
    parsed = parse_dockerfile(
        textwrap.dedent("""
        ARG BASE=busybox
        ARG VERSION=1.0
        FROM $BASE AS build
        ARG VERSION
        ENV APP_HOME=/opt/app VERSION_FILE=$APP_HOME/version
        WORKDIR $APP_HOME
        COPY --chown=1000 src/ ${APP_HOME}/src-${VERSION}/
        FROM scratch
        COPY --from=build /opt/app /app
    """).lstrip("\n")
    )
    globals_ = global_args(parsed, {"VERSION": "2.0"})
    stage = StageVariables.for_stage(globals_, {"VERSION": "2.0"}, ["PATH=/bin"])
    results = []
    for instruction in parsed.instructions[3:7]:
        expanded = expand_instruction(instruction, stage.lookup, parsed.escape)
        if expanded.keyword == "ARG":
            for name, default in arg_declarations(expanded):
                stage.declare_arg(name, default)
        elif expanded.keyword == "ENV":
            stage.set_env(key_value_pairs(expanded))
        results.append(expanded.args)
    assert results == [
        ["VERSION"],
        ["APP_HOME=/opt/app", "VERSION_FILE=/version"],  # APP_HOME was not set before this ENV
        ["/opt/app"],
        ["src/", "/opt/app/src-2.0/"],
    ]
    assert stage.image_env() == ["PATH=/bin", "APP_HOME=/opt/app", "VERSION_FILE=/version"]
    assert stage.used_args() == {"VERSION": "2.0"}
