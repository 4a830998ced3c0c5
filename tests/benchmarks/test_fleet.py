"""The fleet suite (`lazyctr bench fleet`, benchmarks/fleet.py): bad options refused before anything is
made, the star's addresses, the switch's token bucket, the percentile, and real runs (2 lazy nodes;
4 nodes lazy and eager with the proxy, extended; one interrupted by SIGTERM) whose results have every
figure for every node and which leave nothing of their own behind. Behaviour only: no speed is
asserted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.fleet import LAZY_MODES, NOT_AVAILABLE, percentile
from benchmarks.fleetnet import PREFIX, address
from benchmarks.link import NETNS_DIR
from benchmarks.linkfwd import Bucket
from tests.benchmarks.leftovers import traces
from tests.benchmarks.suites import (
    REPO,
    assert_bad_options_refused_before_anything_is_made,
    assert_out_that_is_a_file_is_refused,
    run_bench,
)
from tests.conftest import Result, require_tools

PNG = b"\x89PNG\r\n\x1a\n"
NODE_FIELDS = (
    "node",
    "ok",
    "pull_s",
    "run_s",
    "ready_s",
    "received",
    "sent",
    "rss_peak",
    "cgroup_peak",
    "cpu_ns",
)
SCENARIO_FIELDS = (
    "registry_egress",
    "registry_ingress",
    "proxy_egress",
    "ready_p50",
    "ready_p99",
    "ready_max",
    "rss_total_peak",
    "mounts_peak",
    "mem_available_drop",
    "switch_cpu_s",
)


def bench(*args: str, timeout: float = 60) -> Result:
    return run_bench("fleet", *args, timeout=timeout)


def our_namespaces() -> set[str]:
    return {n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX)} if NETNS_DIR.is_dir() else set()


def our_cgroups() -> set[str]:
    found = set()
    for kind in ("memory", "cpuacct"):
        path = Path("/sys/fs/cgroup") / kind
        if path.is_dir():
            found |= {f"{kind}/{p.name}" for p in path.iterdir() if p.name.startswith(PREFIX)}
    return found


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--nodes", "0"], "--nodes must be between 1 and"),
        (["--nodes", "1001"], "--nodes must be between 1 and"),
        (["--modes", "lazy,turbo"], "unknown mode 'turbo'"),
        (["--modes", ","], "no mode given"),
        (["--link", "fast"], "bad --link 'fast'"),
        (["--uplink", "1gbit"], "bad --uplink '1gbit'"),
        (["--proxy-link", "1gbit/2parsecs"], "bad --proxy-link"),
    ],
)
def test_bad_options_are_refused_before_anything_is_made(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    assert_bad_options_refused_before_anything_is_made("fleet", tmp_path, args, fragment)


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    assert_out_that_is_a_file_is_refused("fleet", tmp_path)


def test_addresses_of_the_star_are_distinct_and_in_the_subnet() -> None:
    names = ["reg", "proxy", *(f"n{k}" for k in range(1000))]
    addresses = [address(name) for name in names]
    assert len(set(addresses)) == len(names)
    assert all(a.startswith("10.78.") for a in addresses)
    with pytest.raises(ValueError):
        address("n1000")


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([5.0], 99) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([float(k) for k in range(1, 101)], 99) == pytest.approx(99.01)


def check_run(tmp_path: Path, nodes: int, modes: tuple[str, ...], proxy: bool) -> dict[str, Any]:
    """Run the suite on `nodes` nodes: every node of every scenario is ready and has every figure; the
    proxy mode (with `proxy`) is measured or reported as not available; no namespace, cgroup, mount or
    process of the run is left. Returns the results."""
    require_tools("ip", "nsenter")
    namespaces, cgroups = our_namespaces(), our_cgroups()
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--nodes", str(nodes), "--modes", ",".join(modes), "--out", str(out), "--cache", str(cache)]
    args.append("--proxy" if proxy else "--no-proxy")
    result = bench(*args, timeout=600)
    assert result.code == 0, result.stderr
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    scenarios = results["scenarios"]
    assert [(s["mode"], s["way"], s["count"]) for s in scenarios] == [
        (mode, way, count)
        for mode in modes
        for way in ("direct", "proxy")[: 2 if proxy else 1]
        for count in (1, nodes)
    ]
    for s in scenarios:
        if "skipped" in s:
            assert s["way"] == "proxy" and s["skipped"] == NOT_AVAILABLE
            assert NOT_AVAILABLE in result.stdout.decode()
            continue
        assert [n["node"] for n in s["nodes"]] == [f"n{k}" for k in range(s["count"])]
        for node in s["nodes"]:
            assert node["ok"], node.get("error")
            assert all(node.get(key) is not None for key in NODE_FIELDS), node
            assert node["received"] > 0 and node["rss_peak"] > 0
        assert all(s.get(key) is not None for key in SCENARIO_FIELDS), s
        assert s["ready_nodes"] == s["count"]
        assert s["registry_egress"] > 0
        if s["mode"] in LAZY_MODES:  # every node held its lazy mount at the same time
            assert s["held_containers"] == s["held_mounts"] == s["count"]
            assert all(node["held_pss"] > 0 for node in s["nodes"])
    text = (out / "report.md").read_text()
    assert "## The issue's figures" in text
    for plot in ("ready_cdf.png", "registry_egress.png", "node_memory.png"):
        assert (out / plot).read_bytes().startswith(PNG)
    assert not our_namespaces() - namespaces
    assert not our_cgroups() - cgroups
    assert not traces([str(cache)])
    return results


@pytest.mark.privileged
def test_two_lazy_nodes_all_ready_with_every_figure_and_nothing_left(tmp_path: Path) -> None:
    """The default suite's share: 2 lazy nodes straight from the registry, on their own and with a
    resident `lazyctr service` each, which is stopped with its scenario (the proxy: extended)."""
    check_run(tmp_path, 2, ("lazy", "service"), proxy=False)


@pytest.mark.privileged
@pytest.mark.extended
def test_four_nodes_lazy_and_eager_all_ready_with_every_figure_and_nothing_left(tmp_path: Path) -> None:
    results = check_run(tmp_path, 4, ("lazy", "eager"), proxy=True)
    lazy, eager = (s for s in results["scenarios"] if s["count"] == 4 and s["way"] == "direct")
    assert 0 < lazy["received_median"] < eager["received_median"]  # lazily: a part of the image


@pytest.mark.privileged
def test_sigterm_while_nodes_start_leaves_nothing(tmp_path: Path) -> None:
    """A SIGTERM while 2 nodes are starting: the suite ends, and no namespace, cgroup, mount or process
    of its own is left; what it had measured is in results.json, marked partial."""
    require_tools("ip", "nsenter")
    namespaces, cgroups = our_namespaces(), our_cgroups()
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["--nodes", "2", "--modes", "lazy", "--no-proxy", "--out", str(out), "--cache", str(cache)]
    args += ["--link", "10mbit/40ms"]  # a start of a few seconds: the signal comes while it goes on
    proc = subprocess.Popen(
        [sys.executable, "-m", "lazyctr.cli", "bench", "fleet", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.startswith(b"lazy direct, 2 node(s)"):
                break
        else:
            pytest.fail(
                f"the 2-node scenario never started: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        time.sleep(1.5)  # the nodes' pulls and runs are under way
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert b"Traceback" not in stderr, stderr.decode()
    results = json.loads((out / "results.json").read_text())
    assert results["partial"] and results["scenarios"][0]["ready_nodes"] == 1
    assert not our_namespaces() - namespaces
    assert not our_cgroups() - cgroups
    assert not traces([str(cache)])


def test_switch_bucket_paces_at_its_rate_and_drops_beyond_its_queue() -> None:
    bucket = Bucket(rate=1000.0, queue=2000, burst=0)
    assert [bucket.send(1000, 0.0) for _ in range(3)] == [1.0, 2.0, 3.0]  # one second per 1000 bytes
    assert bucket.send(1000, 0.0) == -1.0  # 3 s queued already, more than the 2 s queue: dropped
    assert bucket.dropped == 1
    assert bucket.send(1000, 10.0) == 11.0  # idle since: no backlog, no saved tokens (burst 0)
    assert Bucket(rate=0.0, queue=0, burst=0).send(1500, 5.0) == 5.0  # unlimited: leaves at once


def test_switch_bucket_lets_a_burst_through_after_idling() -> None:
    bucket = Bucket(rate=1000.0, queue=10_000, burst=500)
    assert bucket.send(500, 100.0) == 100.0  # half a second saved while idle covers the packet
    assert bucket.send(500, 100.0) == 100.5
