"""Malformed metadata and odd input end in one clean error line, never a crash or a bad store.

OCI layouts are crafted from a real export: one field of a config, manifest or index.json is
made wrong, every blob on the way up is re-hashed, and importing must fail with InvalidManifest before
anything is named in the store. Also here: ASCII-only tags, `ls` times datetime cannot show, and
rootfs tools that fail.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from builder.rootfs import apt_mirror
from lazyctr.display import ls_line, ls_time
from lazyfs.source import node_stat
from storage.digest import Digest
from storage.errors import InvalidManifest, InvalidReference, NotFound
from storage.oci import Descriptor, ImageConfig, Index, Manifest
from storage.reference import ImageRef, validate_tag
from storage.toc import NS, TocEntry
from storage.tree import Node
from tests.conftest import CliRunner, assert_clean_error

Doc = Any  # a parsed JSON document, or bytes to write as they are
Edit = Callable[[Doc], Doc]
DEEP = b"[" * 100_000 + b"]" * 100_000


# -- crafting layouts ------------------------------------------------------------------------------


def _put(layout: Path, doc: Doc) -> dict[str, Any]:
    """Write a blob; its descriptor's digest and size."""
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    digest = Digest.of(data)
    (layout / "blobs" / "sha256" / digest.hex).write_bytes(data)
    return {"digest": str(digest), "size": len(data)}


def _get(layout: Path, digest: str) -> Any:
    return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())


def rewrite(layout: Path, part: str, edit: Edit) -> None:
    """Apply `edit` to the config, manifest or index.json; re-hash everything that refers to it."""
    index = json.loads((layout / "index.json").read_bytes())
    entry = index["manifests"][0]
    manifest = _get(layout, entry["digest"])
    if part == "config":
        manifest["config"].update(_put(layout, edit(_get(layout, manifest["config"]["digest"]))))
    elif part == "manifest":
        manifest = edit(manifest)
    entry.update(_put(layout, manifest))
    if part == "index":
        index = edit(index)
    (layout / "index.json").write_bytes(index if isinstance(index, bytes) else json.dumps(index).encode())


def with_field(key: str, value: Any) -> Edit:
    return lambda doc: {**doc, key: value}


def in_rootfs(key: str, value: Any) -> Edit:
    return lambda doc: {**doc, "rootfs": {**doc["rootfs"], key: value}}


def in_runtime_config(key: str, value: Any) -> Edit:
    return lambda doc: {**doc, "config": {**doc["config"], key: value}}


def in_first_layer(key: str, value: Any) -> Edit:
    return lambda doc: {**doc, "layers": [{**doc["layers"][0], key: value}, *doc["layers"][1:]]}


def in_config_descriptor(key: str, value: Any) -> Edit:
    return lambda doc: {**doc, "config": {**doc["config"], key: value}}


def in_index_entry(key: str, value: Any) -> Edit:
    return lambda doc: {**doc, "manifests": [{**doc["manifests"][0], key: value}]}


@pytest.fixture
def layout(lazyctr: CliRunner, busybox_tar: Path, tmp_path: Path) -> Path:
    lazyctr("import", str(busybox_tar), "busybox")
    lazyctr("export", "busybox", f"oci:{tmp_path / 'layout'}:bb")
    lazyctr("rmi", "busybox")
    return tmp_path / "layout"


def assert_nothing_named(lazyctr: CliRunner) -> None:
    assert json.loads(lazyctr("images", "--json").out) == []


@pytest.mark.parametrize("part", ["config", "manifest", "index"])
def test_an_untouched_rewrite_still_imports(lazyctr: CliRunner, layout: Path, part: str) -> None:
    """The crafting itself is sound: only the field a test changes makes its layout bad."""
    rewrite(layout, part, lambda doc: doc)
    lazyctr("import", f"oci:{layout}:bb", "x")
    assert [row["Name"] for row in json.loads(lazyctr("images", "--json").out)] == ["x:latest"]
    assert lazyctr("cat", "x", "/etc/hostname").out == "lazyctr\n"


