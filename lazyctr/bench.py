"""`lazyctr bench`: the benchmark suites; their code is the `benchmarks` package (here only the command line).

The suites are imported when one runs, not when the CLI starts: `lazyctr --help` stays fast. Their plots
need matplotlib, the `bench` extra (`pip install 'lazyctr[bench]'`); without it they write no plots.
"""

from __future__ import annotations

from pathlib import Path

import click

from lazyctr.context import COMMANDS


class BadOption(click.ClickException):
    """A bad option value: one line on stderr, status 2 (usage)."""

    exit_code = 2


@click.group()
def bench() -> None:
    """Benchmark suites (need root; plots need `pip install 'lazyctr[bench]'`)."""


COMMANDS.append(bench)


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
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bench-results/hello"),
    show_default=True,
    help="Where results.json, report.md and the plots go.",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Built images (kept between runs) and the working files.  [default: .cache/bench of a checkout,"
    " else ~/.cache/lazyctr/bench]",
)
@click.option(
    "--peers",
    default="podman,stargz,containerd-lazyctr",
    show_default=True,
    help="Comma-separated peers, or `none`.",
)
def hello(images: str, drivers: str, link: str, runs: int, out: Path, cache: Path | None, peers: str) -> None:
    """HelloBench-style suite: real images from pull to ready over a shaped link, per driver and peer."""
    from benchmarks.common import CACHE
    from benchmarks.hello import BenchError, make_config, run_suite

    cache = (cache or CACHE / "bench").resolve()
    try:
        config = make_config(images, drivers, link, runs, out, cache, peers)
    except BenchError as e:
        raise BadOption(str(e)) from None
    try:
        report = run_suite(config)
    except BenchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {report}")


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
    from benchmarks.common import BenchError
    from benchmarks.storage_drivers import make_config, run_suite

    try:
        config = make_config(drivers, containers, runs, file_mb, small_files, out)
    except BenchError as e:
        raise BadOption(str(e)) from None
    try:
        report = run_suite(config)
    except BenchError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {report}")
