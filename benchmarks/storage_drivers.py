"""Storage drivers under fio (`lazyctr bench storage`): what a container's root costs its I/O, per driver.

The image (built here, each run): a busybox base layer, then a layer with the host's fio and the
libraries `ldd` lists, and two large files of random bytes, /data/read.bin and /data/write.bin. It is
pushed to a real `lazyctr serve` on 127.0.0.1 and pulled from there by every store. The drivers:
  - copy, overlay: `pull --eager` into one store, `run --driver copy|overlay`;
  - lazy-cold: a fresh store per batch of containers, `pull` (lazy), `run --driver lazy`: every byte
    the workloads read comes from the registry while they run;
  - lazy-warm: one store where a container has read every file of the image once (the chunk cache
    holds it all), `run --driver lazy`: a new lazyfs mount serving from local disk;
  - btrfs: a btrfs file system made on a loop file of our own (mkfs.btrfs, btrfs-progs), the store
    on it, `pull --eager`, `run --driver btrfs` (runtime/drivers.py: the image applied once into a
    subvolume, a writable snapshot per container: Slacker's driver);
  - native, the baseline: the same fio jobs on the host, on the image's files extracted to the same disk.
The workloads, each timed by fio itself (psync engine):
  - read: a sequential read of the image file /data/read.bin (1 MiB blocks);
  - write: overwriting the first quarter of the image file /data/write.bin (1 MiB blocks, fsync at
    the end): overlay and lazy copy the whole file up first, btrfs copies only the blocks written;
  - create, stat, unlink: of --small-files files in a new directory, one workload after the other
    (fio's filecreate, filestat and filedelete engines; filestat lays the empty files out to 4 KiB
    before it times the stats, so unlink removes files of 4 KiB).
Each batch is N containers of one driver at once (--containers, e.g. 1,2,4,8,16: Multilanes' question,
does I/O scale with containers): they start, wait at a barrier (a file in a shared directory), and
run each workload together, the page cache dropped before read and write (so that they read the
image's files from where the driver keeps them; the metadata workloads work on files just made). Per
workload: the rate of each container (over its own fio runtime) and the aggregate (all containers'
work over the span from the first one's start of the job to the last one's end, from fio's report).
Native N runs N fio processes, each with its own copy of write.bin and its own directory.

Output in --out: results.json (every container's fio figures), report.md (medians, ratios to native)
and PNG plots. Needs root; work files go below $TMPDIR (default /tmp), removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from benchmarks.common import (
    SOURCE_ROOT,
    BenchError,
    cold_root,
    compile_sources,
    drop_caches,
    free_port,
    lazyctr,
    save_figure,
    save_partial,
    serving,
    stop,
    unwind_on_sigterm,
    workspace,
    write_outputs,
)
from benchmarks.hello import _median, parse_list

DRIVERS = ("copy", "overlay", "lazy-cold", "lazy-warm", "btrfs")
NATIVE = "native"
# Each workload is one fio job, run by every container at once; its metric and unit.
WORKLOADS = ("read", "write", "create", "stat", "unlink")
COLD_WORKLOADS = ("read", "write")  # the page cache is dropped before these
METRICS: dict[str, tuple[str, str]] = {
    "read_mb_s": ("read", "MB/s"),
    "write_mb_s": ("write", "MB/s"),
    "create_ops_s": ("create", "ops/s"),
    "stat_ops_s": ("stat", "ops/s"),
    "unlink_ops_s": ("unlink", "ops/s"),
}
IMAGE = "bench/fio:1"
DATA_FILES = ("read.bin", "write.bin")  # in /data of the image
FIO = Path("/usr/bin/fio")
BARRIER_TIMEOUT = 600  # seconds a batch may take to reach a barrier
# The container's side of each batch: announce itself, then per workload wait for the go, run fio
# (its JSON into the shared directory) and say it is done. busybox sh.
CONTAINER_SCRIPT = """set -e
mkdir -p /scratch/meta
touch /sync/ready.$K
for w in {workloads}; do
  while [ ! -e /sync/go.$w ]; do sleep 0.01; done
  fio --output-format=json --output=/sync/$w.$K.json $(cat /sync/$w.args)
  touch /sync/done.$w.$K
