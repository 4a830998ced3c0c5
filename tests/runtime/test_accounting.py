"""The counters `stats` reads: the kernel's text formats of both cgroup versions and of /proc/net/dev,
and on a real cgroup2 hierarchy (the hybrid layout's /sys/fs/cgroup/unified where the machine is v1)
CPU time that grows, stops growing when the cgroup is frozen and grows again once it is thawed."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from runtime.accounting import (
    Usage,
    cpu_percent,
    interface_bytes,
    read_usage,
    system_cpu_ns,
    v1_block_io,
    v2_block_io,
    v2_usage,
)
from runtime.cgroups import Cgroup, Limits
from tests.runtime.polling import wait_for
from tests.runtime.test_cgroups import v2_root_with

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes packets errs drop fifo frame compressed multicast|bytes packets errs drop fifo colls carrier
    lo: 123456 100 0 0 0 0 0 0 123456 100 0 0 0 0 0 0
  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0
  eth1: 24 1 0 0 0 0 0 0 36 1 0 0 0 0 0 0
"""


def test_network_io_is_every_interface_but_loopback() -> None:
    assert interface_bytes(NET_DEV) == (1024, 2036)


def test_v1_block_io_sums_reads_and_writes_of_every_device() -> None:
    text = (
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Total 12288\n8:16 Read 1\n8:16 Write 2\nTotal 12291\n"
    )
    assert v1_block_io(text) == (4097, 8194)


def test_v2_block_io_sums_rbytes_and_wbytes() -> None:
    text = "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=1 wios=1\n"
    assert v2_block_io(text) == (4097, 8194)


def test_cpu_percent_is_docker_s_formula() -> None:
    before, after = Usage(0, 0, 1, 0, 0, 0, 0, 1), Usage(500, 0, 1, 0, 0, 0, 0, 1)
    cpus = os.cpu_count() or 1
    assert cpu_percent(before, after, 0, 1000) == pytest.approx(50.0 * cpus)
    assert cpu_percent(after, after, 0, 1000) == 0.0


@pytest.fixture
def v2_cgroup() -> Iterator[Cgroup]:
    root = v2_root_with()
    cgroup = Cgroup.create(f"lzl-acct-{uuid.uuid4().hex[:8]}", Limits(), root=root)
    try:
        yield cgroup
    finally:
        cgroup.remove()


@pytest.mark.privileged
def test_v2_cpu_time_grows_stops_when_frozen_and_grows_when_thawed(v2_cgroup: Cgroup) -> None:
    burner = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        v2_cgroup.add(burner.pid)
        start = v2_usage(v2_cgroup)[0]
        wait_for(lambda: v2_usage(v2_cgroup)[0] > start, what="CPU time in cpu.stat")
        usage = read_usage(v2_cgroup, burner.pid)
        assert usage.pids in (0, 1) and usage.net_rx == usage.net_tx == 0  # on the host's network: none
        v2_cgroup.freeze()
        assert v2_cgroup.frozen()
        frozen = v2_usage(v2_cgroup)[0]
        time.sleep(0.3)
        assert v2_usage(v2_cgroup)[0] == frozen
        v2_cgroup.thaw()
        assert not v2_cgroup.frozen()
        wait_for(lambda: v2_usage(v2_cgroup)[0] > frozen, what="CPU time after the thaw")
    finally:
        burner.kill()
        burner.wait()


def test_system_cpu_time_grows() -> None:
    first = system_cpu_ns()
    wait_for(lambda: system_cpu_ns() > first, what="the machine's CPU time")
