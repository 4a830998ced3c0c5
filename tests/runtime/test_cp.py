"""`lazyctr cp`: docker cp's rules in both directions, on running and stopped containers, and on a
lazily pulled image without fetching more than the files copied (the lazyfs mount's statistics)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lazyfs.mount import MountState
from registry.transfer import pull_lazy
from storage.pieces import Piece, file_pieces
from storage.store import Store
from tests.conftest import CliRunner, Result, assert_clean_error, cli_command
from tests.registry.conftest import Registry
from tests.runtime.test_lazy_driver import lazy_mounts, shared_mountpoint

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Iterator[CliRunner]:
    """One root for the module's eager tests: busybox, a running and a stopped container (each test
    copies to paths of its own)."""
    root = tmp_path_factory.mktemp("lzc-cp") / "root"

    def run(*args: str, ok: bool = True) -> Result:
        proc = subprocess.run(cli_command(root, *args), capture_output=True, timeout=300)
        result = Result(proc.returncode, proc.stdout, proc.stderr.decode())
        assert not ok or result.code == 0, f"lazyctr {' '.join(args)} failed: {result.stderr}"
        return result

    run("import", str(busybox_tar), "busybox")
    run("run", "-d", "--name", "lzc-running", "busybox", "sleep", "300")
    run("run", "--name", "lzc-stopped", "busybox", "sh", "-c", "mkdir -p /srv/d/sub && echo a > /srv/d/a"
        " && echo b > /srv/d/sub/b && ln -s /etc /srv/etc-link")  # fmt: skip
    yield run
    run("rm", "-f", "lzc-running", "lzc-stopped", ok=False)


@pytest.fixture
def running(shared: CliRunner) -> str:
    return "lzc-running"


@pytest.fixture
def stopped(shared: CliRunner) -> str:
    return "lzc-stopped"


@pytest.fixture
def host_tree(tmp_path: Path) -> Path:
    top = tmp_path / "lzc-host" / "tree"
    (top / "sub").mkdir(parents=True)
    (top / "one").write_text("1\n")
    (top / "sub" / "two").write_text("2\n")
    (top / "sub" / "two").chmod(0o600)
    os.symlink("one", top / "link")
    return top


def files(top: Path) -> dict[str, str]:
    """Every path under `top`: a file's text, a link's target, `dir` for a directory."""
    out = {}
    for path in sorted(top.rglob("*")):
        key = str(path.relative_to(top))
        out[key] = (
            f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else path.read_text()
        )
    return out


def test_a_directory_into_a_running_container_and_back(
    shared: CliRunner, running: str, host_tree: Path, tmp_path: Path
) -> None:
    shared("cp", str(host_tree), f"{running}:/tmp")  # an existing directory: lands in it, by its name
    listing = shared("exec", running, "sh", "-c", "cd /tmp/tree && find . | sort && cat sub/two && ls -l sub")
    assert listing.out.splitlines()[:5] == [".", "./link", "./one", "./sub", "./sub/two"]
    assert "2\n" in listing.out and "-rw-------" in listing.out  # contents and mode kept
    back = tmp_path / "back"
    shared("cp", f"{running}:/tmp/tree", str(back))  # a missing destination: the directory becomes it
    assert files(back) == files(host_tree)


def test_a_file_to_a_new_name_into_a_directory_and_over_a_file(
    shared: CliRunner, running: str, tmp_path: Path
) -> None:
    shared("cp", f"{running}:/etc/passwd", str(tmp_path / "passwd"))
    assert (tmp_path / "passwd").read_text().startswith("root:")
    shared("cp", f"{running}:/etc/group", str(tmp_path))  # into a directory, by its base name
    assert (tmp_path / "group").read_text().startswith("root:")
    (tmp_path / "over").write_text("old")
    shared("cp", f"{running}:/etc/hostname", str(tmp_path / "over"))
    assert (tmp_path / "over").read_text() != "old"
    source = tmp_path / "note"
    source.write_text("hello\n")
    shared("cp", str(source), f"{running}:/etc/passwd")  # over a file of the image
    assert shared("exec", running, "cat", "/etc/passwd").out == "hello\n"


def test_dot_copies_a_directorys_contents(shared: CliRunner, stopped: str, tmp_path: Path) -> None:
    whole, contents = tmp_path / "whole", tmp_path / "contents"
    whole.mkdir()
    contents.mkdir()
    shared("cp", f"{stopped}:/srv/d", str(whole))
    shared("cp", f"{stopped}:/srv/d/.", str(contents))
    assert files(whole) == {"d": "dir", "d/a": "a\n", "d/sub": "dir", "d/sub/b": "b\n"}
    assert files(contents) == {"a": "a\n", "sub": "dir", "sub/b": "b\n"}


def test_a_stopped_container_is_read_and_written(
    shared: CliRunner, stopped: str, host_tree: Path, tmp_path: Path
) -> None:
    shared("cp", f"{host_tree}/.", f"{stopped}:/srv/w")  # missing: made, holding the contents
    more = tmp_path / "more"
    (more / "sub").mkdir(parents=True)
    (more / "sub" / "three").write_text("3\n")
    shared("cp", f"{more}/.", f"{stopped}:/srv/w")  # merged into the existing directory
    out = tmp_path / "out"
    shared("cp", f"{stopped}:/srv/w", str(out))
    assert files(out) == {**files(host_tree), "sub/three": "3\n"}
    # What was copied in is the container's own change: its next start sees it.
    shared("commit", stopped, "lzc-committed")
    assert shared("run", "--rm", "lzc-committed", "cat", "/srv/w/one").out == "1\n"


def test_a_stopped_containers_volume_is_read_and_written(shared: CliRunner, tmp_path: Path) -> None:
    """A path in a volume is the volume's, as the container's processes see it, running or not."""
    shared("create", "--name", "lzc-with-volume", "-v", "lzc-vol:/data", "busybox", "true")
    try:
        (tmp_path / "note").write_text("in the volume\n")
        shared("cp", str(tmp_path / "note"), "lzc-with-volume:/data/note")
        assert (
            shared("run", "--rm", "-v", "lzc-vol:/data", "busybox", "cat", "/data/note").out
            == "in the volume\n"
        )
        shared("run", "--rm", "-v", "lzc-vol:/data", "busybox", "sh", "-c", "echo from a run > /data/back")
        shared("cp", "lzc-with-volume:/data/back", str(tmp_path / "back"))
        assert (tmp_path / "back").read_text() == "from a run\n"
    finally:
        shared("rm", "-f", "lzc-with-volume", ok=False)
        shared("volume", "rm", "lzc-vol", ok=False)


def test_a_symlink_in_the_container_never_leads_to_the_host(
    shared: CliRunner, stopped: str, tmp_path: Path
) -> None:
    """/srv/etc-link -> /etc is the container's /etc, whatever the host's is."""
    note = tmp_path / "lzc-marker"
    note.write_text("mine\n")
    shared("cp", str(note), f"{stopped}:/srv/etc-link/")
    assert not Path("/etc/lzc-marker").exists()
    back = tmp_path / "back"
    shared("cp", f"{stopped}:/etc/lzc-marker", str(back))
    assert back.read_text() == "mine\n"
    link = tmp_path / "link"
    shared("cp", f"{stopped}:/srv/etc-link", str(link))  # the link itself, as docker copies it
    assert os.readlink(link) == "/etc"


BAD_COPIES = [
    ("lzc-stopped:/nope", "{tmp}/x", "no such file or directory: /nope"),
    ("{tmp}/nope", "lzc-stopped:/srv", "no such file or directory"),
    ("lzc-stopped:/srv/d", "{tmp}/file", "cannot copy a directory to a file"),
    ("{tmp}/tree", "lzc-stopped:/etc/passwd", "cannot copy a directory to a file"),
    ("{tmp}/file", "lzc-stopped:/srv/bad", "cannot overwrite directory /srv/bad/file"),
    ("lzc-stopped:/etc/passwd", "{tmp}/missing/", "destination directory"),
    ("lzc-stopped:/etc/passwd", "{tmp}/no/such/dir/x", "no such directory"),
    ("{tmp}/file", "lzc-stopped:/no/such/dir/x", "no such directory"),
    ("lzc-stopped:/etc/passwd/", "{tmp}/x", "not a directory"),
    ("lzc-nobody:/etc/passwd", "{tmp}/x", "no such container: lzc-nobody"),
    ("{tmp}/file", "{tmp}/other", "one of SOURCE and DESTINATION must be CONTAINER:PATH"),
]


def test_bad_copies_say_why_and_leave_nothing(shared: CliRunner, stopped: str, tmp_path: Path) -> None:
    host = tmp_path / "lzc-host"
    host.mkdir()
    (host / "file").write_text("f")
    (host / "tree" / "file").mkdir(parents=True)
    (host / "tree" / "file" / "x").write_text("x")
    shared("cp", str(host / "tree"), f"{stopped}:/srv/bad")  # /srv/bad/file: a directory
    before = sorted(host.rglob("*"))
    for source, destination, fragment in BAD_COPIES:
        result = shared("cp", source.format(tmp=host), destination.format(tmp=host), ok=False)
        assert_clean_error(result, fragment)
        assert sorted(host.rglob("*")) == before, (source, destination)  # nothing half-copied on the host
    out = tmp_path / "check"
    shared("cp", f"{stopped}:/srv/bad", str(out))  # nor in the container
    assert files(out) == {"file": "dir", "file/x": "x"}


# -- a lazily pulled image -------------------------------------------------------------------------

BIG = 256 * 1024  # random bytes, so each file is its own frame(s) and compresses to about its size


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry")
    yield server
    server.stop()


@pytest.fixture
def lazy_image(registry: Registry, busybox_tar: Path, tmp_path: Path, root: Path) -> Iterator[str]:
    """busybox plus /data/{big1,big2,dir/a,dir/b}, pushed from another root and pulled lazily."""
    rootfs = tmp_path / "lzc-data.tar"
    with tarfile.open(busybox_tar) as base, tarfile.open(rootfs, "w", format=tarfile.PAX_FORMAT) as out:
        for member in base.getmembers():
            out.addfile(member, base.extractfile(member) if member.isfile() else None)
        for name, data in (
            ("data/big1", os.urandom(BIG)),
            ("data/big2", os.urandom(BIG)),
            ("data/dir/a", os.urandom(BIG // 4)),
            ("data/dir/b", os.urandom(BIG // 4)),
        ):
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            out.addfile(member, io.BytesIO(data))
    ref = f"{registry.address}/test/data:latest"
    origin = tmp_path / "origin"
    for args in (("import", str(rootfs), "data"), ("push", "data", ref)):
        subprocess.run(cli_command(origin, *args), check=True, capture_output=True, timeout=120)
    asyncio.run(pull_lazy(Store(root), ref, insecure=True))
    yield ref
    for mountpoint in lazy_mounts(root):
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


def pieces(root: Path, ref: str, *paths: str) -> int:
    store = Store(root)
    count = 0
    for index, layer in enumerate(store.image(ref).manifest.layers):
        for entry in store.layer_toc(layer).entries:
            if entry.type == "reg" and entry.path.strip("/") in paths:
                count += sum(isinstance(p, Piece) for p in file_pieces(entry, index))
    return count


def settled(mount: MountState) -> dict[str, Any]:
    """The mount's statistics once the containers' own start has stopped fetching."""
    last: dict[str, Any] = {}
    while (now := mount.stats())["pieces_fetched"] != last.get("pieces_fetched"):
        last = now
        time.sleep(0.3)
    return now


def test_cp_on_a_lazy_image_fetches_only_the_files_copied(
    lazyctr: CliRunner, lazy_image: str, root: Path, tmp_path: Path
) -> None:
    lazyctr("run", "-d", "--name", "lzc-lazy", lazy_image, "sleep", "300")  # keeps the shared mount
    lazyctr("run", "--name", "lzc-lazy-stopped", lazy_image, "true")
    try:
        mount = MountState.of(root, shared_mountpoint(root, lazy_image))
        before = settled(mount)
        lazyctr("cp", "lzc-lazy:/data/big1", str(tmp_path / "big1"))  # from the running one
        after_running = mount.stats()
        lazyctr("cp", "lzc-lazy-stopped:/data/dir", str(tmp_path / "dir"))  # from the stopped one
        after_stopped = mount.stats()
        (tmp_path / "new").write_bytes(b"new")
        lazyctr("cp", str(tmp_path / "new"), "lzc-lazy-stopped:/data/")  # writing fetches nothing
        after_write = mount.stats()
    finally:
        lazyctr("rm", "-f", "lzc-lazy", "lzc-lazy-stopped", ok=False)
    assert (tmp_path / "big1").stat().st_size == BIG
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["a", "b"]
    fetched = after_running["pieces_fetched"] - before["pieces_fetched"]
    assert fetched == pieces(root, lazy_image, "data/big1"), (before, after_running)
    assert after_running["bytes_fetched"] - before["bytes_fetched"] < 2 * BIG  # not big2 as well
    fetched = after_stopped["pieces_fetched"] - after_running["pieces_fetched"]
    assert fetched == pieces(root, lazy_image, "data/dir/a", "data/dir/b"), (after_running, after_stopped)
    assert after_stopped["bytes_fetched"] - after_running["bytes_fetched"] < BIG
    assert after_write["pieces_fetched"] == after_stopped["pieces_fetched"]
    assert lazy_mounts(root) == []  # the cp's own hold on the mount went with it
