"""The guest of `lazyctr bench vm`: one image, run as a lazyctr container and as a QEMU virtual machine.

Owns what makes the two run the same bits: the image's build context (a Debian minbase plus the
host's busybox and fio, with its libraries, and benchmarks/vmimage/agent, the program both run), the
image's files made into an ext4 disk (the VM's root, read-only, shared by every VM), the initramfs
that loads the Debian kernel's virtio and ext4 modules and switches into that root, and the QEMU
command line with a guest process whose serial console we read (`Guest`).

Every line the agent prints for us starts with "LZV "; the first is `LZV ready MARKER`, MARKER being
a token written into the image at build time, so reading it back proves the VM booted the image.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import BenchError, stderr_tail

AGENT = Path(__file__).with_name("vmimage") / "agent"
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: no libraries to carry along
FIO = "fio"
KERNELS = Path("/boot")
MODULES = Path("/lib/modules")
# The Debian kernel builds all of these as modules (CONFIG_VIRTIO_MMIO=m, CONFIG_EXT4_FS=m, ...), so the
# VM needs an initramfs; their dependencies come from modules.dep. virtio_mmio serves microvm (found
# through ACPI: the kernel lacks CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), virtio_pci the q35 machine.
GUEST_MODULES = ("virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "crc32c_generic", "ext4")
MACHINES = ("microvm", "q35")
GUEST_MEMORY_MB = 256
READY_TIMEOUT = 120.0  # seconds: a VM under TCG on a busy 2-core machine boots in a few
MARK = "LZV "


@dataclass(frozen=True)
class Kernel:
    version: str
    image: Path  # the bzImage QEMU loads with -kernel
    modules: Path  # /lib/modules/VERSION


def find_kernel() -> Kernel:
    """The newest Debian kernel in /boot that has its modules (package linux-image-amd64)."""
    for image in sorted(KERNELS.glob("vmlinuz-*"), reverse=True):
        version = image.name.removeprefix("vmlinuz-")
        if (MODULES / version / "modules.dep").is_file():
            return Kernel(version, image, MODULES / version)
    raise BenchError(f"no kernel with modules in {KERNELS} (apt-get install linux-image-amd64)")


def module_files(kernel: Kernel, names: Sequence[str]) -> list[Path]:
    """The .ko files of `names` and of everything they need, each after what it needs."""
    deps: dict[str, list[str]] = {}
    for line in (kernel.modules / "modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    by_name = {Path(m).name.removesuffix(".ko"): m for m in deps}
    ordered: list[str] = []

    def visit(module: str) -> None:
        if module in ordered:
            return
        for need in deps[module]:
            visit(need)
        ordered.append(module)

    for name in names:
        if name not in by_name:
            raise BenchError(f"kernel {kernel.version} has no module {name} (is it built in or absent?)")
        visit(by_name[name])
    for module in ordered:
        if not module.endswith(".ko"):
            raise BenchError(f"{module}: compressed modules are not supported (busybox insmod reads .ko)")
    return [kernel.modules / m for m in ordered]


INIT = """#!/bin/busybox sh
# The VM's first program: load the virtio and ext4 modules, mount the image's disk, switch into it.
/bin/busybox mount -t devtmpfs dev /dev
for m in {modules}; do /bin/busybox insmod /lib/modules/$m.ko || echo "LZV error: insmod $m"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 500 ]; do /bin/busybox usleep 10000; i=$((i + 1)); done
if ! /bin/busybox mount -t ext4 -o ro,noatime /dev/vda /newroot; then
    echo "LZV error: cannot mount the image's disk /dev/vda"
    /bin/busybox poweroff -f
