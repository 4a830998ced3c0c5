"""`lazyctr run` with the lazy driver: overlayfs over a shared lazyfs mount of a lazily pulled image.

The image is pushed from another root to a real registry on 127.0.0.1 and pulled lazily (manifest,
config and TOCs only) into the test's root, so every file a container reads comes through lazyfs.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.hello import profile_paths
from lazyfs.mount import MountState
from lazyfs.profile import load_profile
from registry.transfer import pull_lazy
from runtime.cgroups import Cgroup
from storage.pieces import Piece, file_pieces
from storage.store import Image, Store
from tests.conftest import CliRunner, assert_clean_error, cli_command
from tests.registry.conftest import Registry
from tests.runtime.polling import wait_for

pytestmark = pytest.mark.privileged


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry")
    yield server
    server.stop()


@pytest.fixture
def pushed(registry: Registry, busybox_tar: Path, tmp_path: Path) -> str:
    """busybox in the registry, pushed from another root."""
    origin = tmp_path / "origin"
    ref = f"{registry.address}/test/busybox:latest"
    for args in (("import", str(busybox_tar), "busybox"), ("push", "busybox", ref)):
        subprocess.run(cli_command(origin, *args), check=True, capture_output=True, timeout=120)
    return ref


@pytest.fixture
def image(pushed: str, root: Path) -> str:
    """busybox pulled lazily into the test's root: its manifest, config and TOCs, no file contents."""
    store = Store(root)
    pulled = asyncio.run(pull_lazy(store, pushed, insecure=True))
    assert not store.is_complete(pulled)
    return pushed


@pytest.fixture(autouse=True)
def no_mount_left(root: Path) -> Iterator[None]:
    yield
    for mountpoint in lazy_mounts(root):  # a failed test must not leave a FUSE mount behind
        subprocess.run(["fusermount3", "-uz", str(mountpoint)], check=False)


def lazy_mounts(root: Path) -> list[Path]:
    with open("/proc/self/mountinfo") as f:
        rows = [line.split() for line in f]
    return [
        Path(row[4])
        for row in rows
        if row[row.index("-") + 1] == "fuse.lazyfs" and row[4].startswith(str(root))
    ]


def stored(root: Path, ref: str) -> Image:
    return Store(root).image(ref)


def shared_mountpoint(root: Path, ref: str) -> Path:
    return root / "lazy" / stored(root, ref).descriptor.digest.hex / "root"


def busybox_file(busybox_tar: Path, name: str) -> bytes:
    with tarfile.open(busybox_tar) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def states(lazyctr: CliRunner) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in json.loads(lazyctr("ps", "-a", "--json").out)}


def piece_of(root: Path, ref: str, path: str) -> str:
    """The digest of the (first) piece of `path` in the image, as profiles name it."""
    store = Store(root)
    for index, layer in enumerate(stored(root, ref).manifest.layers):
        for entry in store.layer_toc(layer).entries:
            if entry.path.strip("/") == path.strip("/") and entry.type == "reg":
                piece = file_pieces(entry, index)[0]
                assert isinstance(piece, Piece)
                return str(piece.digest)
    raise AssertionError(f"{path} is not in {ref}")


def test_a_lazily_pulled_image_runs_with_the_lazy_driver_by_default(
    lazyctr: CliRunner, image: str, root: Path, busybox_tar: Path
) -> None:
    out = lazyctr("run", "--name", "first", image, "cat", "/etc/passwd").stdout
    assert out == busybox_file(busybox_tar, "etc/passwd")
    assert states(lazyctr)["first"]["driver"] == "lazy"
    stats = MountState.of(root, shared_mountpoint(root, image)).stats()  # as the daemon left them
    assert stats["pieces_fetched"] > 0 and stats["requests"] > 0 and stats["verification_failures"] == 0
    assert lazy_mounts(root) == [] and list((root / "lazy").iterdir()) == []  # the last one out unmounted
    assert lazyctr("run", "--rm", image, "cat", "/etc/passwd").stdout == out
    assert [s["name"] for s in states(lazyctr).values()] == ["first"]


