"""HelloBench-style suite (`lazyctr bench hello`): real images from `pull` to ready, per storage driver.

Images are built by `lazyctr build` from benchmarks/images/<name>/Dockerfile, all FROM debian:minbase
(a debootstrap base), covering HelloBench's groups; each image's CMD is its readiness probe, run in
the container: it exits 0 once the program answered (servers are started in the background by a
script in the image that then polls them: redis-cli, psql, an HTTP GET through bash's /dev/tcp).
Built images are cached in --cache (a publisher store, rebuilt when its context changes).

A fresh registry (`lazyctr serve`) runs in the server namespace of a shaped link (benchmarks/link.py,
verified before measuring); the client works in the client namespace. Per image, once: the push over
the link (timed), a second repository with an access profile recorded by one lazy run. Then, per run,
image and driver (in a rotating order), from a cold client (a fresh --root, dropped page caches):
  - copy / overlay: `pull --eager` then `run --rm --driver copy|overlay` (overlay: the eager baseline);
  - lazy: `pull` (lazy) then `run --rm --driver lazy`, from a repository without a profile;
  - lazy+profile: the same from the repository whose profile the lazy mount prefetches;
  - peers: podman (pull from the same registry over the link, `podman run`, runc, private storage)
    and stargz-snapshotter through benchmarks/peers/stargz.py when it is there; skipped with the
    reason where they cannot run.
Measured: pull time, create+run to ready, bytes the client received over the link, the fraction of the
image that is (bytes / the image's compressed size) and the memory of our processes: the peak of the
summed RSS of every process in a cgroup (v1 memory) holding the lazyctr CLI processes and the lazyfs
daemon they start (containers are moved to cgroups of their own by `lazyctr run`), sampled every 50 ms,
and the cgroup's max_usage_in_bytes (that RSS plus the page cache they charge).
Also the development cycle of each dev image (benchmarks/devcycle.py): one edit, then build, push,
pull and run, lazily with the profile the new version inherits, eagerly, and with its own profile.

Output in --out: results.json (every measurement), report.md (per image and group medians, ratios
to the eager baseline and to each peer) and PNG plots. Needs root.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BenchError,
    base_tarball,
    cold_root,
    compile_sources,
    drop_caches,
    lazyctr,
    markdown_row,
    received,
    save_figure,
    save_partial,
    serving,
    unwind_on_sigterm,
    write_outputs,
)
from benchmarks.devcycle import DEV_SOURCES, development_cycle, render_section
from benchmarks.link import Link, LinkSpec, LinkSpecError, parse_link_spec, shaped_link_of
from benchmarks.peers.podman import Podman
from lazyfs.lineage import profiled_paths
from lazyfs.profile import load_profile
from storage.store import Store

# The images' contexts: package data, in the wheel as in a checkout.
IMAGES_DIR = Path(__file__).with_name("images")
GROUPS: dict[str, str] = {
    "distro": "distro",
    "python": "language",
    "perl": "language",
    "ruby": "language",
    "node": "language",
    "gcc": "language",
    "openjdk": "language",
    "redis": "database",
    "postgresql": "database",
    "sqlite": "database",
    "nginx": "web server",
    "apache2": "web server",
    "flask": "web framework",
    "large": "other",
}
DRIVERS = ("copy", "overlay", "lazy", "lazy+profile")
EAGER = "overlay"  # the eager baseline: overlay driver after `pull --eager`
PEERS = ("podman", "stargz", "containerd-lazyctr")
QUICK_IMAGES = ("distro", "redis", "flask")  # `--images quick`: a database and the dev-cycle image
PORT = 5000
RUN_TIMEOUT = 600
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")
MEMORY_NOTE = (
    "rss_peak: peak of the summed VmRSS of the lazyctr CLI processes and the lazyfs daemon they start "
    "(one cgroup v1 memory group per deployment, sampled every 50 ms; containers run in cgroups of "
    "their own); cgroup_peak: that group's memory.max_usage_in_bytes (RSS plus the page cache charged "
    "to it, e.g. extracted layers)"
)


@dataclass
class Config:
    images: list[str]
    drivers: list[str]
    link: LinkSpec
    runs: int
    out: Path
    cache: Path
    peers: list[str]


def available_images() -> list[str]:
    return sorted(p.parent.name for p in IMAGES_DIR.glob("*/Dockerfile"))


def parse_list(text: str, known: Sequence[str], what: str) -> list[str]:
    """`a,b` -> ["a", "b"]: each must be one of `known`; order kept, duplicates dropped."""
    chosen: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item not in known:
            raise BenchError(f"unknown {what} {item!r} (known: {', '.join(known)})")
        if item not in chosen:
            chosen.append(item)
    if not chosen:
        raise BenchError(f"no {what} given")
    return chosen


def make_config(
    images: str, drivers: str, link: str, runs: int, out: Path, cache: Path, peers: str
) -> Config:
    """Check every option before anything is made."""
    known = available_images()
    selected = list(QUICK_IMAGES) if images == "quick" else parse_list(images, [*known, "all"], "image")
    if "all" in selected:
        selected = known
    try:
        spec = parse_link_spec(link)
    except LinkSpecError as e:
        raise BenchError(f"bad --link {link!r}: {e}") from None
    if runs < 1:
        raise BenchError("--runs must be at least 1")
    chosen_peers = [] if peers.strip() in ("", "none") else parse_list(peers, PEERS, "peer")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a directory")
    return Config(selected, parse_list(drivers, DRIVERS, "driver"), spec, runs, out, cache, chosen_peers)


# -- images (cached builds) ---------------------------------------------------------------------


def context_digest(name: str) -> str:
    digest = hashlib.sha256()
    for path in sorted((IMAGES_DIR / name).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(IMAGES_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def prepare_images(cache: Path, names: list[str]) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The publisher store holding every image built (cached); per image its sizes and probe."""
    publisher = cache / "hello-publisher"
    stamps = cache / "hello-stamps"
    stamps.mkdir(parents=True, exist_ok=True)
    base = base_tarball("debian", publisher)
    base_stamp = stamps / "debian-minbase"
    base_key = f"{base.stat().st_size} {base.stat().st_mtime_ns}"
    if not base_stamp.exists() or base_stamp.read_text() != base_key:
        lazyctr(publisher, "import", str(base), "debian:minbase")
        for old in stamps.glob("*.digest"):  # every image is built on the base
            old.unlink()
        base_stamp.write_text(base_key)
    infos: dict[str, dict[str, Any]] = {}
    for name in names:
        stamp = stamps / f"{name}.digest"
        digest = context_digest(name)
        built_s: float | None = None
        if not stamp.exists() or stamp.read_text() != digest:
            print(f"building {name}...", flush=True)
            started = time.monotonic()
            lazyctr(
                publisher, "build", "--progress", "plain", "-t", f"bench/{name}:1", str(IMAGES_DIR / name)
            )
            built_s = time.monotonic() - started
            stamp.write_text(digest)
        data = json.loads(lazyctr(publisher, "inspect", "--json", f"bench/{name}:1"))
        config = data.get("Config") or {}
        infos[name] = {
            "group": GROUPS.get(name, "other"),
            "size": int(data["Size"]),  # compressed layers: what an eager pull fetches
            "files_size": sum(int(layer.get("UncompressedFileSize") or 0) for layer in data["Layers"]),
            "layers": len(data["Layers"]),
            "probe": [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])],
            "build_s": built_s,
        }
    return publisher, infos


