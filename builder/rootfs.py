"""Base images, where a FROM starts: root file systems made from Debian packages (busybox-static, and a
debootstrap minbase), as tarballs that `lazyctr rootfs` writes and `lazyctr import` stores.

Docker Hub is out of reach, so demos, tests and benchmarks start from these tarballs. The Debian
mirror is read from the machine's apt configuration, never written into the project.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from storage.errors import NotFound, StorageError

BUSYBOX = Path("/bin/busybox")
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"
EPOCH = 1700000000  # fixed mtimes make the busybox tarball, and so its image, reproducible


class RootfsError(StorageError):
    """A tool that makes a root file system (busybox, debootstrap, tar) failed."""


def _run(argv: list[str], what: str) -> str:
    """Run a tool and return its stdout; a failure names `what` ran and the tool's last error line."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL
        )
    except OSError as e:
        raise RootfsError(f"{what}: cannot run {argv[0]}: {e.strerror or e}") from None
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        status = (
            f"killed by signal {-proc.returncode}"
            if proc.returncode < 0
            else f"exit status {proc.returncode}"
        )
        reason = f": {lines[-1]}" if lines else ""
        raise RootfsError(f"{what} failed ({status}){reason}")
    return proc.stdout


def busybox_tarball(out: Path) -> None:
    """A minimal rootfs: static busybox, its applets as symlinks, /etc/passwd and the usual dirs."""
    if not BUSYBOX.is_file():
        raise NotFound(f"{BUSYBOX} is missing: install the busybox-static package")
    applets = _run([str(BUSYBOX), "--list-full"], f"{BUSYBOX} --list-full")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, kind: bytes, mode: int, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, EPOCH, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for directory, mode in (
            ("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555), ("root", 0o700),
            ("sbin", 0o755), ("sys", 0o555), ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755),
            ("usr/sbin", 0o755), ("var", 0o755),
        ):  # fmt: skip
            add(directory, tarfile.DIRTYPE, mode)
        add("bin/busybox", tarfile.REGTYPE, 0o755, BUSYBOX.read_bytes())
        for applet in sorted(set(applets.split())):
            applet = applet.lstrip("/")
            if applet != "bin/busybox" and applet.count("/") in (1, 2):
                target = "/bin/busybox"
                add(applet, tarfile.SYMTYPE, 0o777, link=target)
        add("etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())
        add("etc/group", tarfile.REGTYPE, 0o644, GROUP.encode())
        add("etc/hostname", tarfile.REGTYPE, 0o644, b"lazyctr\n")


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 .sources files or sources.list)."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    candidates += [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in candidates:
        if not path.is_file():
            continue
        text = path.read_text()
        for uri in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M
        ):
            if "security" not in uri:
                return str(uri)
    raise NotFound("no Debian mirror found in the apt configuration")


def debian_tarball(
    out: Path, suite: str = "bookworm", variant: str = "minbase", include: tuple[str, ...] = ()
) -> None:
    """debootstrap a Debian root file system into a tarball (needs root and the debootstrap package),
    with the packages `include` besides the variant's own."""
    if shutil.which("debootstrap") is None:
        raise NotFound("debootstrap is missing: install the debootstrap package")
    with tempfile.TemporaryDirectory(prefix="lazyctr-debootstrap-") as tmp:
        target = Path(tmp) / "rootfs"
        mirror = apt_mirror()
        extra = [f"--include={','.join(include)}"] if include else []
        _run(
            ["debootstrap", f"--variant={variant}", *extra, suite, str(target), mirror],
            f"debootstrap --variant={variant} {' '.join(extra)} {suite} {mirror}".replace("  ", " "),
        )
        _run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(target), "-cf", str(out), "."],
            f"tar of the {suite} root file system",
        )
