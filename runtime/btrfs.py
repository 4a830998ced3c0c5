"""btrfs subvolumes through the kernel's ioctls (as docker's btrfs driver does; no btrfs-progs needed).

Create a subvolume, snapshot one (writable), destroy one. Each call takes the parent directory and a
name, as the ioctls do. An OSError from the kernel is re-raised with the path it was about; ENOTTY
means the directory is not on a btrfs file system.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

# struct btrfs_ioctl_vol_args { __s64 fd; char name[BTRFS_PATH_NAME_MAX + 1]; }: 4096 bytes in all.
_VOL_ARGS_SIZE = 4096
_NAME_MAX = _VOL_ARGS_SIZE - 8 - 1


def _iow(number: int) -> int:
    """_IOW(BTRFS_IOCTL_MAGIC, number, struct btrfs_ioctl_vol_args)."""
    return (1 << 30) | (_VOL_ARGS_SIZE << 16) | (0x94 << 8) | number


SNAP_CREATE = _iow(1)
SUBVOL_CREATE = _iow(14)
SNAP_DESTROY = _iow(15)


def _vol_args(fd: int, name: str) -> bytearray:
    encoded = name.encode()
    if not encoded or len(encoded) > _NAME_MAX or "/" in name or name in (".", ".."):
        raise ValueError(f"bad subvolume name {name!r}")
    args = bytearray(_VOL_ARGS_SIZE)  # mutable: fcntl.ioctl passes it as it is, with no 1024-byte cap
    args[:8] = fd.to_bytes(8, "little", signed=True)
    args[8 : 8 + len(encoded)] = encoded
    return args


def _ioctl_on_parent(path: Path, request: int, source_fd: int = 0) -> None:
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(parent, request, _vol_args(source_fd, path.name))
    except OSError as e:
        if e.errno == errno.ENOTTY:
            raise OSError(errno.ENOTTY, f"{path.parent} is not on a btrfs file system") from None
        raise OSError(e.errno, f"{path}: {os.strerror(e.errno or 0)}") from None
    finally:
        os.close(parent)


def create_subvolume(path: Path) -> None:
    """A new, empty subvolume at `path` (which must not exist)."""
    _ioctl_on_parent(path, SUBVOL_CREATE)


def snapshot(source: Path, path: Path) -> None:
    """A writable snapshot of the subvolume `source` at `path`: a copy that shares every extent."""
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _ioctl_on_parent(path, SNAP_CREATE, fd)
    finally:
        os.close(fd)


def delete_subvolume(path: Path) -> None:
    """Destroy the subvolume (or snapshot) at `path` with everything in it, at once."""
    _ioctl_on_parent(path, SNAP_DESTROY)