# -- measuring ----------------------------------------------------------------------------------


class MemoryMeter:
    """A cgroup v1 memory group for our processes of one deployment: peak summed RSS and max usage."""

    _count = 0

    def __init__(self) -> None:
        MemoryMeter._count += 1
        self.path: Path | None = MEMORY_CGROUPS / f"lazybench-{os.getpid()}-{MemoryMeter._count}"
        try:
            self.path.mkdir()
        except OSError:
            self.path = None  # no cgroup v1 memory controller here: no figures
        self.rss_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def enter(self) -> None:
        """preexec_fn of a child: join the group (its descendants, the lazyfs daemon too, inherit it)."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def _pids(self) -> list[int]:
        if self.path is None:
            return []
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            total = 0
            for pid in self._pids():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            self.rss_peak = max(self.rss_peak, total)

    def close(self) -> dict[str, int | None]:
        self._stop.set()
        self._thread.join()
        if self.path is None:
            return {"rss_peak": None, "cgroup_peak": None}
        peak = int((self.path / "memory.max_usage_in_bytes").read_text())
        for pid in self._pids():  # a daemon still alive goes back to the root group, so the group can go
            with contextlib.suppress(OSError):
                (MEMORY_CGROUPS / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            self.path.rmdir()
        return {"rss_peak": self.rss_peak, "cgroup_peak": peak}


def repository(name: str, driver: str) -> str:
    """The profile is only in bench/NAME:1; the other drivers pull bench/NAME-np:1 (no profile)."""
    return f"bench/{name}:1" if driver == "lazy+profile" else f"bench/{name}-np:1"


def deploy(link: Link, address: str, work: Path, name: str, driver: str) -> dict[str, Any]:
    """Pull and run the image's probe with `driver` on a cold client."""
    ref = f"{address}/{repository(name, driver)}"
    eager = ["--eager"] if driver in ("copy", "overlay") else []
    run_driver = "lazy" if driver.startswith("lazy") else driver
    sample: dict[str, Any] = {"image": name, "driver": driver}
    with cold_root(work) as root:
        drop_caches()
        meter = MemoryMeter()
        before = received(link)
        started = time.monotonic()
        try:
            ns = link.client_ns
            lazyctr(root, "pull", "--insecure", *eager, ref, netns=ns, preexec_fn=meter.enter)
            pulled = time.monotonic()
            lazyctr(root, "run", "--rm", "--driver", run_driver, ref, netns=ns, preexec_fn=meter.enter)
            done = time.monotonic()
            sample.update(ok=True, pull_s=pulled - started, run_s=done - pulled, ready_s=done - started)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            sample.update(
                ok=False, error=str(e).strip().splitlines()[-1][:300] if str(e).strip() else repr(e)
            )
        finally:
            sample["bytes"] = received(link) - before
            sample.update(meter.close())
    return sample