fi
/bin/busybox mount --move /dev /newroot/dev
exec /bin/busybox switch_root /newroot /lzv/agent "$@"
"""


def _cpio_entry(name: str, mode: int, data: bytes = b"") -> bytes:
    """One entry of a newc cpio archive (what the kernel unpacks as an initramfs)."""
    encoded = name.encode() + b"\0"
    fields = (0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    pad = (-(len(header) + len(encoded))) % 4
    return header + encoded + b"\0" * pad + data + b"\0" * ((-len(data)) % 4)


def build_initramfs(kernel: Kernel, out: Path) -> Path:
    """Write a gzip'd cpio initramfs: busybox, the modules, and the /init above."""
    modules = module_files(kernel, GUEST_MODULES)
    names = " ".join(m.name.removesuffix(".ko") for m in modules)
    entries = [_cpio_entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "lib", "lib/modules", "newroot")]
    entries += [_cpio_entry(d, stat.S_IFDIR | 0o755) for d in ("proc", "sys")]
    entries.append(_cpio_entry("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()))
    entries.append(_cpio_entry("init", stat.S_IFREG | 0o755, INIT.format(modules=names).encode()))
    for module in modules:
        entries.append(_cpio_entry(f"lib/modules/{module.name}", stat.S_IFREG | 0o644, module.read_bytes()))
    entries.append(_cpio_entry("TRAILER!!!", 0))
    out.write_bytes(gzip.compress(b"".join(entries), compresslevel=1))
    return out


# -- the image ----------------------------------------------------------------------------------


def fio_files() -> list[tuple[Path, str]]:
    """The host's fio and the libraries it loads, each with where it goes in the image.

    Copied rather than installed: containers here reach no Debian mirror, and the host runs the same
    Debian release as the image's base, so these are the very files `apt-get install fio` would add.
    Libraries go below /usr (the image has a merged /usr: /lib is a symlink a COPY must not replace).
    """
    binary = shutil.which(FIO)
    if binary is None:
        raise BenchError("fio is not installed (apt-get install fio)")
    proc = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"ldd {binary}: {stderr_tail(proc.stderr)}")
    files = [(Path(binary), "usr/bin/fio")]
    for line in proc.stdout.splitlines():
        found = re.match(r"\s*(\S+) => (/\S+)", line)
        if found is None:
            continue  # the vDSO and the dynamic loader, which the base has
        path = found.group(2)
        where = path if path.startswith("/usr/") else "/usr" + path
        files.append((Path(path), where.lstrip("/")))
    return files


def write_context(context: Path) -> str:
    """The image's build context in `context`; returns the marker token written into the image."""
    marker = secrets.token_hex(8)
    root = context / "rootfs"
    (root / "lzv" / "scratch").mkdir(parents=True)
    (root / "lzv" / "scratch" / ".keep").write_text("")
    shutil.copy(AGENT, root / "lzv" / "agent")
    shutil.copy(BUSYBOX, root / "lzv" / "busybox")
    (root / "lzv" / "marker").write_text(marker + "\n")
    for source, where in fio_files():
        target = root / where
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)  # the file itself, not the host's symlink to it
        target.chmod(0o755)
    (context / "Dockerfile").write_text(
        "FROM debian:minbase\n"
        "# busybox (the agent's shell and tools), fio and its libraries, the agent and the marker\n"
        "COPY rootfs/ /\n"
    )
    return marker