done
"""


@dataclass
class Config:
    drivers: list[str]
    containers: list[int]
    runs: int
    file_mb: int
    small_files: int
    out: Path


def make_config(
    drivers: str, containers: str, runs: int, file_mb: int, small_files: int, out: Path
) -> Config:
    """Check every option, and the tools the chosen drivers need, before anything is made."""
    chosen = parse_list(drivers, DRIVERS, "driver")
    counts: list[int] = []
    for part in (p.strip() for p in containers.split(",")):
        if not part:
            continue
        if not part.isdigit() or not 1 <= int(part) <= 64:
            raise BenchError(f"--containers: {part!r} is not a number of containers from 1 to 64")
        if int(part) not in counts:
            counts.append(int(part))
    if not counts:
        raise BenchError("--containers: no number of containers given")
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    if file_mb < 4:
        raise BenchError("--file-mb must be at least 4")
    if small_files < 1:
        raise BenchError("--small-files must be at least 1")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a directory")
    if not FIO.is_file():
        raise BenchError(f"{FIO} is missing: install the fio package")
    if "btrfs" in chosen:
        for tool, package in (("mkfs.btrfs", "btrfs-progs"), ("losetup", "mount")):
            if shutil.which(tool) is None:
                raise BenchError(
                    f"{tool} is missing: install the {package} package, or leave btrfs out of --drivers"
                )
    return Config(chosen, sorted(counts), runs, file_mb, small_files, out)


# -- fio's jobs ---------------------------------------------------------------------------------


def fio_args(workload: str, data: str, write_file: str, scratch: str, config: Config) -> list[str]:
    """fio's command line (after --output*) for `workload`, on the given paths."""
    if workload == "read":
        return ["--name=read", "--ioengine=psync", "--rw=read", "--bs=1M", f"--filename={data}/read.bin"]
    if workload == "write":
        size = max(1, config.file_mb // 4)
        return ["--name=write", "--ioengine=psync", "--rw=write", "--bs=1M", f"--size={size}M",
                "--end_fsync=1", f"--filename={write_file}"]  # fmt: skip
    engine = {"create": "filecreate", "stat": "filestat", "unlink": "filedelete"}[workload]
    return [f"--name={workload}", f"--ioengine={engine}", "--openfiles=1", f"--directory={scratch}/meta",
            f"--nrfiles={config.small_files}", "--filesize=4k", "--filename_format=f.$filenum"]  # fmt: skip


def job_figures(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """From one fio JSON report of one job: its units of work (MB for read and write, operations for the
    file engines), runtime (s) and when it ended (s since the epoch: fio writes its report then)."""
    (job,) = report["jobs"]
    if job.get("error"):
        raise RuntimeError(f"fio job {job['jobname']} failed with error {job['error']}")
    name = job["jobname"]
    done = job["read"]["io_bytes"] + job["write"]["io_bytes"]
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    units = done / 1e6 if name in ("read", "write") else float(ios)
    runtime = max(job["job_runtime"], 1) / 1000  # ms: a job under 1 ms counts as 1 ms
    return {name: {"units": units, "runtime_s": runtime, "end_s": report["timestamp_ms"] / 1000}}


def aggregate(per_container: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per metric: `aggregate` (all containers' work over the span from the first one's start to the
    last one's end) and `per_container` (the mean of each container's own rate over its runtime)."""
    out: dict[str, dict[str, float]] = {}
    for metric, (job, _) in METRICS.items():
        jobs = [figures[job] for figures in per_container if job in figures]
        if len(jobs) != len(per_container) or not jobs:
            continue
        span = max(j["end_s"] for j in jobs) - min(j["end_s"] - j["runtime_s"] for j in jobs)
        out[metric] = {
            "aggregate": sum(j["units"] for j in jobs) / max(span, max(j["runtime_s"] for j in jobs)),
            "per_container": sum(j["units"] / j["runtime_s"] for j in jobs) / len(jobs),
        }
    return out


# -- the image ------------------------------------------------------------------------------------


def fio_files() -> list[Path]:
    """fio and every library it loads, as `ldd` names them (the paths the loader looks for)."""
    listing = subprocess.run(["ldd", str(FIO)], capture_output=True, text=True, check=True).stdout
    paths = [FIO]
    for line in listing.splitlines():
        words = line.split()
        candidates = [w for w in words if w.startswith("/")]
        if candidates:
            paths.append(Path(candidates[0]))
    return paths


def image_layer(tar_path: Path, data: Path) -> int:
    """The image's second layer: fio, its libraries, /data/ (the files of `data`), /scratch.
    Returns the bytes of the files in it."""
    total = 0
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        made: set[str] = set()

        def directories(name: str) -> None:
            parts = name.split("/")[:-1]
            for depth in range(1, len(parts) + 1):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "scratch" else 0o755
                    tar.addfile(info)
                    made.add(directory)

        def add(name: str, size: int, content: BinaryIO, mode: int = 0o644) -> None:
            nonlocal total
            directories(name)
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, mode, 1700000000
            tar.addfile(info, content)
            total += size

        for path in fio_files():
            real = path.resolve()
            with open(real, "rb") as f:
                add(str(path).lstrip("/"), real.stat().st_size, f, 0o755)
        for name in DATA_FILES:
            with open(data / name, "rb") as f:
                add(f"data/{name}", (data / name).stat().st_size, f)
        directories("scratch/")
    return total


def build_image(publisher: Path, scratch: Path, data: Path) -> dict[str, Any]:
    """The image in the publisher store, its data files those of `data`; what is in it."""
    from builder.rootfs import busybox_tarball
    from storage.importer import add_layer
    from storage.store import Store

    base, layer = scratch / "busybox.tar", scratch / "fio-layer.tar"
    busybox_tarball(base)
    lazyctr(publisher, "import", str(base), "bench/busybox:1")
    files = image_layer(layer, data)
    store = Store(publisher)
    add_layer(store, store.image("bench/busybox:1"), layer, IMAGE, "fio, its libraries and two data files")
    base.unlink()
    layer.unlink()
    size = sum(layer.size for layer in store.image(IMAGE).manifest.layers)
    return {"size": size, "fio_layer_files": files}


# -- where each driver's containers run -------------------------------------------------------------


@contextlib.contextmanager
def btrfs_volume(work: Path, size_mb: int) -> Iterator[Path]:
    """A btrfs file system on a loop device over a sparse file in `work`, mounted until the block ends."""
    disk, point = work / "btrfs.img", work / "btrfs"
    point.mkdir()
    with open(disk, "wb") as f:
        f.truncate(size_mb << 20)
    run_tool(["mkfs.btrfs", "-q", str(disk)])
    device = run_tool(["losetup", "--find", "--show", str(disk)]).strip()
    try:
        run_tool(["mount", "-t", "btrfs", device, str(point)])
        try:
            yield point
        finally:
            run_tool(["umount", str(point)])
    finally:
        run_tool(["losetup", "-d", device])


def run_tool(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv[:2])}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


@dataclass
class Stores:
    """The store roots of the drivers that keep one for the whole run; lazy-cold makes one per batch."""

    eager: Path
    lazy_warm: Path | None
    btrfs: Path | None
    work: Path
    ref: str


def container_argv(root: Path, driver: str, sync: Path, ref: str, index: int) -> list[str]:
    run_driver = "lazy" if driver.startswith("lazy") else driver
    script = f"K={index}\n" + CONTAINER_SCRIPT.format(workloads=" ".join(WORKLOADS))
    return [sys.executable, "-m", "lazyctr.cli", "--root", str(root), "run", "--rm", "--network", "none",
            "--driver", run_driver, "-v", f"{sync}:/sync", ref, "sh", "-c", script]  # fmt: skip


def wait_for(sync: Path, pattern: str, count: int, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Until `count` files match `pattern` in `sync`; a container that ends first is an error."""
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(sync.glob(pattern))) < count:
        for proc in procs:
            if proc.poll() is not None and proc.returncode != 0:
                stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"a container exited {proc.returncode}: {stderr.strip()[-300:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {pattern} in {sync}")
        time.sleep(0.01)


def run_workloads(
    sync: Path, count: int, config: Config, start: list[subprocess.Popen[bytes]]
) -> list[dict[str, Any]]:
    """Release each workload at its barrier (read and write with the page cache dropped first) and
    collect fio's reports."""
    wait_for(sync, "ready.*", count, start)
    for workload in WORKLOADS:
        if workload in COLD_WORKLOADS:
            drop_caches()
        (sync / f"go.{workload}").touch()
        wait_for(sync, f"done.{workload}.*", count, start)
    for proc in start:
        if proc.wait(BARRIER_TIMEOUT) != 0:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"a container exited {proc.returncode}: {stderr.strip()[-300:]}")
    return [collect(sync, k) for k in range(count)]


