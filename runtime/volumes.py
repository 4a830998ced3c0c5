"""Named volumes: directories under the root that outlive containers, as docker's `local` volumes.

`<root>/volumes/<name>/` holds `_data/` (what containers see, docker's own layout), `volume.json`
(name, creation time, labels) and `users/`, one empty file per container that mounts it, named by
container ID. A volume is in use while one of those containers still exists (running or not, as
docker counts it); a user whose container directory is gone counts for nothing. `-v NAME:/path`
creates the volume on first use. Creating, attaching and removing happen under one lock, so a
volume cannot be removed between a container's check and its mount. An empty volume gets what the
image has at its mount point when a container mounts it (`seed`, in the container's PID 1), as docker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.process import ContainerError
from runtime.spec import Volume
from runtime.state import containers_dir
from storage.errors import LazyctrError, NotFound
from storage.files import atomic_write, file_lock

VOLUMES_DIR = "volumes"
DATA = "_data"
META = "volume.json"
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # docker's


class VolumeError(LazyctrError):
    """A volume that cannot be created or removed: a bad name, or one in use."""


@dataclass(frozen=True)
class NamedVolume:
    root: Path  # the lazyctr root
    name: str

    @property
    def dir(self) -> Path:
        return self.root / VOLUMES_DIR / self.name

    @property
    def data(self) -> Path:
        return self.dir / DATA

    def users(self) -> list[str]:
        """The IDs of the existing containers that mount it."""
        users = self.dir / "users"
        found = sorted(p.name for p in users.iterdir()) if users.is_dir() else []
        return [i for i in found if (containers_dir(self.root) / i).is_dir()]

    def inspect(self) -> dict[str, Any]:
        try:
            meta: dict[str, Any] = json.loads((self.dir / META).read_text())
        except (OSError, ValueError):
            raise NotFound(f"no such volume: {self.name}") from None
        return {
            "Name": self.name,
            "Driver": "local",
            "Mountpoint": str(self.data),
            "CreatedAt": meta.get("CreatedAt", ""),
            "Labels": meta.get("Labels", {}),
            "Scope": "local",
            "UsedBy": self.users(),
        }


def is_volume_name(text: str) -> bool:
    """Whether the source of `-v SRC:DST` names a volume rather than a host path (docker's rule)."""
    return not text.startswith(("/", ".", "~")) and "/" not in text


def _lock(root: Path) -> Any:
    return file_lock(root / "locks" / "volumes.lock")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise VolumeError(
            f"invalid volume name {name!r}: use at least two of letters, digits, '_', '.' and '-',"
            " starting with a letter or digit"
        )


def create(root: Path, name: str | None = None, labels: dict[str, str] | None = None) -> NamedVolume:
    """Create the volume `name` (a random one if None); an existing one is returned as it is."""
    name = name or os.urandom(32).hex()
    _check_name(name)
    with _lock(root):
        return _create_locked(root, name, labels or {})


def _create_locked(root: Path, name: str, labels: dict[str, str]) -> NamedVolume:
    volume = NamedVolume(root, name)
    if (volume.dir / META).is_file():
        return volume
    volume.data.mkdir(parents=True, exist_ok=True)
    (volume.dir / "users").mkdir(exist_ok=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # Written last: a volume without it was never finished, and `create` completes it.
    atomic_write(volume.dir / META, json.dumps({"CreatedAt": created, "Labels": labels}).encode())
    return volume


def find(root: Path, name: str) -> NamedVolume:
    volume = NamedVolume(root, name)
    if not _NAME.fullmatch(name) or not (volume.dir / META).is_file():
        raise NotFound(f"no such volume: {name}")
    return volume


def all_volumes(root: Path) -> list[NamedVolume]:
    base = root / VOLUMES_DIR
    names = sorted(p.name for p in base.iterdir()) if base.is_dir() else []
    return [NamedVolume(root, n) for n in names if (base / n / META).is_file()]


def remove(root: Path, name: str, force: bool = False) -> None:
    """Remove the volume and its data; one a container still uses is refused (even with `force`,
    as docker: `force` only makes a missing volume no error)."""
    with _lock(root):
        try:
            volume = find(root, name)
        except NotFound:
            if force:
                return
            raise
        users = volume.users()
        if users:
            raise VolumeError(
                f"volume {name} is in use by container(s) {', '.join(u[:12] for u in users)}:"
                " remove them first"
            )
        shutil.rmtree(volume.dir)


def attach(root: Path, text: str, container_id: str) -> Volume:
    """`-v NAME:/path[:ro|rw]`: the named volume (made if missing) for the container `container_id`."""
    parts = text.split(":")
    if (
        len(parts) not in (2, 3)
        or not parts[1].startswith("/")
        or (len(parts) == 3 and parts[2] not in ("ro", "rw"))
    ):
        raise ContainerError(f"invalid volume {text!r}: expected NAME:/container/path[:ro]")
    name = parts[0]
    try:
        _check_name(name)
    except VolumeError as e:
        raise ContainerError(str(e)) from None
    with _lock(root):
        volume = _create_locked(root, name, {})
        atomic_write(volume.dir / "users" / container_id, b"")
    return Volume(volume.data, parts[1], len(parts) == 3 and parts[2] == "ro", named=True)


def seed(data: Path, image_dir: Path) -> None:
    """docker's copy of the image's files into an empty volume where it is mounted, owners, modes and
    times kept; the volume's own directory takes the image directory's owner and mode."""
    if not image_dir.is_dir() or image_dir.is_symlink() or any(data.iterdir()):
        return
    for child in sorted(image_dir.iterdir()):
        _copy(child, data / child.name)
    _same_metadata(image_dir, data)


def _copy(source: Path, target: Path) -> None:
    st = source.lstat()
    if stat.S_ISDIR(st.st_mode):
        target.mkdir()
        for child in sorted(source.iterdir()):
            _copy(child, target / child.name)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), target)
    elif stat.S_ISREG(st.st_mode):
        shutil.copyfile(source, target)
    else:
        os.mknod(target, st.st_mode, st.st_rdev)  # devices, fifos, sockets as they are
    _same_metadata(source, target)


def _same_metadata(source: Path, target: Path) -> None:
    st = source.lstat()
    os.lchown(target, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(target, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid bits
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def volume_of(root: Path, text: str, container_id: str) -> Volume:
    """One `-v` of `run`: a named volume, or a bind mount of a host path."""
    source = text.split(":", 1)[0]
    return attach(root, text, container_id) if source and is_volume_name(source) else Volume.parse(text)