def make_disk(tree: Path | None, out: Path, size_mb: int) -> Path:
    """An ext4 file system in a file of `size_mb` MiB holding `tree` (or empty)."""
    argv = ["mkfs.ext4", "-q", "-F"]
    if tree is not None:
        argv += ["-d", str(tree)]
    with open(out, "wb") as f:
        f.truncate(size_mb << 20)
    proc = subprocess.run([*argv, str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"mkfs.ext4 {out.name}: {stderr_tail(proc.stderr)}")
    return out


def tree_size_mb(tree: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(tree):
        for name in files:
            with_path = Path(dirpath) / name
            if not with_path.is_symlink():
                total += with_path.stat().st_size
    return total >> 20


# -- QEMU ---------------------------------------------------------------------------------------


def host_tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    return 2_000_000


@dataclass
class VmSetup:
    """What every VM of a run shares."""

    qemu: str
    accel: str  # kvm or tcg
    kernel: Kernel
    initramfs: Path
    root_disk: Path


def qemu_argv(
    setup: VmSetup,
    machine: str,
    args: Sequence[str],
    *,
    scratch: Path | None = None,
    tap: str | None = None,
    mac: str = "52:54:00:79:00:02",
) -> list[str]:
    """The QEMU command line of one VM running `agent ARGS`; its serial console is our stdout."""
    bus = "device" if machine == "microvm" else "pci"  # virtio-mmio on microvm, PCI on q35
    machine_opt = "microvm,acpi=on" if machine == "microvm" else "q35"
    if setup.accel == "kvm":
        # arch-capabilities off: some nested KVMs refuse to set the MSR QEMU writes for it
        accel = ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    else:
        accel = ["-accel", "tcg"]
    argv = [
        setup.qemu,
        "-M",
        machine_opt,
        *accel,
        "-m",
        str(GUEST_MEMORY_MB),
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
        str(setup.kernel.image),
        "-initrd",
        str(setup.initramfs),
        "-append",
        # tsc_early_khz: under TCG on a loaded host microvm's kernel fails to calibrate its TSC against
        # the PIT and, having no HPET or ACPI PM timer there, hangs; told the rate, it never calibrates
        f"console=ttyS0 quiet panic=-1 tsc_early_khz={host_tsc_khz()} -- " + " ".join(args),
        "-drive",
        f"id=root,file={setup.root_disk},format=raw,if=none,readonly=on,cache=none,aio=threads",
        "-device",
        f"virtio-blk-{bus},drive=root",
    ]
    if scratch is not None:
        argv += [
            "-drive",
            f"id=scratch,file={scratch},format=raw,if=none,cache=none,aio=threads",
            "-device",
            f"virtio-blk-{bus},drive=scratch",
        ]
    if tap is not None:
        argv += [
            "-netdev",
            f"tap,id=net,ifname={tap},script=no,downscript=no",
            "-device",
            f"virtio-net-{bus},netdev=net,mac={mac}",
        ]
    return argv


@dataclass
class Guest:
    """A process whose "LZV " lines we collect: a VM (its serial console), a container or a native run.

    `ready_s` is the time from the start of the process to its `LZV ready` line.
    """

    argv: list[str]
    name: str
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] = field(init=False)
    lines: list[str] = field(default_factory=list)
    output: list[str] = field(default_factory=list)  # every line, for the error message
    ready_s: float | None = None
    marker: str | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _started: float = 0.0

    def start(self) -> Guest:
        self._started = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the guests in order
            )
        except OSError as e:
            raise BenchError(f"cannot start {self.name}: {e}") from None
        threading.Thread(target=self._read, daemon=True, name=self.name).start()
        return self

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            self.output.append(line)
            at = line.find(MARK)  # the kernel may print on the same console line
            if at < 0:
                continue
            line = line[at + len(MARK) :]
            if line.startswith("ready ") and self.ready_s is None:
                self.ready_s = time.monotonic() - self._started
                self.marker = line.split()[1] if len(line.split()) > 1 else ""
                self._ready.set()
            self.lines.append(line)
        self._ready.set()  # ended: whoever waits stops waiting

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        if not self._ready.wait(timeout) or self.ready_s is None:
            self.stop()
            hint = ""
            if "-accel" in self.argv and self.argv[self.argv.index("-accel") + 1] == "kvm":
                hint = " (under KVM: a /dev/kvm that boots only special guest kernels? try --accel tcg)"
            raise BenchError(f"{self.name} did not answer in {timeout:.0f} s{hint}: {self.tail()}")
        return self.ready_s

    def wait(self, timeout: float) -> list[str]:
        """Wait for the process to end; its "LZV " lines."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise BenchError(f"{self.name} did not finish in {timeout:.0f} s: {self.tail()}") from None
        time.sleep(0.05)  # the reader thread takes the last lines
        errors = [line for line in self.lines if line.startswith("error")]
        if errors:
            raise BenchError(f"{self.name}: {errors[0]}")
        return self.lines

    def tail(self) -> str:
        return " | ".join(line for line in self.output[-4:] if line.strip()) or "(no output)"

    def stop(self) -> None:
        """SIGTERM to its process group, then SIGKILL: QEMU ends at once, `lazyctr run` forwards it to
        the container's PID 1 and removes the container, a native agent ends with its servers."""
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
                return
            except subprocess.TimeoutExpired:
                continue