def test_run_pulls_an_image_it_has_never_seen_lazily_and_fetches_only_what_is_read(
    lazyctr: CliRunner, pushed: str, root: Path, busybox_tar: Path
) -> None:
    result = lazyctr("run", "--rm", pushed, "cat", "/etc/passwd")
    assert result.stdout == busybox_file(busybox_tar, "etc/passwd") and result.stderr == ""
    assert not Store(root).is_complete(stored(root, pushed))  # no layer blob came
    cached = {path.name for path in (root / "chunks").rglob("*") if path.is_file()}
    assert piece_of(root, pushed, "etc/passwd").removeprefix("sha256:") in cached
    for unread in ("etc/group", "etc/hostname"):
        assert piece_of(root, pushed, unread).removeprefix("sha256:") not in cached


def test_run_of_an_image_its_registry_does_not_have(lazyctr: CliRunner, pushed: str, root: Path) -> None:
    missing = pushed.replace(":latest", ":nope")
    assert_clean_error(lazyctr("run", "--rm", missing, "true", ok=False), f"pulling {missing}: ")
    unreachable = lazyctr("run", "--rm", "127.0.0.1:1/test/busybox", "true", ok=False)
    assert unreachable.code == 125
    assert_clean_error(unreachable, "cannot reach registry 127.0.0.1:1")
    assert Store(root).names() == []


def test_containers_started_at_once_mount_the_image_once(image: str, root: Path) -> None:
    command = cli_command(root, "run", "--rm", image, "sh", "-c", "cat /etc/passwd; sleep 3")
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(4)]
    users = shared_mountpoint(root, image).parent / "users"
    wait_for(lambda: users.is_dir() and len(list(users.iterdir())) == 4)
    assert lazy_mounts(root) == [shared_mountpoint(root, image)]
    outputs = [proc.communicate(timeout=120)[0] for proc in runs]
    assert [proc.returncode for proc in runs] == [0] * 4
    assert len(set(outputs)) == 1 and outputs[0].startswith(b"root:")
    assert lazy_mounts(root) == [] and list((root / "lazy").iterdir()) == []


def test_writes_go_to_the_upper_dir_and_the_lazy_mount_is_unchanged(
    lazyctr: CliRunner, image: str, root: Path, busybox_tar: Path
) -> None:
    script = "echo changed > /etc/hostname && rm /etc/group && touch /new && sleep 60"
    container_id = lazyctr("run", "-d", "--name", "w", image, "sh", "-c", script).out.strip()
    upper = root / "containers" / container_id / "upper"
    wait_for(lambda: (upper / "new").exists())
    lower = shared_mountpoint(root, image)
    assert (upper / "etc/hostname").read_text() == "changed\n"
    assert os.major((upper / "etc/group").lstat().st_rdev) == 0  # overlayfs's whiteout
    assert (lower / "etc/hostname").read_bytes() == busybox_file(busybox_tar, "etc/hostname")
    assert (lower / "etc/group").exists() and not (lower / "new").exists()
    with pytest.raises(OSError) as raised:
        (lower / "etc/hostname").write_text("host writes too\n")
    assert raised.value.errno == errno.EROFS
    lazyctr("rm", "-f", "w")
    assert lazy_mounts(root) == []
    assert lazyctr("run", "--rm", image, "cat", "/etc/hostname").stdout == busybox_file(
        busybox_tar, "etc/hostname"
    )


def test_two_containers_share_one_mount_until_the_last_one_goes(
    lazyctr: CliRunner, image: str, root: Path
) -> None:
    a = lazyctr("run", "-d", "--name", "a", image, "sleep", "60").out.strip()
    b = lazyctr("run", "-d", "--name", "b", image, "sleep", "60").out.strip()
    mountpoint = shared_mountpoint(root, image)
    assert lazy_mounts(root) == [mountpoint]
    assert sorted(p.name for p in (mountpoint.parent / "users").iterdir()) == sorted([a, b])
    assert lazyctr("run", "--rm", image, "cat", "/etc/hostname").out == "lazyctr\n"  # a third joins and goes
    lazyctr("rm", "-f", "a")
    assert lazy_mounts(root) == [mountpoint]  # b still runs on it
    assert lazyctr("exec", "b", "cat", "/etc/hostname").out == "lazyctr\n"
    lazyctr("stop", "-t", "1", "b")
    assert lazy_mounts(root) == []
    assert not mountpoint.parent.exists()
    lazyctr("rm", "b")