BAD_LAYOUTS: list[tuple[str, str, Edit, str]] = [
    # (test id, part, edit, what the error line says)
    ("config-created-number", "config", with_field("created", 5), "image config: 'created'"),
    ("config-author-list", "config", with_field("author", ["a"]), "image config: 'author'"),
    ("config-variant-object", "config", with_field("variant", {}), "image config: 'variant'"),
    ("config-architecture-number", "config", with_field("architecture", 5), "'architecture'"),
    ("config-history-number", "config", with_field("history", 5), "'history' must be an array"),
    ("config-history-item", "config", with_field("history", [5]), "'history' items must be objects"),
    ("config-config-string", "config", with_field("config", "ab"), "'config' must be an object"),
    ("config-cmd-string", "config", in_runtime_config("Cmd", "sh"), "'Cmd' must be an array"),
    ("config-env-number", "config", in_runtime_config("Env", [5]), "'Env' item"),
    ("config-workdir-list", "config", in_runtime_config("WorkingDir", ["/"]), "'WorkingDir'"),
    ("config-labels-string", "config", in_runtime_config("Labels", "ab"), "'Labels'"),
    ("config-rootfs-string", "config", with_field("rootfs", "ab"), "'rootfs' must be an object"),
    ("config-diff-ids-string", "config", in_rootfs("diff_ids", "ab"), "'diff_ids' must be an array"),
    ("config-diff-id-number", "config", in_rootfs("diff_ids", [5]), "image config: invalid diff_id"),
    ("config-diff-id-bad-hex", "config", in_rootfs("diff_ids", ["sha256:zz"]), "invalid diff_id"),
    ("config-nested-deeply", "config", lambda doc: b'{"config":' + DEEP + b"}", "nested too deeply"),
    ("config-huge-integer", "config", lambda doc: b'{"created":' + b"9" * 5000 + b"}", "malformed JSON"),
    ("config-not-an-object", "config", lambda doc: [doc], "image config: expected a JSON object"),
    ("manifest-annotations-string", "manifest", with_field("annotations", "ab"), "manifest: 'annotations'"),
    ("manifest-annotation-number", "manifest", with_field("annotations", {"k": 5}), "'annotations' value"),
    ("manifest-config-string", "manifest", with_field("config", "ab"), "manifest config"),
    ("manifest-config-missing", "manifest", with_field("config", None), "missing field 'config'"),
    ("manifest-config-no-digest", "manifest", in_config_descriptor("digest", None), "invalid digest"),
    ("manifest-media-type-list", "manifest", with_field("mediaType", [1]), "manifest: 'mediaType'"),
    ("manifest-layers-object", "manifest", with_field("layers", {}), "'layers' must be an array"),
    ("manifest-layer-number", "manifest", with_field("layers", [5]), "manifest layer"),
    ("manifest-layer-digest-number", "manifest", in_first_layer("digest", 5), "invalid digest"),
    ("manifest-layer-size-string", "manifest", in_first_layer("size", "1"), "invalid size"),
    ("manifest-layer-size-bool", "manifest", in_first_layer("size", True), "invalid size"),
    ("manifest-layer-media-type-number", "manifest", in_first_layer("mediaType", 5), "'mediaType'"),
    ("manifest-layer-platform", "manifest", in_first_layer("platform", "linux"), "'platform'"),
    ("manifest-subject-string", "manifest", with_field("subject", "x"), "manifest subject"),
    ("index-platform-string", "index", in_index_entry("platform", "linux"), "'platform' must be an object"),
    ("index-annotations-string", "index", in_index_entry("annotations", "ab"), "'annotations'"),
    ("index-artifact-type-number", "index", in_index_entry("artifactType", 5), "'artifactType'"),
    ("index-digest-bad", "index", in_index_entry("digest", "sha256:ZZ"), "invalid digest"),
    ("index-manifests-string", "index", with_field("manifests", "ab"), "'manifests' must be an array"),
    ("index-nested-deeply", "index", lambda doc: DEEP, "nested too deeply"),
    ("index-nested-in-object", "index", lambda doc: b'{"manifests":' + DEEP + b"}", "nested too deeply"),
]


