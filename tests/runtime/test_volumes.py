"""Named volumes: made on first use by `run -v NAME:/path`, kept across containers, listed, inspected,
and refused removal while a container (running or not) still uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import CliRunner, assert_clean_error

pytestmark = pytest.mark.privileged


@pytest.fixture
def busybox(lazyctr: CliRunner, busybox_tar: Path) -> str:
    lazyctr("import", str(busybox_tar), "busybox")
    return "busybox"


def test_a_volume_is_made_on_first_use_and_outlives_its_container(
    lazyctr: CliRunner, busybox: str, root: Path
) -> None:
    lazyctr("run", "--rm", "-v", "lzc-data:/data", busybox, "sh", "-c", "echo kept > /data/f")
    assert lazyctr("volume", "ls", "-q").out == "lzc-data\n"
    assert lazyctr("run", "--rm", "-v", "lzc-data:/srv:ro", busybox, "cat", "/srv/f").out == "kept\n"
    refused = lazyctr("run", "--rm", "-v", "lzc-data:/srv:ro", busybox, "touch", "/srv/g", ok=False)
    assert refused.code != 0 and "Read-only file system" in refused.stderr
    [info] = json.loads(lazyctr("volume", "inspect", "lzc-data").out)
    assert info["Mountpoint"] == str(
        root / "volumes" / "lzc-data" / "_data"
    )  # docker's layout, under the root
    assert Path(info["Mountpoint"], "f").read_text() == "kept\n"
    assert info["Driver"] == "local" and info["UsedBy"] == []  # --rm containers are gone


def test_an_empty_volume_gets_the_images_files_at_its_mount_point(
    lazyctr: CliRunner, busybox: str, root: Path
) -> None:
    lazyctr("run", "--rm", "-v", "lzc-etc:/etc", "-v", "lzc-tmp:/tmp", busybox, "rm", "/etc/group")
    data = root / "volumes" / "lzc-etc" / "_data"
    assert (data / "passwd").read_text().startswith("root:") and not (data / "group").exists()
    assert oct((root / "volumes" / "lzc-tmp" / "_data").stat().st_mode & 0o7777) == oct(0o1777)  # /tmp's mode
    lazyctr("run", "--rm", "-v", "lzc-etc:/etc", busybox, "true")  # not empty: nothing copied again
    assert not (data / "group").exists()


def test_create_ls_inspect_rm(lazyctr: CliRunner) -> None:
    assert lazyctr("volume", "create", "--label", "team=lzc", "lzc-one").out == "lzc-one\n"
    anonymous = lazyctr("volume", "create").out.strip()
    assert len(anonymous) == 64
    assert lazyctr("volume", "ls").out.splitlines()[1:] == sorted(
        [f"local     {anonymous}", "local     lzc-one"]
    )
    assert json.loads(lazyctr("volume", "inspect", "lzc-one").out)[0]["Labels"] == {"team": "lzc"}
    assert lazyctr("volume", "create", "lzc-one").out == "lzc-one\n"  # an existing one: as docker, no error
    lazyctr("volume", "rm", "lzc-one", anonymous)
    assert lazyctr("volume", "ls", "-q").out == ""


def test_a_volume_in_use_refuses_rm_until_its_container_is_removed(lazyctr: CliRunner, busybox: str) -> None:
    lazyctr("run", "--name", "lzc-user", "-v", "lzc-busy:/data", busybox, "true")  # exited, not removed
    container_id = json.loads(lazyctr("ps", "-a", "--json").out)[0]["id"]
    refused = lazyctr("volume", "rm", "lzc-busy", ok=False)
    assert_clean_error(refused, f"volume lzc-busy is in use by container(s) {container_id[:12]}")
    assert refused.code == 1
    assert lazyctr("volume", "ls", "-q").out == "lzc-busy\n"
    lazyctr("rm", "lzc-user")
    lazyctr("volume", "rm", "lzc-busy")
    assert lazyctr("volume", "ls", "-q").out == ""


def test_bad_volume_input(lazyctr: CliRunner, busybox: str, root: Path) -> None:
    assert_clean_error(lazyctr("volume", "rm", "lzc-nope", ok=False), "no such volume: lzc-nope")
    assert_clean_error(lazyctr("volume", "inspect", "lzc-nope", ok=False), "no such volume: lzc-nope")
    assert lazyctr("volume", "rm", "-f", "lzc-nope").code == 0  # -f: a missing volume is no error
    assert_clean_error(lazyctr("volume", "create", "b@d", ok=False), "invalid volume name 'b@d'")
    bad = lazyctr("run", "--rm", "-v", "b@d:/data", busybox, "true", ok=False)
    assert bad.code == 125
    assert_clean_error(bad, "invalid volume name 'b@d'")
    bad = lazyctr("run", "--rm", "-v", "lzc-v:relative", busybox, "true", ok=False)
    assert_clean_error(bad, "invalid volume 'lzc-v:relative'")
    assert not (root / "volumes" / "lzc-v").exists() and not (root / "volumes" / "b@d").exists()