def test_a_killed_supervisor_does_not_keep_the_mount(lazyctr: CliRunner, image: str, root: Path) -> None:
    supervisor = subprocess.Popen(cli_command(root, "run", "--name", "k", image, "sleep", "60"))
    container_id = ""
    try:
        wait_for(lambda: states(lazyctr).get("k", {}).get("status") == "running")
        container_id, pid = states(lazyctr)["k"]["id"], states(lazyctr)["k"]["pid"]
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(timeout=10)
        assert lazy_mounts(root) == [shared_mountpoint(root, image)]
        lazyctr("rm", "k")  # its state says it is gone: nobody uses the mount any more
        assert lazy_mounts(root) == []
        with open(f"/proc/{pid}/root/etc/hostname") as f:  # the orphan still reads its root
            assert f.read() == "lazyctr\n"
    finally:
        supervisor.kill()
        if container_id:
            Cgroup.open(container_id).remove()  # the orphaned container, which nobody supervises


def test_the_next_run_prunes_a_dead_supervisors_user(lazyctr: CliRunner, image: str, root: Path) -> None:
    supervisor = subprocess.Popen(cli_command(root, "run", "--name", "k", image, "sleep", "60"))
    container_id = ""
    try:
        wait_for(lambda: states(lazyctr).get("k", {}).get("status") == "running")
        container_id = states(lazyctr)["k"]["id"]
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(timeout=10)
        lazyctr("run", "--rm", image, "true")  # joins the mount, drops the stale user, last one out
        assert lazy_mounts(root) == []
    finally:
        supervisor.kill()
        if container_id:
            Cgroup.open(container_id).remove()


def test_a_mount_whose_daemon_died_is_replaced(lazyctr: CliRunner, image: str, root: Path) -> None:
    lazyctr("run", "-d", "--name", "old", image, "sleep", "60")
    comm = Path(f"/proc/{states(lazyctr)['old']['pid']}/comm")
    wait_for(lambda: comm.read_text().strip() == "sleep")  # its binary is read: it runs without the mount
    mountpoint = shared_mountpoint(root, image)
    info = MountState.of(root, mountpoint).info
    assert info is not None
    os.kill(int(info["pid"]), signal.SIGKILL)
    stat = Path(f"/proc/{info['pid']}/stat")
    wait_for(lambda: not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] == "Z")
    failed = lazyctr("exec", "old", "cat", "/etc/hostname", ok=False)
    assert failed.code != 0 and "Transport endpoint is not connected" in failed.stderr
    assert lazyctr("run", "--rm", image, "cat", "/etc/hostname").out == "lazyctr\n"  # a new daemon
    new = MountState.of(root, mountpoint).info
    assert new is not None and new["pid"] != info["pid"] and lazy_mounts(root) == [mountpoint]  # for "old"
    lazyctr("rm", "-f", "old")
    assert lazy_mounts(root) == []