def collect(sync: Path, index: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for workload in WORKLOADS:
        figures.update(job_figures(json.loads((sync / f"{workload}.{index}.json").read_text())))
    return figures


def container_batch(stores: Stores, driver: str, count: int, config: Config) -> list[dict[str, Any]]:
    """`count` containers of `driver` at once; each one's fio figures."""
    sync = Path(tempfile.mkdtemp(prefix="sync-", dir=stores.work))
    for workload in WORKLOADS:
        (sync / f"{workload}.args").write_text(
            " ".join(fio_args(workload, "/data", "/data/write.bin", "/scratch", config))
        )
    with contextlib.ExitStack() as stack:
        if driver == "lazy-cold":
            root = stack.enter_context(cold_root(stores.work))
            lazyctr(root, "pull", "--insecure", stores.ref)
        else:
            found = {"lazy-warm": stores.lazy_warm, "btrfs": stores.btrfs}.get(driver, stores.eager)
            assert found is not None
            root = found
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for k in range(count):
                argv = container_argv(root, driver, sync, stores.ref, k)
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        cwd=SOURCE_ROOT,  # so that `-m lazyctr.cli` imports this code
                    )
                )
            return run_workloads(sync, count, config, procs)
        finally:
            for proc in procs:
                stop(proc)
            shutil.rmtree(sync, ignore_errors=True)


