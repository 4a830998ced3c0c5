"""`lazyctr bench`: the benchmark suites; their code is the `benchmarks` package (here only the command line).

The suites are imported when one runs, not when the CLI starts: `lazyctr --help` stays fast. Their plots
need matplotlib, the `bench` extra (`pip install 'lazyctr[bench]'`); without it they write no plots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from lazyctr.context import COMMANDS


class BadOption(click.ClickException):
    """A bad option value: one line on stderr, status 2 (usage)."""

    exit_code = 2


@click.group()
def bench() -> None:
    """Benchmark suites (need root; plots need `pip install 'lazyctr[bench]'`)."""


COMMANDS.append(bench)

Config = TypeVar("Config")
Command = TypeVar("Command", bound=Callable[..., None])


def _resolve_cache(_ctx: click.Context, _param: click.Parameter, cache: Path | None) -> Path:
    from benchmarks.common import CACHE

    return (cache or CACHE / "bench").resolve()


def suite_outputs(suite: str) -> Callable[[Command], Command]:
    """The --out and --cache options of a suite that writes results.json, report.md and plots."""
    out = click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=Path("bench-results") / suite,
        show_default=True,
        help="Where results.json, report.md and the plots go.",
    )
    cache = click.option(
        "--cache",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        callback=_resolve_cache,
        help="Built images (kept between runs) and the working files.  [default: .cache/bench of a "
        "checkout, else ~/.cache/lazyctr/bench]",
    )
    return lambda command: out(cache(command))


def _configure_and_run(configure: Callable[[], Config], run: Callable[[Config], Path]) -> None:
    """Make a suite's config (its BenchError is a bad option: status 2), run it, print its report's path."""
    from benchmarks.common import BenchError

    try:
        config = configure()
    except BenchError as e:
        raise BadOption(str(e)) from None
    try:
        report = run(config)
    except BenchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {report}")


@bench.command()
@click.option(
    "--images",
    default="all",
    show_default=True,
    help="Comma-separated image names (benchmarks/images/), `all`, or `quick` (distro,redis,flask).",
)
@click.option(
    "--drivers",
    default="copy,overlay,lazy,lazy+profile",
    show_default=True,
    help="Comma-separated: copy, overlay (after pull --eager; overlay is the baseline), lazy, lazy+profile.",
)
@click.option(
    "--link",
    "link",
    default="100mbit/20ms",
    show_default=True,
    help="RATE/RTT[/LOSS] between registry and client.",
)
@click.option("--runs", type=int, default=3, show_default=True, help="Cold runs per image and driver.")
@suite_outputs("hello")
@click.option(
    "--peers",
    default="podman,stargz,containerd-lazyctr",
    show_default=True,
    help="Comma-separated peers, or `none`.",
)
def hello(images: str, drivers: str, link: str, runs: int, out: Path, cache: Path, peers: str) -> None:
    """HelloBench-style suite: real images from pull to ready over a shaped link, per driver and peer."""
    from benchmarks import hello as suite

    _configure_and_run(
        lambda: suite.make_config(images, drivers, link, runs, out, cache, peers), suite.run_suite
    )


@bench.command()
@click.option("--nodes", type=int, default=32, show_default=True, help="Nodes that start the image at once.")
@click.option(
    "--modes",
    default="lazy,service,eager",
    show_default=True,
    help="Comma-separated: lazy, service (lazy, with `lazyctr service` resident on each node), eager.",
)
@click.option(
    "--proxy/--no-proxy",
    default=True,
    show_default=True,
    help="Also through a pull-through cache (`lazyctr serve --proxy`), where this lazyctr has one.",
)
@click.option("--link", default="100mbit/20ms", show_default=True, help="Each node's RATE/RTT[/LOSS].")
@click.option("--uplink", default="1gbit/2ms", show_default=True, help="The registry's RATE/RTT[/LOSS].")
@click.option("--proxy-link", default="1gbit/1ms", show_default=True, help="The proxy's RATE/RTT[/LOSS].")
@suite_outputs("fleet")
def fleet(
    nodes: int,
    modes: str,
    proxy: bool,
    link: str,
    uplink: str,
    proxy_link: str,
    out: Path,
    cache: Path,
) -> None:
    """N nodes start the same image at one moment, lazily and eagerly, with and without a proxy cache."""
    from benchmarks import fleet as suite

    _configure_and_run(
        lambda: suite.make_config(nodes, modes, proxy, link, uplink, proxy_link, out, cache), suite.run_suite
    )


@bench.command()
@click.option("--pings", type=int, default=2000, show_default=True, help="Round trips per path.")
@click.option("--seconds", type=float, default=1.0, show_default=True, help="Seconds of sending per path.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Turns over the paths (medians).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Write results.json here.")
def network(pings: int, seconds: float, rounds: int, out: Path | None) -> None:
    """Latency and throughput container-to-container on the bridge and through a published port,
    against host-to-host (two namespaces on a veth)."""
    from benchmarks.common import BenchError
    from benchmarks.network import run_suite

    if pings < 1 or rounds < 1 or not seconds > 0:
        raise BadOption("--pings, --rounds and --seconds must be more than 0")
    try:
        run_suite(pings, seconds, rounds, out)
    except BenchError as e:
        raise click.ClickException(str(e)) from None


@bench.command()
@click.option(
    "--guests",
    default="1,2,4,8,16",
    show_default=True,
    help="Comma-separated numbers of guests run at once for the memory and disk measurements.",
)
@click.option("--runs", type=int, default=3, show_default=True, help="Runs of startup, CPU and network.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bench-results/vm"),
    show_default=True,
    help="Where results.json, report.md and the plots go.",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the Debian base is kept between runs.  [default: .cache of a checkout, else"
    " ~/.cache/lazyctr]",
)
@click.option(
    "--qemu",
    envvar="LAZYCTR_QEMU",
    default="qemu-system-x86_64",
    show_default=True,
    help="The QEMU binary [env LAZYCTR_QEMU].",
)
@click.option(
    "--accel",
    default="auto",
    show_default=True,
    help="auto: KVM where /dev/kvm boots a stock kernel, else TCG (QEMU's emulator).",
)
@click.option("--cpu-mb", type=int, default=256, show_default=True, help="MiB the compute job hashes.")
@click.option("--fio-mb", type=int, default=64, show_default=True, help="Size of each fio file (MiB).")
@click.option("--fio-seconds", type=int, default=3, show_default=True, help="Seconds per fio workload.")
@click.option("--net-mb", type=int, default=64, show_default=True, help="MiB the throughput test sends.")
def vm(
    guests: str,
    runs: int,
    out: Path,
    cache: Path | None,
    qemu: str,
    accel: str,
    cpu_mb: int,
    fio_mb: int,
    fio_seconds: int,
    net_mb: int,
) -> None:
    """The seed's comparison: one image as a container and as a QEMU VM, native as the baseline."""
    from benchmarks import vm as suite
    from benchmarks.common import CACHE

    base = (cache or CACHE).resolve()
    _configure_and_run(
        lambda: suite.make_config(guests, runs, out, base, qemu, accel, cpu_mb, fio_mb, fio_seconds, net_mb),
        suite.run_suite,
    )


@bench.command()
@click.option(
    "--drivers",
    default="copy,overlay,lazy-cold,lazy-warm,btrfs",
    show_default=True,
    help="Comma-separated: copy, overlay, lazy-cold, lazy-warm, btrfs (native, the baseline, always runs).",
)
@click.option(
    "--containers",
    default="1,2,4,8,16",
    show_default=True,
    help="Comma-separated numbers of containers run at once, each a batch.",
)
@click.option("--runs", type=int, default=3, show_default=True, help="Batches per driver and number.")
@click.option(
    "--file-mb", type=int, default=256, show_default=True, help="Size of each large image file (MiB)."
)
@click.option(
    "--small-files", type=int, default=5000, show_default=True, help="Files the metadata job makes."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bench-results/storage"),
    show_default=True,
    help="Where results.json, report.md and the plots go.",
)
def storage(drivers: str, containers: str, runs: int, file_mb: int, small_files: int, out: Path) -> None:
    """Storage drivers under fio in containers (read, copy-up write, metadata; 1..N at once) vs native."""
    from benchmarks import storage_drivers as suite

    _configure_and_run(
        lambda: suite.make_config(drivers, containers, runs, file_mb, small_files, out), suite.run_suite
    )