def test_a_recorded_profile_is_prefetched_by_the_next_lazy_run(
    lazyctr: CliRunner, image: str, root: Path
) -> None:
    recorded = lazyctr("run", "--rm", "--record-profile", image, "cat", "/etc/passwd")
    line = recorded.stderr.strip()
    assert "access profile of" in line and "recorded" in line and len(line.splitlines()) == 1
    pieces = int(line.split("recorded: ")[1].split()[0])
    profile = load_profile(Store(root), stored(root, image))
    assert len(profile) == pieces > 0
    assert piece_of(root, image, "etc/passwd") in [p["digest"] for p in profile]
    assert piece_of(root, image, "bin/busybox") == profile[0]["digest"]  # exec reads the binary first
    # The same profile as the files it read, in order: the record stargz's converter is given in the suite.
    paths = profile_paths(root, image)
    assert paths[0] == "bin/busybox" and "etc/passwd" in paths and len(paths) == len(set(paths))

    shutil.rmtree(root / "chunks")  # a machine that has the profile but none of the image's data
    assert lazyctr("run", "--rm", image, "cat", "/etc/passwd").out.startswith("root:")
    stats = MountState.of(root, shared_mountpoint(root, image)).stats()
    assert stats["prefetched"] == pieces and stats["prefetch_hits"] > 0


def test_profile_seconds_bounds_the_recording(lazyctr: CliRunner, image: str, root: Path) -> None:
    script = "sleep 2; cat /etc/passwd"
    lazyctr("run", "--rm", "--record-profile", "--profile-seconds", "0.5", image, "sh", "-c", script)
    digests = [p["digest"] for p in load_profile(Store(root), stored(root, image))]
    assert piece_of(root, image, "bin/busybox") in digests
    assert piece_of(root, image, "etc/passwd") not in digests  # read after the half second


def test_a_recording_that_read_nothing_stores_no_profile(lazyctr: CliRunner, image: str, root: Path) -> None:
    result = lazyctr("run", "--rm", "--record-profile", image, "/nosuchcmd", ok=False)
    assert result.code == 127
    assert "no access profile recorded: the container read nothing" in result.stderr.splitlines()[-1]
    assert load_profile(Store(root), stored(root, image)) == []
    assert lazy_mounts(root) == [] and list((root / "lazy").iterdir()) == []


def test_recording_uses_a_mount_of_its_own(lazyctr: CliRunner, image: str, root: Path) -> None:
    lazyctr("run", "-d", "--name", "reader", image, "sh", "-c", "cat /etc/group; sleep 60")
    lazyctr("run", "--rm", "--record-profile", image, "cat", "/etc/passwd")
    digests = [p["digest"] for p in load_profile(Store(root), stored(root, image))]
    assert piece_of(root, image, "etc/passwd") in digests
    assert piece_of(root, image, "etc/group") not in digests  # the other container's read
    assert lazy_mounts(root) == [shared_mountpoint(root, image)]  # the private one is gone
    lazyctr("rm", "-f", "reader")
    assert lazy_mounts(root) == [] and list((root / "lazy").iterdir()) == []


def root_lower(lazyctr: CliRunner, image: str) -> str:
    """The lower dir of the root of a new container of `image`, as its own mount table says."""
    for line in lazyctr("run", "--rm", image, "cat", "/proc/mounts").out.splitlines():
        _, target, kind, options = line.split()[:4]
        if target == "/" and kind == "overlay":
            return dict(o.partition("=")[::2] for o in options.split(","))["lowerdir"]
    raise AssertionError("the container's root is no overlay")


def fill(lazyctr: CliRunner, root: Path, image: str, point: Path) -> str:
    """Fetch the whole image with a mount's background fill; the assembled root its daemon made."""
    point.mkdir()
    lazyctr("mount", "--fill", image, str(point))
    wait_for(lambda: json.loads(lazyctr("mount", "--stats", str(point)).out)["plain_root"], what="the fill")
    outcome: str = json.loads(lazyctr("mount", "--stats", str(point)).out)["plain_root"]
    lazyctr("umount", str(point))
    return outcome