def publish(
    link: Link, address: str, beside: str, publisher: Path, work: Path, name: str, profile: bool
) -> dict[str, Any]:
    """Push the image (timed) beside the registry and over the link, again to the profile's repository,
    and record its profile.

    Slacker's deployment cycle pushes from a builder that shares the registry's storage; `beside` is a
    registry of its own in the server namespace, so that push is timed without the link and with
    nothing of the image there yet. The suite's pulls use the registry at `address`, across the link.
    """

    def push(target: str, ns: str) -> float:
        started = time.monotonic()
        lazyctr(publisher, "push", "--insecure", "--progress", "plain", f"bench/{name}:1", target, netns=ns)
        return time.monotonic() - started

    push_beside_s = push(f"{beside}/bench/{name}:1", link.server_ns)
    ns = link.client_ns
    push_s = push(f"{address}/bench/{name}-np:1", ns)
    ref = f"{address}/bench/{name}:1"
    push(ref, ns)
    figures: dict[str, Any] = {"push_s": push_s, "push_beside_s": push_beside_s}
    if profile:  # one lazy run recorded, pushed with the image (as a referrer)
        with cold_root(work) as recorder:
            lazyctr(recorder, "pull", "--insecure", ref, netns=ns)
            lazyctr(recorder, "run", "--rm", "--record-profile", ref, netns=ns, timeout=RUN_TIMEOUT)
            lazyctr(recorder, "push", "--insecure", "--progress", "plain", ref, ref, netns=ns)
            figures["profile_paths"] = profile_paths(recorder, ref)  # the stargz peer's record
    return figures


def profile_paths(root: Path, ref: str) -> list[str]:
    """The files `ref`'s recorded profile read, in order: the record stargz's converter takes, so that
    its peer prefetches what our profile prefetches."""
    store = Store(root)
    image = store.image(ref)
    return profiled_paths(store, image.manifest.layers, load_profile(store, image))


