"""An overlayfs upper directory -> an OCI layer tar: what a container or a build step changed.

overlayfs records a deletion as a 0:0 character device and a directory that hides everything
below as the `trusted.overlay.opaque=y` xattr; OCI layers say the same with `.wh.NAME` files and
`.wh..wh..opq`. Entries are written in sorted order with their modes, owners, times and xattrs;
files that share an inode become hard links. Regular files named in `first` (an access profile's
files) can go first instead, in that order, after the directories that hold them: their chunks then
make one contiguous range of the layer blob, fetched in one request.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Collection, Sequence
from pathlib import Path

from storage.paths import OPAQUE_WHITEOUT, WHITEOUT_PREFIX
from storage.toc import NS

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")


def upper_to_tar(
    upper: Path,
    out: Path,
    clamp_mtime_ns: int | None = None,
    exclude: Collection[str] = (),
    first: Sequence[str] = (),
) -> int:
    """Write the changes recorded in `upper` as a layer tar at `out`; returns the entry count.

    With `clamp_mtime_ns` (SOURCE_DATE_EPOCH), no time in the layer is later than it. `exclude` names
    paths (relative to `upper`) that are no change, such as a container's mount points. `first`
    names regular files to write first (see the module docstring).
    """
    count = 0
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in _in_order(upper, _walk(upper), first):
            name = path.relative_to(upper).as_posix()
            if name in exclude:
                continue
            st = path.lstat()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                tar.addfile(_whiteout(name, st, clamp_mtime_ns))
                count += 1
                continue
            info = tar.gettarinfo(str(path), arcname=name)
            info.uname = info.gname = ""
            info.mtime = _mtime(st, clamp_mtime_ns)
            xattrs = _xattrs(path)
            info.pax_headers = {
                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
            }
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in links:
                    info.type, info.linkname, info.size = tarfile.LNKTYPE, links[key], 0
                else:
                    links[key] = name
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
            count += 1
            if stat.S_ISDIR(st.st_mode) and _opaque(path):
                tar.addfile(_marker(f"{name}/{OPAQUE_WHITEOUT}", st, clamp_mtime_ns))
                count += 1
    return count


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(directory)
        out.extend(base / name for name in sorted([*dirs, *files]))
    out.sort(key=lambda p: p.relative_to(root).parts)
    return out


def _in_order(root: Path, paths: list[Path], first: Sequence[str]) -> list[Path]:
    """`paths` (sorted), with the regular files `first` names moved to the front in its order, after
    the directories above them (a tar names a directory before what it holds)."""
    present = set(paths)
    leading = [p for p in dict.fromkeys(root / name for name in first) if p in present and _is_file(p)]
    if not leading:
        return paths
    above = {parent for p in leading for parent in p.parents if parent != root and root in parent.parents}
    dirs = [p for p in paths if p in above]
    moved = set(leading) | above
    return [*dirs, *leading, *(p for p in paths if p not in moved)]


def _is_file(path: Path) -> bool:
    return stat.S_ISREG(path.lstat().st_mode)


def _mtime(st: os.stat_result, clamp_ns: int | None) -> float:
    ns = st.st_mtime_ns if clamp_ns is None else min(st.st_mtime_ns, clamp_ns)
    return ns / NS


def _marker(name: str, st: os.stat_result, clamp_ns: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o600, _mtime(st, clamp_ns)
    return info


def _whiteout(name: str, st: os.stat_result, clamp_ns: int | None) -> tarfile.TarInfo:
    parent, _, base = name.rpartition("/")
    return _marker(
        f"{parent}/{WHITEOUT_PREFIX}{base}" if parent else f"{WHITEOUT_PREFIX}{base}", st, clamp_ns
    )


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in names
        if not name.startswith(OVERLAY_XATTR_PREFIXES)
    }


def _opaque(path: Path) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False