def test_a_container_started_after_the_fill_reads_a_plain_root_while_running_ones_keep_lazyfs(
    lazyctr: CliRunner, image: str, root: Path, busybox_tar: Path, tmp_path: Path
) -> None:
    lazyctr("run", "-d", "--name", "early", image, "sleep", "120")
    mountpoint = shared_mountpoint(root, image)
    assert root_lower(lazyctr, image) == str(mountpoint)  # half fetched: lazyfs, as before
    assembled = fill(lazyctr, root, image, tmp_path / "fill")
    assert assembled.startswith(str(root / "layers" / "root-"))

    assert root_lower(lazyctr, image) == assembled
    assert lazy_mounts(root) == [mountpoint]  # only the early container's
    assert sorted(p.name for p in (mountpoint.parent / "users").iterdir()) == [states(lazyctr)["early"]["id"]]
    busybox = busybox_file(busybox_tar, "bin/busybox")
    md5 = hashlib.md5(busybox).hexdigest()
    assert lazyctr("run", "--rm", image, "md5sum", "/bin/busybox").out.split()[0] == md5
    assert lazyctr("run", "--rm", image, "stat", "-c", "%a %u %h", "/bin/busybox", "/bin/sh").out == (
        lazyctr("exec", "early", "stat", "-c", "%a %u %h", "/bin/busybox", "/bin/sh").out
    )
    assert lazyctr("exec", "early", "md5sum", "/bin/busybox").out.split()[0] == md5  # still lazyfs
    assert lazyctr("exec", "early", "cat", "/etc/group").stdout == busybox_file(busybox_tar, "etc/group")

    lazyctr("rm", "-f", "early")
    assert lazy_mounts(root) == [] and not mountpoint.parent.exists()
    assert Path(assembled).is_dir()  # the image still has it
    lazyctr("run", "-d", "--name", "late", image, "sleep", "120")
    lazyctr("rmi", image)
    assert Path(assembled).is_dir()  # the late container still runs on it
    lazyctr("rm", "-f", "late")
    lazyctr("gc")
    assert list((root / "layers").iterdir()) == []


def test_a_recording_reads_through_lazyfs_even_after_the_fill(
    lazyctr: CliRunner, image: str, root: Path, tmp_path: Path
) -> None:
    fill(lazyctr, root, image, tmp_path / "fill")
    lazyctr("run", "--rm", "--record-profile", image, "cat", "/etc/passwd")
    assert piece_of(root, image, "etc/passwd") in [
        p["digest"] for p in load_profile(Store(root), stored(root, image))
    ]


def test_lazy_driver_on_a_complete_local_image(lazyctr: CliRunner, busybox_tar: Path, root: Path) -> None:
    lazyctr("import", str(busybox_tar), "busybox")
    lazyctr("run", "--name", "default", "busybox", "true")
    assert states(lazyctr)["default"]["driver"] == "overlay"  # complete: the default stays overlay
    out = lazyctr("run", "--name", "lazy", "--driver", "lazy", "busybox", "cat", "/etc/passwd").stdout
    assert out == busybox_file(busybox_tar, "etc/passwd")
    assert states(lazyctr)["lazy"]["driver"] == "lazy"
    stats = MountState.of(root, shared_mountpoint(root, "busybox")).stats()
    assert stats["pieces_fetched"] > 0  # read from the local blob, verified like any other
    assert lazy_mounts(root) == []
    lazyctr("run", "--rm", "--record-profile", "busybox", "true")  # --record-profile picks lazy
    assert load_profile(Store(root), stored(root, "busybox"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record-profile", "--driver", "overlay"], "--record-profile records reads through lazyfs"),
        (["--record-profile", "--driver", "copy"], "it needs --driver lazy, not copy"),
        (["--driver", "overlay"], "was pulled lazily (its layers are not all here)"),
        (["--driver", "copy"], "the copy driver needs them"),
        (["--profile-seconds", "3"], "--profile-seconds only goes with --record-profile"),
        (["--record-profile", "--profile-seconds", "0"], "--profile-seconds must be more than 0"),
    ],
)
def test_bad_input(lazyctr: CliRunner, image: str, root: Path, args: list[str], message: str) -> None:
    result = lazyctr("run", "--rm", *args, image, "true", ok=False)
    assert result.code == 125
    assert_clean_error(result, message)
    assert not any((root / "containers").iterdir()) if (root / "containers").exists() else True
    assert lazy_mounts(root) == [] and load_profile(Store(root), stored(root, image)) == []
