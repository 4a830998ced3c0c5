"""`lazyctr bench network` end to end, briefly: every path measured, in namespaces that are gone after."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import CliRunner, require_tools

pytestmark = [pytest.mark.privileged, pytest.mark.extended]


def test_the_network_bench_measures_every_path_and_leaves_no_namespace(
    lazyctr: CliRunner, tmp_path: Path
) -> None:
    require_tools("ip", "nsenter", "iptables")
    out = lazyctr(
        "bench", "network", "--pings", "50", "--seconds", "0.1", "--rounds", "1", "--out", str(tmp_path)
    ).out
    paths = [row["path"] for row in json.loads((tmp_path / "results.json").read_text())]
    assert paths == [
        "host-to-host (veth)",
        "container-to-container (bridge)",
        "host to published port (DNAT)",
    ]
    assert all(path in out for path in paths)
    assert all(row["rtt_median_us"] > 0 and row["throughput_gbit"] > 0
               for row in json.loads((tmp_path / "results.json").read_text()))  # fmt: skip
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert "lzn-bench-" not in namespaces