@pytest.mark.parametrize(
    ("part", "edit", "fragment"), [case[1:] for case in BAD_LAYOUTS], ids=[case[0] for case in BAD_LAYOUTS]
)
def test_malformed_fields_fail_the_import_cleanly(
    lazyctr: CliRunner, layout: Path, part: str, edit: Edit, fragment: str
) -> None:
    rewrite(layout, part, edit)
    result = lazyctr("import", f"oci:{layout}:bb", "x", ok=False)
    assert_clean_error(result, fragment)
    assert result.code == 1  # InvalidManifest: not a usage error, not an internal one
    assert_nothing_named(lazyctr)


# -- the parsers directly --------------------------------------------------------------------------

SHA = "sha256:" + "a" * 64
GOOD_DESCRIPTOR = {"mediaType": "application/octet-stream", "digest": SHA, "size": 1}


def test_good_documents_parse() -> None:
    descriptor = Descriptor.from_json(
        {**GOOD_DESCRIPTOR, "annotations": {"k": "v"}, "platform": {"os": "linux"}, "artifactType": "t"}
    )
    assert (descriptor.digest, descriptor.annotations, descriptor.platform) == (
        SHA,
        {"k": "v"},
        {"os": "linux"},
    )
    config = ImageConfig.parse(
        json.dumps(
            {
                "created": None,
                "config": {"Cmd": None, "Env": ["A=1"], "Labels": None, "ExposedPorts": {"80/tcp": {}}},
                "rootfs": {"type": "layers", "diff_ids": [SHA]},
                "history": [{"created_by": "x", "empty_layer": True}],
            }
        ).encode()
    )
    assert (config.created, config.diff_ids, config.history[0]["empty_layer"]) == (None, [SHA], True)
    manifest = Manifest(Descriptor.from_json(GOOD_DESCRIPTOR), [], annotations={"a": "b"})
    assert Manifest.parse(manifest.to_bytes()) == manifest
    assert Index.parse(Index([descriptor]).to_bytes()).manifests == [descriptor]


@pytest.mark.parametrize(
    "obj",
    [
        None,
        "x",
        [],
        {"digest": SHA, "size": 1},
        {**GOOD_DESCRIPTOR, "size": -1},
        {**GOOD_DESCRIPTOR, "size": 1.5},
        {**GOOD_DESCRIPTOR, "digest": SHA + "\n"},
        {**GOOD_DESCRIPTOR, "digest": "md5:" + "a" * 32},
        {**GOOD_DESCRIPTOR, "annotations": [["k", "v"]]},
        {**GOOD_DESCRIPTOR, "annotations": {"k": None}},
        {**GOOD_DESCRIPTOR, "platform": ["linux"]},
    ],
)
def test_bad_descriptors_are_invalid_manifests(obj: Any) -> None:
    with pytest.raises(InvalidManifest):
        Descriptor.from_json(obj)


@pytest.mark.parametrize(
    "data",
    [b"\xff", b"[1]", b"null", DEEP, b"{" * 50_000, b'{"a":' + b"1" * 10_000 + b"}", b'{"x": NaN'],
)
@pytest.mark.parametrize("parse", [Manifest.parse, ImageConfig.parse, Index.parse])
def test_bad_json_is_an_invalid_manifest(parse: Callable[[bytes], object], data: bytes) -> None:
    with pytest.raises(InvalidManifest):
        parse(data)


def test_an_invalid_diff_id_is_an_invalid_manifest_not_invalid_reference() -> None:
    with pytest.raises(InvalidManifest, match=r"^image config: invalid diff_id 5"):
        ImageConfig.parse(b'{"rootfs": {"diff_ids": [5]}}')
    with pytest.raises(InvalidManifest, match=r"invalid diff_id 'sha256:x'"):
        ImageConfig.parse(b'{"rootfs": {"diff_ids": ["sha256:x"]}}')


# -- tags ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["foo:café", "foo:٣", "foo:v\uff11", "foo:bar\n", "foo\n", "foo:a\u00a0b"])
def test_tags_and_names_are_ascii_and_whole(text: str) -> None:
    with pytest.raises(InvalidReference):
        ImageRef.parse(text)


def test_ascii_tags_still_pass() -> None:
    assert validate_tag("_v1.2-rc_3") == "_v1.2-rc_3"
    assert ImageRef.parse("foo:" + "A" * 128).tag == "A" * 128
    with pytest.raises(InvalidReference):
        validate_tag("A" * 129)