def stargz_peer(
    link: Link, address: str, name: str, probe: list[str], runs: int, record: list[str]
) -> list[dict[str, Any]] | str:
    """Samples of benchmarks.peers.stargz.measure (eStargz, zstd:chunked; with a `record` of our
    profile's files, also eStargz with them prioritized), or why it is skipped."""
    try:
        module = importlib.import_module("benchmarks.peers.stargz")
    except ImportError as e:
        return f"benchmarks/peers/stargz.py cannot be imported ({e})"
    measure = getattr(module, "measure", None)
    if measure is None:
        return "benchmarks/peers/stargz.py has no measure()"
    try:
        result = measure(link, address, f"{address}/bench/{name}-np:1", probe, runs=runs, record=record)
    except Exception as e:  # a peer's failure must not end the suite
        return f"measure() failed: {type(e).__name__}: {e}".splitlines()[0]
    if isinstance(result, str):
        return result
    samples = []
    for form, figures in sorted(result.items()):
        if not isinstance(figures, dict):
            continue
        runs_of = figures.get("samples")  # each run's figures; else only the medians are there
        for one in runs_of if isinstance(runs_of, list) and runs_of else [figures]:
            if not all(isinstance(one.get(k), int | float) for k in ("pull_s", "run_s", "total_s")):
                continue
            sample = {"image": name, "driver": f"stargz-{form}", "ok": True, "bytes": one.get("bytes")}
            sample.update(
                pull_s=float(one["pull_s"]), run_s=float(one["run_s"]), ready_s=float(one["total_s"])
            )
            # How its converted image got into the registry (untimed): converted now or cached.
            sample.update({k: figures.get(k) for k in ("converted", "convert_s", "push_s")})
            samples.append(sample)
    return samples or f"measure() returned no timings: {str(result)[:200]}"


def containerd_lazyctr_peer(
    link: Link, address: str, name: str, probe: list[str], runs: int, with_profile: bool
) -> list[dict[str, Any]] | str:
    """Samples of benchmarks.peers.containerd_lazyctr.measure (our snapshotter under containerd, from
    the repository without a profile and, with `with_profile`, the one with it), or why it is skipped."""
    from benchmarks.peers import containerd_lazyctr

    refs = {"": f"{address}/{repository(name, 'lazy')}"}
    if with_profile:
        refs["+profile"] = f"{address}/{repository(name, 'lazy+profile')}"
    try:
        result = containerd_lazyctr.measure(link, refs, probe, runs)
    except Exception as e:  # a peer's failure must not end the suite
        return f"measure() failed: {type(e).__name__}: {e}".splitlines()[0]
    if isinstance(result, str):
        return result
    samples = []
    for kind, figures in sorted(result.items()):
        for one in figures["samples"]:
            sample = {"image": name, "driver": f"containerd-lazyctr{kind}", "ok": True, "bytes": one["bytes"]}
            sample.update(pull_s=one["pull_s"], run_s=one["run_s"], ready_s=one["total_s"])
            samples.append(sample)
    return samples


