"""`lazyctr bench vm`: its options, its guest's pieces (initramfs modules, fio's figures), its report, and
(extended: minutes under TCG) the whole suite on its smallest settings, with what it leaves behind."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import BenchError
from benchmarks.vm import FIO_WORKLOADS, KINDS, PREFIX, STARTUP_KINDS, parse_fio, render_report
from benchmarks.vmguest import GUEST_MODULES, build_initramfs, find_kernel, module_files
from tests.benchmarks.leftovers import traces
from tests.conftest import Result, assert_clean_error, require_tools

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
SMALLEST = ["--guests", "1", "--runs", "1", "--cpu-mb", "4", "--fio-mb", "4", "--fio-seconds", "1"]


def bench(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "lazyctr.cli", "bench", "vm", *args],
        cwd=REPO,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


def test_a_missing_qemu_is_one_line_before_anything_is_made(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = bench("--out", str(out), env={"LAZYCTR_QEMU": str(tmp_path / "no-such-qemu")})
    assert_clean_error(result, "qemu not found")
    assert "apt-get install qemu-system-x86" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--guests", "one"], "--guests: expected numbers"),
        (["--guests", "0,2"], "each count must be 1..64"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["--fio-seconds", "0"], "--fio-seconds must be at least 1"),
        (["--accel", "hvf"], "--accel must be auto, kvm or tcg"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, args: list[str], fragment: str) -> None:
    out = tmp_path / "out"
    result = bench(*args, "--out", str(out))
    assert_clean_error(result, fragment)
    assert result.code == 2
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("mine")
    assert_clean_error(bench("--out", str(out)), "exists and is not a directory")
    assert out.read_text() == "mine"


def test_initramfs_holds_the_guest_modules_after_what_they_need(tmp_path: Path) -> None:
    try:
        kernel = find_kernel()
    except BenchError as e:
        pytest.skip(str(e))
    names = [m.name.removesuffix(".ko") for m in module_files(kernel, GUEST_MODULES)]
    assert set(GUEST_MODULES) <= set(names)
    assert names.index("virtio") < names.index("virtio_mmio") < names.index("virtio_blk")
    assert names.index("jbd2") < names.index("ext4") and names.index("mbcache") < names.index("ext4")
    archive = gzip.decompress(build_initramfs(kernel, tmp_path / "initramfs.gz").read_bytes())
    assert archive.startswith(b"070701")
    for name in ("init", "bin/busybox", "lib/modules/ext4.ko", "lib/modules/virtio_mmio.ko", "TRAILER!!!"):
        assert name.encode() + b"\0" in archive
    assert b"switch_root /newroot /lzv/agent" in archive


def test_fio_figures_are_read_from_its_terse_lines(tmp_path: Path) -> None:
    """Real fio lines (a tiny job per workload): read bandwidth for reads, write bandwidth for writes."""
    require_tools("fio")
    lines = []
    for rw in FIO_WORKLOADS:
        proc = subprocess.run(
            [
                "fio",
                "--minimal",
                f"--name={rw}",
                f"--directory={tmp_path}",
                "--size=1m",
                f"--rw={rw}",
                "--bs=4k",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        lines.append(f"fio {rw} {proc.stdout.strip().splitlines()[-1]}")
    figures = parse_fio(lines)
    assert set(figures) == set(FIO_WORKLOADS) and all(v > 0 for v in figures.values())
    with pytest.raises(BenchError, match="fio read failed"):
        parse_fio(["fio read fio: cannot open file"])


def fake_results() -> dict[str, Any]:
    def per_kind(value: float, kinds: tuple[str, ...] = KINDS, **extra: Any) -> list[dict[str, Any]]:
        return [
            {"kind": k, "run": 0, **{key: v * (1 + i) for key, v in extra.items()}}
            for i, k in enumerate(kinds)
        ]

    return {
        "config": {"runs": 1, "guests": [1, 2], "cpu_mb": 4},
        "started": "2026-12-04T21:00:00+00:00",
        "finished": "2026-12-04T21:05:00+00:00",
        "accel": "tcg",
        "accel_reason": "TCG, as asked",
        "qemu": "QEMU emulator version 7.2",
        "image": {"marker": "m", "kernel": "6.1.0-57-amd64", "image_files_mb": 273},
        "startup": per_kind(0, STARTUP_KINDS, ready_s=0.05),
        "cpu": per_kind(0, seconds=1.0),
        "network": per_kind(0, rtt_s=20e-6, throughput_bps=1e9),
        "memory": [
            {"kind": k, "guests": g, "pss": g * m, "rss": g * m, "cgroup_usage": g, "supervisor_pss": g}
            for g in (1, 2)
            for k, m in (("native", 2e6), ("container", 15e6), ("vm", 200e6))
        ],
        "disk": [
            {"kind": k, "guests": g, **{w: 1e8 / (1 + i) for w in FIO_WORKLOADS}}
            for g in (1, 2)
            for i, k in enumerate(KINDS)
        ],
    }


def test_report_puts_the_seeds_figures_beside_ours(tmp_path: Path) -> None:
    results = fake_results()
    text = render_report(results)
    assert "| startup (time to the agent's first line) | VMs 50-100x slower | 1.5x slower |" in text
    assert "containers 11-60x smaller | containers 13.3x smaller" in text
    assert "2-22% lower in VMs | 33.3% lower in the VM" in text
    assert "The VM ran under TCG" in text
    from benchmarks.vm import draw_plots

    for plot in draw_plots(results, tmp_path):
        assert plot.read_bytes().startswith(PNG)


def own_traces() -> set[str]:
    """Mounts and processes of the suite (its work directory and names carry PREFIX), and its devices."""
    found = traces([f"/{PREFIX}-"])
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found |= {line for line in links.splitlines() if PREFIX in line}
    found |= {
        ns
        for ns in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split()
        if PREFIX in ns
    }
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    found |= {line for line in loops.splitlines() if PREFIX in line}
    return found


@pytest.mark.privileged
@pytest.mark.extended
def test_real_suite_on_its_smallest_settings(tmp_path: Path) -> None:
    """One guest of each kind, one run: every metric is there, the VM read back the image's marker, and
    no QEMU, tap, namespace, loop device or mount of the suite is left."""
    require_tools("ip", "nsenter", "unshare", "qemu-system-x86_64", "mkfs.ext4", "fio")
    before = own_traces()
    out = tmp_path / "out"
    result = bench(*SMALLEST, "--net-mb", "2", "--out", str(out), timeout=1500)
    assert result.code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    marker = results["image"]["marker"]
    assert len(marker) == 16
    startup = {s["kind"]: s for s in results["startup"]}
    assert set(startup) == set(STARTUP_KINDS)
    for kind in STARTUP_KINDS:  # the VMs booted the image: they read what its build wrote
        assert startup[kind]["marker"] == marker and startup[kind]["ready_s"] > 0
    for section, keys in (
        ("cpu", ("seconds", "bytes_per_s")),
        ("network", ("rtt_s", "throughput_bps")),
        ("memory", ("pss", "rss")),
        ("disk", FIO_WORKLOADS),
    ):
        assert {s["kind"] for s in results[section]} == set(KINDS), section
        for sample in results[section]:
            assert all(sample[key] > 0 for key in keys), (section, sample)
    container = next(s for s in results["memory"] if s["kind"] == "container")
    assert container["cgroup_usage"] > 0 and container["supervisor_pss"] > 0
    assert results["accel"] in ("kvm", "tcg") and results["accel_reason"]
    text = (out / "report.md").read_text()
    assert "| metric | seed (VM vs container) |" in text
    for plot in ("startup.png", "memory.png", "disk.png"):
        assert (out / plot).read_bytes().startswith(PNG)
    assert own_traces() == before