# -- ls times --------------------------------------------------------------------------------------

LS_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d|\? {15})$")


@pytest.fixture(params=["UTC0", "WST12", "EST-14"], ids=["utc", "utc-12", "utc+14"])
def zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Local time in a POSIX TZ zone (no tzdata needed); the process zone is restored after."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield request.param
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "modtime",
    [
        "0001-01-01T00:00:00Z",  # Go's zero time
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-12:00",
        "1970-01-01T00:00:00Z",
        "2024-02-29T12:34:56.789Z",
        None,
    ],
)
def test_ls_line_survives_any_toc_time(zone: str, modtime: str | None) -> None:
    entry = TocEntry(type="reg", name="./f", modtime=modtime, mode=0o644, size=3)
    line = ls_line("/f", node_stat(Node(entry, 0)))
    normal = ls_line(
        "/f",
        node_stat(
            Node(TocEntry(type="reg", name="./f", modtime="2024-01-01T00:00:00Z", mode=0o644, size=3), 0)
        ),
    )
    assert line.endswith(" /f") and len(line) == len(normal), line
    assert LS_TIME.match(line[-len(" /f") - 16 : -len(" /f")]), line


def test_ls_time_shows_what_it_can_and_a_placeholder_otherwise(zone: str) -> None:
    for mtime_ns in (
        10**30,
        -(10**30),
        253402300800 * NS + 14 * 3600 * NS,
        -62135596800 * NS - 14 * 3600 * NS,
    ):
        assert ls_time(mtime_ns) == "?" + " " * 15
    if zone == "UTC0":
        year_999 = int(datetime(999, 6, 1, 12, 30, tzinfo=UTC).timestamp())
        assert ls_time(year_999 * NS) == "0999-06-01 12:30"  # four digits, unlike glibc's %Y
        assert ls_time(253402300799 * NS) == "9999-12-31 23:59"
    assert (
        ls_time(0)
        == {"UTC0": "1970-01-01 00:00", "WST12": "1969-12-31 12:00", "EST-14": "1970-01-01 14:00"}[zone]
    )


# -- rootfs tools that fail ------------------------------------------------------------------------

FAILING_DEBOOTSTRAP = """#!/bin/sh
echo "I: Retrieving InRelease" >&2
echo "E: Failed getting release file http://mirror.invalid/debian/dists/$2/Release" >&2
exit 1
"""
SUCCEEDING_DEBOOTSTRAP = """#!/bin/sh
mkdir -p "$3/etc" && echo fake > "$3/etc/hostname"
"""
FAILING_TAR = """#!/bin/sh
echo "tar: ./etc: Cannot open: Permission denied" >&2
echo "tar: Exiting with failure status due to previous errors" >&2
exit 2
"""


@pytest.mark.parametrize(
    ("tools", "fragment"),
    [
        (
            {"debootstrap": FAILING_DEBOOTSTRAP},
            "debootstrap --variant=minbase bookworm ",  # then the mirror
        ),
        (
            {"debootstrap": SUCCEEDING_DEBOOTSTRAP, "tar": FAILING_TAR},
            "tar of the bookworm root file system failed (exit status 2): tar: Exiting with failure",
        ),
    ],
    ids=["debootstrap", "tar"],
)
def test_a_failing_rootfs_tool_is_one_clean_line(
    lazyctr: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tools: dict[str, str], fragment: str
) -> None:
    try:
        apt_mirror()
    except NotFound:
        pytest.skip("no Debian mirror in this machine's apt configuration")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in tools.items():
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out_dir = tmp_path / "out"
    result = lazyctr("rootfs", "debian", str(out_dir / "debian.tar"), ok=False)
    assert_clean_error(result, fragment)
    assert "internal error" not in result.stderr
    if "tar" not in tools:
        assert result.stderr.rstrip().endswith(
            "failed (exit status 1): E: Failed getting release file http://mirror.invalid/debian/dists/bookworm/Release"
        )
    assert list(out_dir.iterdir()) == []  # neither the tarball nor its temporary file
