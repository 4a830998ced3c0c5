"""The hello suite (`lazyctr bench hello`, benchmarks/hello.py): its report from a small results.json of
its own format, bad options refused before anything is made, and one real run of the smallest image.
Behaviour only: no speed is asserted."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.common import write_outputs
from benchmarks.hello import (
    GROUPS,
    QUICK_IMAGES,
    available_images,
    draw_plots,
    make_config,
    medians,
    render_report,
)
from tests.benchmarks.suites import (
    REPO,
    assert_bad_options_refused_before_anything_is_made,
    assert_out_that_is_a_file_is_refused,
    run_bench,
)
from tests.conftest import Result, require_tools

PNG = b"\x89PNG\r\n\x1a\n"


def bench(*args: str, timeout: float = 60) -> Result:
    return run_bench("hello", *args, timeout=timeout)


def sample(image: str, driver: str, run: int, ready: float, received: int, **extra: Any) -> dict[str, Any]:
    return {
        "image": image,
        "driver": driver,
        "run": run,
        "ok": True,
        "pull_s": ready / 2,
        "run_s": ready / 2,
        "ready_s": ready,
        "bytes": received,
        "rss_peak": 50_000_000,
        "cgroup_peak": 80_000_000,
        **extra,
    }


def fake_results() -> dict[str, Any]:
    """Two images, three drivers and podman, two runs; one failed run and a skipped peer."""
    samples = []
    for run in range(2):
        samples += [
            sample("distro", "overlay", run, 4.0 + run * 2, 100_000_000),  # median 5.0
            sample("distro", "lazy", run, 2.0, 8_000_000),
            sample("distro", "lazy+profile", run, 1.0, 5_000_000),
            sample("distro", "podman", run, 10.0, 100_000_000),
            sample("python", "overlay", run, 12.0, 150_000_000),
            sample("python", "lazy+profile", run, 3.0, 15_000_000),
        ]
    samples.append(
        {"image": "python", "driver": "lazy", "run": 0, "ok": False, "error": "lazyctr run failed (1)"}
    )
    return {
        "version": 1,
        "started": "2026-11-24T23:00:00+00:00",
        "config": {
            "images": ["distro", "python"],
            "drivers": ["overlay", "lazy", "lazy+profile"],
            "link": "100mbit/20ms",
            "runs": 2,
            "peers": ["podman", "stargz"],
        },
        "link": {
            "spec": "100mbit/20ms",
            "emulator": "tun",
            "rtt_median_ms": 20.6,
            "rtt_min_ms": 20.3,
            "rate_mbit": 96,
        },
        "images": {
            "distro": {
                "group": "distro",
                "size": 100_000_000,
                "files_size": 200_000_000,
                "push_s": 5.0,
                "push_beside_s": 1.0,
            },
            "python": {
                "group": "language",
                "size": 150_000_000,
                "files_size": 300_000_000,
                "push_s": 7.0,
                "push_beside_s": 1.5,
            },
        },
        "samples": samples,
        "skipped": {"stargz": {"distro": "no snapshotter here", "python": "no snapshotter here"}},
        "dev_cycle": {
            "image": "python",
            "edited": "Dockerfile",
            "build_s": 1.0,
            "push_s": 2.0,
            "lazy": {"pull_s": 0.5, "run_s": 1.0, "total_s": 4.5},
            "eager": {"pull_s": 5.0, "run_s": 0.5, "total_s": 8.5},
        },
    }


def test_medians_per_image_and_driver() -> None:
    table = medians(fake_results())
    distro = table[("distro", "overlay")]
    assert distro["ready_s"] == 5.0 and distro["n"] == 2
    assert distro["deploy_s"] == 6.0  # push beside the registry + ready
    assert distro["deploy_link_s"] == 10.0  # push over the link + ready
    assert table[("distro", "lazy+profile")]["fraction"] == pytest.approx(0.05)
    assert ("python", "lazy") not in table  # its only run failed


def test_report_and_plots_from_results(tmp_path: Path) -> None:
    results = fake_results()
    report = write_outputs(results, tmp_path / "out", render_report, draw_plots)
    text = report.read_text()
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    for plot in ("ready_by_image.png", "bytes_vs_size.png", "startup_cdf.png"):
        assert (tmp_path / "out" / plot).read_bytes().startswith(PNG)
        assert f"]({plot})" in text
    headline = next(line for line in text.splitlines() if line.startswith("| distro | distro |"))
    # eager 5 s / lazy+profile 1 s; 5 MB of a 100 MB image read.
    assert "5.00x" in headline and "5.0%" in headline and "10.00" in headline  # podman's 10 s
    overall = next(line for line in text.splitlines() if line.startswith("| lazy+profile |"))
    # Medians over the images: ready (1+3)/2 = 2 against eager (5+12)/2 = 8.5; fraction (5%+10%)/2.
    assert "| 2.00 |" in overall and "4.25x" in overall and "7.5%" in overall
    assert "| language | python |" in text
    assert "python lazy run 0: lazyctr run failed (1)" in text
    assert "stargz skipped for distro: no snapshotter here" in text
    assert "one edit of Dockerfile" in text
    # The physical limit: 5 MB (lazy+profile's bytes) at 96 Mbit/s + 3 x 20.6 ms = 0.478 s.
    limit = next(line for line in text.splitlines() if line.startswith("| distro | 0.48 |"))
    assert "| 2.09x |" in limit and "| 20.90x |" in limit  # lazy+profile 1 s, podman 10 s over 0.478 s
    per_image = next(line for line in text.splitlines() if line.startswith("| distro | lazy+profile |"))
    assert per_image.rstrip().endswith("| 10.00x |")  # podman's ready over ours
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_without_matplotlib_the_report_is_written_and_one_line_says_why_no_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ModuleNotFoundError
    results = fake_results()
    report = write_outputs(results, tmp_path / "out", render_report, draw_plots)
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    assert "| distro | distro |" in report.read_text() and "## Plots" not in report.read_text()
    assert not list((tmp_path / "out").glob("*.png"))
    assert capsys.readouterr().out == "no plots: they need matplotlib (pip install 'lazyctr[bench]')\n"


def test_report_without_baseline_or_peers() -> None:
    results = fake_results()
    results["config"]["drivers"] = ["lazy"]
    results["samples"] = [s for s in results["samples"] if s["driver"] == "lazy"]
    results["skipped"], results["dev_cycle"] = {}, None
    text = render_report(results)
    assert "| distro | distro | 100.0 | 2.00 | 8.0 |" in text
    assert "| distro | 0.73 | 2.75x |" in text  # without a profile, the limit is lazy's 8 MB
    assert "Targets" not in text


def test_every_image_has_a_group_and_the_suite_covers_hellobench() -> None:
    images = available_images()
    assert len(images) >= 12
    assert set(images) <= set(GROUPS)
    assert {GROUPS[i] for i in images} >= {"distro", "language", "database", "web server", "web framework"}
    for image in images:
        dockerfile = (REPO / "benchmarks" / "images" / image / "Dockerfile").read_text()
        assert dockerfile.startswith("FROM debian:minbase\n")
        assert "\nCMD [" in dockerfile  # the readiness probe


def test_config_of_good_options(tmp_path: Path) -> None:
    config = make_config(
        "quick", "lazy, overlay,lazy", "10mbit/50ms/1%", 2, tmp_path / "out", tmp_path, "none"
    )
    assert config.images == list(QUICK_IMAGES) and config.drivers == ["lazy", "overlay"]
    assert config.peers == [] and str(config.link) and config.runs == 2
    assert (
        make_config("all", "lazy", "1gbit/2ms", 1, tmp_path, tmp_path, "podman").images == available_images()
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--images", "distro,nope"], "unknown image 'nope'"),
        (["--drivers", "overlay,zfs"], "unknown driver 'zfs'"),
        (["--drivers", ","], "no driver given"),
        (["--link", "100mbit"], "bad --link '100mbit'"),
        (["--link", "fast/20ms"], "bad --link 'fast/20ms'"),
        (["--runs", "0"], "--runs must be at least 1"),
        (["--peers", "docker"], "unknown peer 'docker'"),
    ],
)
def test_bad_options_are_refused_before_anything_is_made(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    assert_bad_options_refused_before_anything_is_made("hello", tmp_path, args, fragment)


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    assert_out_that_is_a_file_is_refused("hello", tmp_path)


@pytest.mark.privileged
def test_real_suite_on_the_smallest_image(tmp_path: Path) -> None:
    """distro, one run, overlay (eager) and lazy, no peers, over a fast link: every output is there."""
    require_tools("ip", "nsenter")
    out = tmp_path / "out"
    args = ["--images", "distro", "--drivers", "overlay,lazy", "--runs", "1", "--peers", "none"]
    result = bench(
        *args, "--link", "1gbit/2ms", "--out", str(out), "--cache", str(tmp_path / "cache"), timeout=600
    )
    assert result.code == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert [(s["image"], s["driver"], s["ok"]) for s in results["samples"]] == [
        ("distro", "overlay", True),
        ("distro", "lazy", True),
    ]
    eager, lazy = results["samples"]
    size = results["images"]["distro"]["size"]
    assert eager["bytes"] >= size  # an eager pull fetches every layer
    assert 0 < lazy["bytes"] < eager["bytes"]
    assert results["images"]["distro"]["push_s"] > 0 and results["images"]["distro"]["push_beside_s"] > 0
    assert results["link"]["rtt_median_ms"] >= 2
    text = (out / "report.md").read_text()
    assert "| distro | distro |" in text
    for plot in ("ready_by_image.png", "bytes_vs_size.png", "startup_cdf.png"):
        assert (out / plot).read_bytes().startswith(PNG)