def native_batch(native: Path, count: int, config: Config) -> list[dict[str, Any]]:
    """`count` fio processes at once on the host, per workload, on the extracted image's files."""
    reports: list[dict[str, Any]] = [{} for _ in range(count)]
    for k in range(count):
        shutil.rmtree(native / f"scratch{k}", ignore_errors=True)
        (native / f"scratch{k}" / "meta").mkdir(parents=True)
    for workload in WORKLOADS:
        if workload in COLD_WORKLOADS:
            drop_caches()
        procs = []
        for k in range(count):
            args = fio_args(
                workload,
                str(native / "data"),
                str(native / f"write{k}.bin"),
                str(native / f"scratch{k}"),
                config,
            )
            procs.append(
                subprocess.Popen(
                    [str(FIO), "--output-format=json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            )
        for k, proc in enumerate(procs):
            out, err = proc.communicate(timeout=BARRIER_TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"native fio exited {proc.returncode}: {err.decode(errors='replace').strip()[-300:]}"
                )
            reports[k].update(job_figures(json.loads(out)))
    return reports


def make_native(native: Path, file_mb: int, copies: int) -> None:
    """The data files of the image, random bytes (they do not compress), made here on the host: the
    native baseline reads them where they are, and the image's layer is made of them. And a copy of
    write.bin per native fio process."""
    (native / "data").mkdir(parents=True)
    for name in DATA_FILES:
        with open(native / "data" / name, "wb") as f:
            for _ in range(file_mb):
                f.write(os.urandom(1 << 20))
    for k in range(copies):
        shutil.copyfile(native / "data" / "write.bin", native / f"write{k}.bin")


def warm_up(root: Path, ref: str) -> str:
    """A container that reads every file of the image, so the chunk cache holds all of it; then what a
    later lazy container mounts: `lazyfs` (over the chunk cache) or `plain root` (an assembled one)."""
    from storage.layers import LayerCache
    from storage.store import Store

    lazyctr(
        root,
        "run",
        "--rm",
        "--driver",
        "lazy",
        ref,
        "sh",
        "-c",
        "find / -xdev -type f -exec cat {} + >/dev/null",
    )
    store = Store(root)
    return (
        "plain root"
        if LayerCache(store).plain_root(store.image(ref)) is not None
        else "lazyfs (chunk cache full)"
    )


# -- the suite ------------------------------------------------------------------------------------


def run_suite(config: Config) -> Path:
    """Run every batch; write results.json, report.md and the plots into config.out."""
    if os.geteuid() != 0:
        raise BenchError("the storage suite needs root (namespaces, mounts, loop devices, drop_caches)")
    unwind_on_sigterm()
    compile_sources()
    results: dict[str, Any] = {
        "version": 1,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "drivers": config.drivers,
            "containers": config.containers,
            "runs": config.runs,
            "file_mb": config.file_mb,
            "small_files": config.small_files,
        },
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release, "load_start": os.getloadavg()[0]},
        "samples": [],
        "notes": {},
    }
    most = max(config.containers)
    with workspace("lazyctr-storage-") as work:
        publisher = work / "publisher"
        native = work / "native"
        make_native(native, config.file_mb, most)
        results["image"] = build_image(publisher, work, native / "data")
        address = f"127.0.0.1:{free_port()}"
        with serving(work / "registry", address, log=work / "registry.log"), contextlib.ExitStack() as stack:
            ref = f"{address}/{IMAGE}"
            lazyctr(publisher, "push", "--insecure", IMAGE, ref)
            eager = work / "eager"
            if {"copy", "overlay"} & set(config.drivers):
                lazyctr(eager, "pull", "--insecure", "--eager", ref)
            lazy_warm = None
            if "lazy-warm" in config.drivers:
                lazy_warm = work / "lazy-warm"
                lazyctr(lazy_warm, "pull", "--insecure", ref)
                results["notes"]["lazy-warm"] = warm_up(lazy_warm, ref)
            btrfs_root = None
            if "btrfs" in config.drivers:
                size_mb = 1024 + 4 * config.file_mb + most * (config.file_mb + 16)
                btrfs_root = stack.enter_context(btrfs_volume(work, size_mb)) / "root"
                lazyctr(btrfs_root, "pull", "--insecure", "--eager", ref)
            stores = Stores(eager, lazy_warm, btrfs_root, work, ref)
            subjects = [NATIVE, *config.drivers]
            for run in range(config.runs):
                for count in config.containers:
                    turn = run % len(subjects)  # rotating order: drift in the machine's load hits all alike
                    for driver in subjects[turn:] + subjects[:turn]:
                        sample = measure(stores, native, driver, count, config)
                        sample["run"] = run
                        results["samples"].append(sample)
                        print(_line(sample), flush=True)
                        save_partial(results, config.out)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"]["load_end"] = os.getloadavg()[0]
    return write_outputs(results, config.out, render_report, draw_plots)


def measure(stores: Stores, native: Path, driver: str, count: int, config: Config) -> dict[str, Any]:
    sample: dict[str, Any] = {"driver": driver, "containers": count}
    started = time.monotonic()
    try:
        if driver == NATIVE:
            per_container = native_batch(native, count, config)
        else:
            per_container = container_batch(stores, driver, count, config)
    except (RuntimeError, subprocess.TimeoutExpired, OSError, json.JSONDecodeError, KeyError) as e:
        text = str(e).strip()
        sample.update(ok=False, error=text.splitlines()[-1][:300] if text else repr(e))
        return sample
    sample.update(
        ok=True,
        seconds=time.monotonic() - started,
        per_container=per_container,
        metrics=aggregate(per_container),
    )
    return sample


def _line(sample: dict[str, Any]) -> str:
    head = f"  {sample['driver']:10} x{sample['containers']:<3}"
    if not sample.get("ok"):
        return f"{head} FAILED: {sample.get('error')}"
    cells = [f"{name.split('_')[0]} {values['aggregate']:8.0f}" for name, values in sample["metrics"].items()]
    return f"{head} " + "  ".join(cells) + f"  ({sample['seconds']:.1f} s)"


# -- outputs ----------------------------------------------------------------------------------------


def medians(results: dict[str, Any]) -> dict[tuple[str, int], dict[str, dict[str, float | None]]]:
    """Per (driver, containers) and metric: the medians over the runs of `aggregate` and `per_container`."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for sample in results["samples"]:
        if sample.get("ok"):
            grouped.setdefault((sample["driver"], sample["containers"]), []).append(sample)
    table: dict[tuple[str, int], dict[str, dict[str, float | None]]] = {}
    for key, group in grouped.items():
        table[key] = {
            metric: {
                kind: _median([s["metrics"].get(metric, {}).get(kind) for s in group])
                for kind in ("aggregate", "per_container")
            }
            for metric in METRICS
        }
    return table


def _subjects(results: dict[str, Any]) -> list[str]:
    return [NATIVE, *[d for d in DRIVERS if d in results["config"]["drivers"]]]


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.2f}x"


def render_report(results: dict[str, Any], plots: Sequence[str] = ()) -> str:
    table = medians(results)
    subjects = _subjects(results)
    config = results["config"]
    counts: list[int] = config["containers"]
    image = results.get("image", {})
    lines = ["# Storage drivers under fio", ""]
    machine = results.get("machine", {})
    load = "/".join(f"{machine[k]:.1f}" for k in ("load_start", "load_end") if k in machine)
    lines.append(
        f"{config['runs']} run(s), medians; {machine.get('cpus', '?')} CPUs (load average {load or '?'} at"
        f" start/end), kernel {machine.get('kernel', '?')}; started {results.get('started', '?')}."
        " The image: "
        f"busybox, fio and its libraries, /data/read.bin and /data/write.bin of {config['file_mb']} MiB each "
        f"({image.get('size', 0) / 1e6:.0f} MB compressed). read: sequential read of read.bin; write: "
        f"overwriting the first quarter of write.bin (fsync at end, copy-up included); create, stat, unlink:"
        f" {config['small_files']} empty files. Native: the same fio jobs on the host, on the image's files "
        "extracted to the same disk (btrfs is on a loop file on that disk). Ratios are to native with the "
        "same number of containers (above 1: faster than native)."
    )
    notes = results.get("notes") or {}
    if "lazy-warm" in notes:
        lines.append(f"lazy-warm containers mounted: {notes['lazy-warm']}.")
    first = counts[0]
    lines += ["", f"## {first} container{'s' if first > 1 else ''}: each metric, and its ratio to native", ""]
    head = [
        "driver",
        *(f"{m} ({METRICS[m][1]})" for m in METRICS),
        *(f"{m.split('_')[0]} vs native" for m in METRICS),
    ]
    lines += [_row(head), _row(["---"] * len(head))]
    for subject in subjects:
        row = table.get((subject, first), {})
        base = table.get((NATIVE, first), {})
        cells = [subject]
        cells += [_fmt(row.get(m, {}).get("aggregate")) for m in METRICS]
        cells += [_ratio(row.get(m, {}).get("aggregate"), base.get(m, {}).get("aggregate")) for m in METRICS]
        lines.append(_row(cells))
    if len(counts) > 1:
        lines += [
            "",
            "## Scaling: aggregate over N containers started together (per container in brackets)",
            "",
        ]
        for metric, (_, unit) in METRICS.items():
            lines += [f"### {metric} ({unit})", ""]
            lines += [_row(["driver", *(f"N={n}" for n in counts), f"N={counts[-1]} vs N={counts[0]}"])]
            lines += [_row(["---"] * (len(counts) + 2))]
            for subject in subjects:
                cells = [subject]
                for n in counts:
                    figures = table.get((subject, n), {}).get(metric, {})
                    ratio = _ratio(
                        figures.get("aggregate"), table.get((NATIVE, n), {}).get(metric, {}).get("aggregate")
                    )
                    cells.append(
                        f"{_fmt(figures.get('aggregate'))} ({_fmt(figures.get('per_container'))}; {ratio})"
                    )
                low = table.get((subject, counts[0]), {}).get(metric, {}).get("aggregate")
                high = table.get((subject, counts[-1]), {}).get(metric, {}).get("aggregate")
                cells.append(_ratio(high, low))
                lines.append(_row(cells))
            lines.append("")
        lines.append(
            "Each cell: aggregate (all containers' work over the span from the first start to the last end;"
            " per container, the mean of each one's rate; its ratio to native at that N). The last"
            " column: how the aggregate grew from the fewest containers to the most (1.00x: no growth)."
        )
    failures = [s for s in results["samples"] if not s.get("ok")]
    if failures:
        lines += ["", "## Failures", ""]
        lines += [
            f"- {s['driver']} x{s['containers']} run {s.get('run', '?')}: {s.get('error')}" for s in failures
        ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines.append("")
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def draw_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Each metric's ratio to native with the fewest containers; the aggregate of each metric against N."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    table = medians(results)
    subjects = _subjects(results)
    counts: list[int] = results["config"]["containers"]
    paths = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    drivers = [s for s in subjects if s != NATIVE]
    width = 0.8 / max(1, len(drivers))
    metrics = list(METRICS)
    for k, driver in enumerate(drivers):
        ys = []
        for metric in metrics:
            value = table.get((driver, counts[0]), {}).get(metric, {}).get("aggregate")
            base = table.get((NATIVE, counts[0]), {}).get(metric, {}).get("aggregate")
            ys.append(value / base if value is not None and base else 0.0)
        color = f"C{subjects.index(driver)}"  # each driver the colour of its line in the scaling plot
        ax.bar([i + k * width for i in range(len(metrics))], ys, width, label=driver, color=color)
    ax.axhline(1.0, color="k", linewidth=0.8, linestyle="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], metrics, rotation=15)
    ax.set_yscale("log")
    ax.set_ylabel("ratio to native (log scale; 1 = native)")
    ax.set_title(f"Storage drivers under fio, {counts[0]} container(s)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    paths.append(save_figure(fig, out / "drivers_vs_native.png"))

    if len(counts) > 1:
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4))
        for ax, metric in zip(axes, metrics, strict=True):
            for subject in subjects:
                points = [(n, table.get((subject, n), {}).get(metric, {}).get("aggregate")) for n in counts]
                shown = [(n, v) for n, v in points if v is not None]
                if shown:
                    xs, ys = [p[0] for p in shown], [p[1] for p in shown]
                    ax.plot(xs, ys, marker="o", label=subject, color=f"C{subjects.index(subject)}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(counts, [str(n) for n in counts])
            ax.set(xlabel="containers at once", ylabel=f"aggregate {METRICS[metric][1]}", title=metric)
        axes[0].legend(fontsize="small")
        paths.append(save_figure(fig, out / "scaling.png"))
    return paths