def run_suite(config: Config) -> Path:
    """Run everything; write results.json, report.md and the plots into config.out."""
    if os.geteuid() != 0:
        raise BenchError("the hello suite needs root (namespaces, mounts, drop_caches)")
    unwind_on_sigterm()
    compile_sources()
    publisher, infos = prepare_images(config.cache, config.images)
    results: dict[str, Any] = {
        "version": 1,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            "images": config.images,
            "drivers": config.drivers,
            "link": str(config.link),
            "runs": config.runs,
            "peers": config.peers,
        },
        "memory_note": MEMORY_NOTE,
        "images": infos,
        "samples": [],
        "skipped": {},
        "dev_cycle": [],
    }
    samples: list[dict[str, Any]] = results["samples"]
    work = config.cache / "hello-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    podman: Podman | None = None
    if "podman" in config.peers:
        try:
            podman = Podman(work)
        except BenchError as e:
            results["skipped"]["podman"] = str(e)
            print(f"podman: skipped: {e}", flush=True)
    try:
        with shaped_link_of(config.link) as link:
            figures = link.verify()
            results["link"] = {
                "spec": str(config.link),
                "emulator": figures.emulator,
                "rtt_median_ms": figures.rtt_median * 1000,
                "rtt_min_ms": figures.rtt_min * 1000,
                "rate_mbit": figures.rate / 1e6,
            }
            address = f"{link.server_ip}:{PORT}"
            registry = work / "registry"
            with serving(registry, address, link, log=config.cache / "hello-registry.log"):
                published = []
                beside, beside_storage = f"{link.server_ip}:{PORT + 1}", work / "registry-beside"
                with serving(beside_storage, beside, link, log=config.cache / "hello-registry.log"):
                    for name in config.images:
                        print(f"pushing {name}...", flush=True)
                        try:
                            pushed = publish(
                                link, address, beside, publisher, work, name, "lazy+profile" in config.drivers
                            )
                        except (RuntimeError, subprocess.TimeoutExpired) as e:  # the others still run
                            infos[name]["error"] = str(e).strip().splitlines()[-1][:400]
                            print(f"  FAILED, image left out: {infos[name]['error']}", flush=True)
                            continue
                        published.append(name)
                        infos[name].update(pushed)
                        print(
                            f"  push {pushed['push_beside_s']:.2f} s beside the registry, "
                            f"{pushed['push_s']:.2f} s over the link",
                            flush=True,
                        )
                shutil.rmtree(beside_storage, ignore_errors=True)
                for run in range(config.runs):
                    for name in published:
                        turn = run % len(config.drivers)  # rotating order: drift hits every driver alike
                        for driver in config.drivers[turn:] + config.drivers[:turn]:
                            sample = deploy(link, address, work, name, driver)
                            sample["run"] = run
                            samples.append(sample)
                            print(_line(sample), flush=True)
                            save_partial(results, config.out)
                        if podman is not None:
                            sample = podman.deploy(link, address, name)
                            sample["run"] = run
                            samples.append(sample)
                            print(_line(sample), flush=True)
                            save_partial(results, config.out)
                if "stargz" in config.peers:
                    for name in published:
                        record = infos[name].get("profile_paths", [])
                        got = stargz_peer(link, address, name, infos[name]["probe"], config.runs, record)
                        if isinstance(got, str):
                            results["skipped"].setdefault("stargz", {})[name] = got
                            print(f"stargz {name}: skipped: {got}", flush=True)
                        else:
                            for i, sample in enumerate(got):
                                sample.setdefault("run", i)
                                samples.append(sample)
                                print(_line(sample), flush=True)
                            save_partial(results, config.out)
                if "containerd-lazyctr" in config.peers:
                    with_profile = "lazy+profile" in config.drivers  # its repository is pushed only then
                    for name in published:
                        probe = infos[name]["probe"]
                        got = containerd_lazyctr_peer(link, address, name, probe, config.runs, with_profile)
                        if isinstance(got, str):
                            results["skipped"].setdefault("containerd-lazyctr", {})[name] = got
                            print(f"containerd-lazyctr {name}: skipped: {got}", flush=True)
                            continue
                        for i, sample in enumerate(got):
                            sample.setdefault("run", i)
                            samples.append(sample)
                            print(_line(sample), flush=True)
                        save_partial(results, config.out)
                for dev in [n for n in DEV_SOURCES if n in published]:
                    print(f"development cycle of {dev}...", flush=True)
                    try:
                        cycle = development_cycle(
                            link, address, publisher, work, dev, IMAGES_DIR, RUN_TIMEOUT
                        )
                    except (RuntimeError, subprocess.TimeoutExpired) as e:
                        cycle = {"image": dev, "error": str(e).splitlines()[-1][:300]}
                    results["dev_cycle"].append(cycle)
                    save_partial(results, config.out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return write_outputs(results, config.out, render_report, draw_plots)


def _line(sample: dict[str, Any]) -> str:
    head = f"  {sample['image']:11} {sample['driver']:19}"
    if not sample.get("ok"):
        return f"{head} FAILED: {sample.get('error')}"
    mb = (sample.get("bytes") or 0) / 1e6
    times = f"pull {sample['pull_s']:7.2f} s  run {sample['run_s']:6.2f} s  ready {sample['ready_s']:7.2f} s"
    return f"{head} {times}  {mb:8.1f} MB"


# -- report -------------------------------------------------------------------------------------


def _median(values: Sequence[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(results: dict[str, Any]) -> dict[tuple[str, str], dict[str, float | None]]:
    """Per (image, driver): medians of the successful samples' figures, and the deployment cycle."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for sample in results["samples"]:
        if sample.get("ok"):
            grouped.setdefault((sample["image"], sample["driver"]), []).append(sample)
    table: dict[tuple[str, str], dict[str, float | None]] = {}
    for (image, driver), group in grouped.items():
        info = results["images"].get(image, {})
        row = {
            key: _median([s.get(key) for s in group])
            for key in ("pull_s", "run_s", "ready_s", "bytes", "rss_peak", "cgroup_peak")
        }
        ready = row["ready_s"]
        for key, push in (("deploy_s", info.get("push_beside_s")), ("deploy_link_s", info.get("push_s"))):
            row[key] = ready + push if ready is not None and push is not None else None
        size = info.get("size")
        row["fraction"] = row["bytes"] / size if row["bytes"] is not None and size else None
        row["n"] = len(group)
        table[(image, driver)] = row
    return table


def physical_limit(
    results: dict[str, Any], table: dict[tuple[str, str], dict[str, float | None]], image: str
) -> float | None:
    """The fastest a lazy start of `image` could be on this link: the bytes it must fetch at the
    link's measured rate, plus three round trips (the manifest, then the config and TOCs, then the
    first read). The bytes are those of our lazy start with a profile (else without one)."""
    link = results.get("link") or {}
    if "rate_mbit" not in link or "rtt_median_ms" not in link:
        return None
    for driver in ("lazy+profile", "lazy"):
        fetched = table.get((image, driver), {}).get("bytes")
        if fetched is not None:
            rate, rtt = float(link["rate_mbit"]) * 1e6, float(link["rtt_median_ms"]) / 1000
            return fetched * 8 / rate + 3 * rtt
    return None


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.1f}%"


def _ratio(base: float | None, value: float | None) -> str:
    return "-" if base is None or not value else f"{base / value:.2f}x"


def _columns(results: dict[str, Any]) -> list[str]:
    """Drivers in their order, then the peers that produced samples."""
    order = [d for d in DRIVERS if d in results["config"]["drivers"]]
    peers = sorted({s["driver"] for s in results["samples"]} - set(DRIVERS))
    return order + peers


def render_report(results: dict[str, Any], plots: Sequence[str] = ()) -> str:
    table = medians(results)
    columns = _columns(results)
    images = [i for i in results["config"]["images"] if i in results["images"]]
    drivers = [c for c in columns if c in DRIVERS]
    peers = [c for c in columns if c not in DRIVERS]
    link = results.get("link") or {}
    lines = ["# HelloBench-style suite: pull to ready", ""]
    lines.append(
        f"Link {results['config']['link']}"
        + (
            f" ({link.get('emulator')}; measured RTT {link['rtt_median_ms']:.1f} ms, "
            f"rate {link['rate_mbit']:.1f} Mbit/s)"
            if "rtt_median_ms" in link
            else ""
        )
        + f"; {results['config']['runs']} cold run(s) per image and driver, medians; started "
        f"{results.get('started', '?')}."
    )
    lines.append(
        f"Eager baseline: `{EAGER}` driver after `pull --eager`. ready = pull + create/run to ready; "
        "deploy = push + ready, Slacker's deployment cycle, with the image pushed from a builder beside "
        "the registry (as Slacker's push, a snapshot on the registry's storage); deploy over link = the "
        "same with the push across the link. The push is the same for every driver. "
        "fraction = bytes received / the image's compressed size."
    )
    lines += ["", "## Headline: time to ready (s) and data fetched", ""]
    head = ["image", "group", "size MB"]
    for d in columns:
        head.append(f"{d} s")
    versus_eager = [d for d in drivers if d != EAGER] if EAGER in drivers else []
    head += [f"eager/{d}" for d in versus_eager]
    head += [f"{d} MB" for d in drivers]
    if "lazy+profile" in drivers:
        head.append("lazy+profile read")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for image in images:
        info = results["images"][image]
        eager = table.get((image, EAGER), {}).get("ready_s")
        row = [image, info.get("group", ""), _fmt(info.get("size"), 1e6, 1)]
        row += [_fmt(table.get((image, d), {}).get("ready_s")) for d in columns]
        row += [_ratio(eager, table.get((image, d), {}).get("ready_s")) for d in versus_eager]
        row += [_fmt(table.get((image, d), {}).get("bytes"), 1e6, 1) for d in drivers]
        if "lazy+profile" in drivers:
            fraction = table.get((image, "lazy+profile"), {}).get("fraction")
            row.append(_pct(fraction))
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## Medians over the images", ""]
    lines += [
        markdown_row(
            [
                "driver",
                "ready s",
                "deploy s",
                "deploy over link s",
                "vs eager (ready)",
                "vs eager (deploy)",
                "vs eager (deploy over link)",
                "fraction read",
                "rss MB",
            ]
        ),
        markdown_row(["---"] * 9),
    ]
    overall: dict[str, dict[str, float | None]] = {}
    for d in columns:
        rows = [table[(i, d)] for i in images if (i, d) in table]
        overall[d] = {
            k: _median([r.get(k) for r in rows])
            for k in ("ready_s", "deploy_s", "deploy_link_s", "fraction", "rss_peak")
        }
    for d in columns:
        o, e = overall[d], overall.get(EAGER, {})
        fraction = o["fraction"]
        cells = [d, _fmt(o["ready_s"]), _fmt(o["deploy_s"]), _fmt(o["deploy_link_s"])]
        cells += [_ratio(e.get(k), o[k]) for k in ("ready_s", "deploy_s", "deploy_link_s")]
        cells += [_pct(fraction), _fmt(o["rss_peak"], 1e6, 0)]
        lines.append(markdown_row(cells))
    if "lazy+profile" in overall and EAGER in overall:
        o, e = overall["lazy+profile"], overall[EAGER]
        fraction = o["fraction"]
        lines += [
            "",
            "Targets (reported, not asserted): lazy+profile deployment cycle "
            f"{_ratio(e['deploy_s'], o['deploy_s'])} faster than eager (Slacker: 5x), "
            f"{_ratio(e['deploy_link_s'], o['deploy_link_s'])} with the push over the link; time to ready "
            f"{_ratio(e['ready_s'], o['ready_s'])}; median bytes fetched {_pct(fraction)} of the image "
            "(target < 10%; Slacker saw 6.4% read).",
        ]

    limits = {image: physical_limit(results, table, image) for image in images}
    if any(limit is not None for limit in limits.values()):
        lines += ["", "## Against the physical limit", ""]
        lines.append(
            "limit = the bytes our lazy start (with a profile, else without) fetched / the link's measured "
            "rate + 3 RTT; each cell is that driver's or peer's time to ready over the limit (1.00x: "
            "at the limit)."
        )
        lines += [
            "",
            markdown_row(["image", "limit s", *columns]),
            markdown_row(["---"] * (2 + len(columns))),
        ]
        times_limit: dict[str, list[float]] = {d: [] for d in columns}
        for image in images:
            limit = limits[image]
            cells = [image, _fmt(limit)]
            for d in columns:
                ready = table.get((image, d), {}).get("ready_s")
                if limit and ready is not None:
                    times_limit[d].append(ready / limit)
                cells.append(_ratio(ready, limit))
            lines.append(markdown_row(cells))
        medians_row = ["median", ""]
        medians_row += [_fmt(_median(times_limit[d])) + ("x" if times_limit[d] else "") for d in columns]
        lines.append(markdown_row(medians_row))

    lines += ["", "## Per group (median over the group's images of the per-image medians, ready s)", ""]
    lines += ["| group | images | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    groups: dict[str, list[str]] = {}
    for image in images:
        groups.setdefault(results["images"][image].get("group", "other"), []).append(image)
    for group, members in groups.items():
        cells = []
        for d in columns:
            value = _median([table[(i, d)]["ready_s"] for i in members if (i, d) in table])
            eager = _median([table[(i, EAGER)]["ready_s"] for i in members if (i, EAGER) in table])
            cells.append(_fmt(value) + (f" ({_ratio(eager, value)})" if d != EAGER and eager else ""))
        lines.append(f"| {group} | {', '.join(members)} | " + " | ".join(cells) + " |")

    lines += ["", "## Every image and driver", ""]
    head = ["image", "driver", "n", "push s", "push over link s", "pull s", "run s", "ready s", "deploy s"]
    head += ["MB recv", "fraction"]
    head += ["rss peak MB", "cgroup peak MB", "vs eager", *(f"vs {p}" for p in peers)]
    lines += [markdown_row(head), markdown_row(["---"] * len(head))]
    for image in images:
        info = results["images"][image]
        for d in columns:
            r = table.get((image, d))
            if r is None:
                continue
            fraction = r["fraction"]
            eager = table.get((image, EAGER), {}).get("ready_s")
            versus = [_ratio(table.get((image, p), {}).get("ready_s"), r["ready_s"]) for p in peers]
            cells = [image, d, f"{r['n']:.0f}", _fmt(info.get("push_beside_s")), _fmt(info.get("push_s"))]
            cells += [_fmt(r["pull_s"]), _fmt(r["run_s"])]
            cells += [_fmt(r["ready_s"]), _fmt(r["deploy_s"]), _fmt(r["bytes"], 1e6, 1), _pct(fraction)]
            cells += [
                _fmt(r["rss_peak"], 1e6, 0),
                _fmt(r["cgroup_peak"], 1e6, 0),
                _ratio(eager, r["ready_s"]),
            ]
            lines.append(markdown_row(cells + versus))
    lines += ["", "Ratios are the other's time over this one's (above 1: this one is faster).", ""]
    lines += [f"Memory: {results.get('memory_note', MEMORY_NOTE)}.", ""]

    lines += render_section(results)

    failures = [s for s in results["samples"] if not s.get("ok")]
    skipped = results.get("skipped") or {}
    noted = [s for s in results["samples"] if s.get("ok") and s.get("note")]
    left_out = {i: info["error"] for i, info in results["images"].items() if info.get("error")}
    if failures or skipped or noted or left_out:
        lines += ["## Failures, notes and skipped peers", ""]
        for image, error in left_out.items():
            lines.append(f"- {image}: left out, its push or profile recording failed: {error}")
        for s in failures:
            lines.append(f"- {s['image']} {s['driver']} run {s.get('run', '?')}: {s.get('error')}")
        for s in noted:
            lines.append(f"- {s['image']} {s['driver']} run {s.get('run', '?')} (counted): {s['note']}")
        for peer, reason in skipped.items():
            if isinstance(reason, dict):
                for image, why in reason.items():
                    lines.append(f"- {peer} skipped for {image}: {why}")
            else:
                lines.append(f"- {peer} skipped: {reason}")
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def draw_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Time to ready per image and driver, bytes fetched vs image size, CDF of startup times."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    table = medians(results)
    columns = _columns(results)
    images = [i for i in results["config"]["images"] if i in results["images"]]
    paths = []

    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(images) + 2), 4.5))
    width = 0.8 / max(1, len(columns))
    for k, d in enumerate(columns):
        xs = [i + k * width for i in range(len(images))]
        ys = [table.get((image, d), {}).get("ready_s") or 0.0 for image in images]
        ax.bar(xs, ys, width, label=d)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(images))], images, rotation=30, ha="right")
    ax.set_yscale("log")  # eager and lazy times differ by 10-70x: on a linear axis lazy bars vanish
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.set_ylabel("pull + run to ready (s, median, log scale)")
    ax.set_title(f"Time to ready, link {results['config']['link']}")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside: bars stay clear
    paths.append(save_figure(fig, out / "ready_by_image.png"))

    fig, ax = plt.subplots(figsize=(6, 5))
    sizes = [results["images"][i]["size"] / 1e6 for i in images]
    for k, d in enumerate(columns):
        points = [
            (results["images"][i]["size"] / 1e6, (table[(i, d)]["bytes"] or 0) / 1e6)
            for i in images
            if (i, d) in table and table[(i, d)]["bytes"] is not None
        ]
        if points:
            marker = "osD^vP*X"[k % 8]  # distinct shapes: eager and podman points coincide
            ax.scatter(
                [p[0] for p in points], [max(p[1], 0.01) for p in points], label=d, marker=marker, alpha=0.8
            )
    if sizes:
        ax.plot([min(sizes), max(sizes)], [min(sizes), max(sizes)], "k--", linewidth=0.8, label="whole image")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers; no crowded minor labels over a narrow range
        axis.set_major_formatter(ticker.ScalarFormatter())
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set(
        xlabel="image size (MB, compressed)",
        ylabel="bytes received to ready (MB, median)",
        title="Bytes fetched vs image size",
    )
    ax.legend(fontsize="small")
    paths.append(save_figure(fig, out / "bytes_vs_size.png"))

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for d in columns:
        times = sorted(s["ready_s"] for s in results["samples"] if s["driver"] == d and s.get("ok"))
        if times:
            ax.step(times, [(k + 1) / len(times) for k in range(len(times))], where="post", label=d)
    ax.set(
        xscale="log",
        xlabel="pull + run to ready (s)",
        ylabel="fraction of deployments",
        title="CDF of startup times",
    )
    ax.legend(fontsize="small")
    paths.append(save_figure(fig, out / "startup_cdf.png"))
    return paths
