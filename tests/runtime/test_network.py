"""Bridge networks and published ports, for real: the CNI plugins make bridges, veths and NAT rules in
a network namespace each test makes for itself (`nsenter --net`: the mount namespace stays the host's,
so every lazyctr command sees the same namespace files), never in the host's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lazyfs.host import process_alive
from runtime.network.cni import CNI_PATHS
from tests.conftest import Result, assert_clean_error, cli_command, require_tools, unavailable
from tests.runtime.polling import wait_for

pytestmark = pytest.mark.privileged

SUBNET = "10.89.100.0/24"  # the default network's in these tests (LAZYCTR_BRIDGE_SUBNET)
GATEWAY = "10.89.100.1"
PAGE = "hello from the container\n"
SERVE = (
    "mkdir -p /www && printf 'hello from the container\\n' > /www/index.html && exec httpd -f -p 80 -h /www"
)


@dataclass
class Host:
    """A network namespace of the test's own, standing for the host lazyctr runs on."""

    netns: str
    root: Path

    def lazyctr(self, *args: str, ok: bool = True) -> Result:
        env = {**os.environ, "LAZYCTR_NETWORK": "bridge", "LAZYCTR_BRIDGE_SUBNET": SUBNET}
        proc = subprocess.run(
            self.inside(cli_command(self.root, *args)), capture_output=True, env=env, timeout=120
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr.decode())
        if ok and result.code != 0:
            raise AssertionError(f"lazyctr {' '.join(args)} failed ({result.code}): {result.stderr}")
        return result

    def inside(self, argv: list[str]) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", *argv]

    def run(self, *argv: str) -> str:
        return subprocess.run(self.inside(list(argv)), capture_output=True, text=True, check=True).stdout

    def fetch(self, url: str) -> str:
        """GET `url` from the host side; '' while nothing answers."""
        probe = (
            "import sys, urllib.request\n"
            "try: print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode(), end='')\n"
            "except OSError: pass"
        )
        return subprocess.run(
            self.inside([sys.executable, "-c", probe, url]), capture_output=True, text=True
        ).stdout

    def leftovers(self) -> dict[str, int]:
        """What containers' attachments make, counted: veths, address leases, per-container iptables
        rules and chains, namespace files. The shared chains (CNI-FORWARD, CNI-HOSTPORT-*) stay."""
        rules = self.run("iptables-save")
        per_container = [
            line
            for line in rules.splitlines()
            if (line.startswith("-A") and ('id: "' in line or "/32" in line))
            or re.match(r":CNI-(?!FORWARD|ADMIN|HOSTPORT-)", line)
        ]
        leases = [
            path
            for path in (self.root / "networks/ipam").glob("*/*")
            if path.name != "lock" and not path.name.startswith("last_reserved_ip")
        ]
        return {
            "veths": len(self.run("ip", "-o", "link", "show", "type", "veth").splitlines()),
            "leases": len(leases),
            "iptables": len(per_container),
            "netns": len(list(self.root.glob("containers/*/netns"))),
        }


NOTHING = {"veths": 0, "leases": 0, "iptables": 0, "netns": 0}


def make_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)


@pytest.fixture
def host(tmp_path: Path, busybox_tar: Path) -> Iterator[Host]:
    require_tools("ip", "nsenter", "iptables-save")
    if not any((Path(d) / "bridge").exists() for d in CNI_PATHS):
        unavailable("the CNI plugins are not installed (containernetworking-plugins)")
    name = f"lzn-t-{os.urandom(3).hex()}"
    make_netns(name)
    host = Host(name, tmp_path / "root")
    try:
        host.lazyctr("import", str(busybox_tar), "busybox")
        yield host
    finally:
        for state in host.root.glob("containers/*"):
            host.lazyctr("rm", "-f", state.name, ok=False)
        for netns in host.root.glob("containers/*/netns"):  # only if a test failed half-way
            subprocess.run(["umount", "--lazy", str(netns)], check=False)
        subprocess.run(["ip", "netns", "delete", name], check=False)


def retried(url: str) -> str:
    """A shell line that GETs `url` from inside a container, retrying while its server starts."""
    return f"for i in $(seq 100); do wget -q -O- {url} && exit; sleep 0.1; done; exit 1"


def started(host: Host, *args: str) -> str:
    """`run -d` ARGS; the container's ID."""
    return host.lazyctr("run", "-d", *args).out.strip()


def crash(state: dict[str, int]) -> None:
    """Kill a container's supervisor and its PID 1, as a crash would; return once both are gone."""
    for pid in (state["supervisor"], state["pid"]):
        os.kill(pid, signal.SIGKILL)
    for pid in (state["supervisor"], state["pid"]):
        wait_for(lambda pid=pid: not process_alive(pid), what=f"process {pid} to end")


def test_a_published_port_reaches_the_containers_http_server(host: Host) -> None:
    ports = ("-p", "8080:80", "-p", "127.0.0.1:8090:80", "-p", "8053:53/udp")
    started(host, "--name", "web", "--hostname", "webhost", *ports, "busybox", "sh", "-c", SERVE)
    wait_for(lambda: host.fetch(f"http://{GATEWAY}:8080/") == PAGE, what="the page on the host's port")
    assert host.fetch("http://127.0.0.1:8080/") == PAGE  # portmap's SNAT lets localhost in too
    assert host.fetch("http://127.0.0.1:8090/") == PAGE
    assert host.fetch(f"http://{GATEWAY}:8090/") == ""  # published on 127.0.0.1 only
    address = host.lazyctr("exec", "web", "ip", "-4", "-o", "addr", "show", "eth0").out.split()[3]
    assert address.startswith("10.89.100.") and address.endswith("/24")
    assert f"default via {GATEWAY}" in host.lazyctr("exec", "web", "ip", "route").out
    assert host.lazyctr("exec", "web", "cat", "/etc/hostname").out == "webhost\n"
    hosts = host.lazyctr("exec", "web", "cat", "/etc/hosts").out
    assert f"\n{address.split('/')[0]}\twebhost web " in hosts
    # busybox has no UDP server to answer: the rule that would take the datagrams there, then.
    nat = host.run("iptables-save", "-t", "nat")
    ip = address.split("/")[0]
    assert re.search(rf"-p udp .*--dport 8053 .*-j DNAT --to-destination {ip}:53", nat), nat


def test_containers_on_a_user_network_reach_each_other_by_name(host: Host) -> None:
    assert host.lazyctr("network", "create", "appnet").out.strip() == "appnet"
    started(host, "--name", "web", "--network", "appnet", "busybox", "sh", "-c", SERVE)
    page = host.lazyctr(
        "run", "--rm", "--network", "appnet", "busybox", "sh", "-c", retried("http://web/")
    ).out
    assert page == PAGE
    (facts,) = json.loads(host.lazyctr("network", "inspect", "appnet").out)
    assert facts["Subnet"] == "10.89.0.0/24"  # the first free /24 of podman's pool
    assert [c["Name"] for c in facts["Containers"].values()] == ["web"]
    listed = host.lazyctr("network", "ls").out
    assert re.search(r"^appnet\s+bridge\s+10\.89\.0\.0/24\s+lazyctr1\s+1$", listed, re.M), listed
    assert re.search(r"^bridge\s+bridge\s+10\.89\.100\.0/24\s+lazyctr0\s+0$", listed, re.M), listed


def test_the_default_network_reaches_a_server_in_another_namespace_through_nat(
    host: Host, tmp_path: Path
) -> None:
    outside = host.netns + "-o"
    make_netns(outside)
    server = None
    try:
        link = ["ip", "link", "add", "lzn-out0", "netns", host.netns, "type", "veth"]
        subprocess.run([*link, "peer", "name", "eth0", "netns", outside], check=True)
        host.run("ip", "addr", "add", "10.89.200.1/30", "dev", "lzn-out0")
        host.run("ip", "link", "set", "lzn-out0", "up")
        for command in (
            ["ip", "addr", "add", "10.89.200.2/30", "dev", "eth0"],
            ["ip", "link", "set", "eth0", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", outside, *command], check=True)
        (tmp_path / "www").mkdir()
        (tmp_path / "www/file").write_text("outside\n")
        serve = [sys.executable, "-m", "http.server", "--bind", "10.89.200.2", "8000"]
        server = subprocess.Popen(
            ["ip", "netns", "exec", outside, *serve],
            cwd=tmp_path / "www", stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        got = host.lazyctr("run", "--rm", "busybox", "sh", "-c", retried("http://10.89.200.2:8000/file")).out
        assert got == "outside\n"
    finally:
        if server is not None:
            server.terminate()
        subprocess.run(["ip", "netns", "delete", outside], check=False)
    assert server is not None
    log = server.communicate(timeout=10)[1]
    # The outside has no route to the containers' subnet: the request came masqueraded as the host's.
    assert "10.89.200.1 - - " in log and "10.89.100." not in log, log


def test_nothing_leaks_after_rm_a_crashed_supervisor_or_a_port_already_taken(host: Host) -> None:
    host.lazyctr("network", "create", "--subnet", "10.89.50.0/24", "crashnet")
    started(host, "--name", "a", "-p", "8081:80", "busybox", "sleep", "1000")
    assert host.leftovers()["veths"] == 1 and host.leftovers()["leases"] == 1
    assert host.leftovers()["iptables"] > 0
    # A port already taken: refused before anything is made.
    before = host.leftovers()
    taken = host.lazyctr("run", "--rm", "-p", "8081:80", "busybox", "true", ok=False)
    assert_clean_error(taken, "0.0.0.0:8081/tcp failed: port is already allocated")
    assert taken.code == 125 and host.leftovers() == before
    host.lazyctr("rm", "-f", "a")
    assert host.leftovers() == NOTHING
    # A supervisor killed with its container: the next `run` cleans up after it.
    started(host, "--name", "b", "--network", "crashnet", "-p", "8082:80", "busybox", "sleep", "1000")
    (state,) = json.loads(host.lazyctr("ps", "--json").out)
    crash(state)
    assert host.leftovers()["leases"] == 1 and host.leftovers()["iptables"] > 0
    host.lazyctr("run", "--rm", "--network", "crashnet", "busybox", "true")
    assert host.leftovers() == NOTHING
    # A crashed supervisor's container removed with rm: rm cleans up.
    started(host, "--name", "c", "busybox", "sleep", "1000")
    (state,) = [s for s in json.loads(host.lazyctr("ps", "--json").out) if s["name"] == "c"]
    crash(state)
    # Not from another namespace: the DEL there would miss the rules, which are in this one.
    elsewhere = subprocess.run(cli_command(host.root, "rm", "-f", "c"), capture_output=True, text=True)
    assert_clean_error(Result(elsewhere.returncode, b"", elsewhere.stderr), "from another network namespace")
    host.lazyctr("rm", "-f", "c")
    assert host.leftovers() == NOTHING
    assert "lazyctr network crashnet" in host.run("iptables-save")  # its NAT, while it exists
    host.lazyctr("network", "rm", "crashnet")
    assert "lazyctr1" not in host.run("ip", "-o", "link")  # the user network's bridge went with it
    assert "lazyctr network crashnet" not in host.run("iptables-save")  # and its rules


def test_bad_network_input_is_one_line_and_leaves_nothing(host: Host) -> None:
    for args, fragment in (
        (["-p", "99999:80"], "'99999' is not a port number"),
        (["-p", "1.2.3:80:80"], "is no IPv4 address"),
        (["-p", "8080:80/sctp"], "expected [IP:]HOST:CONTAINER[/tcp|/udp]"),
        (["--network", "nope"], "network nope not found"),
        (["--network", "none", "-p", "8080:80"], "-p needs a bridge network"),
    ):
        result = host.lazyctr("run", "--rm", *args, "busybox", "true", ok=False)
        assert_clean_error(result, fragment)
        assert result.code == 125, result  # docker run's status for what its daemon refuses
    for args, fragment in (
        (["create", "--subnet", "10.89.0.0/33", "x"], "invalid subnet '10.89.0.0/33'"),
        (["create", "--subnet", "nonsense", "x"], "invalid subnet 'nonsense'"),
        (["create", "bridge"], "bridge is a pre-defined network"),
        (["create", "no/slash"], "invalid network name"),
        (["inspect", "nope"], "network nope not found"),
        (["rm", "nope"], "network nope not found"),
    ):
        result = host.lazyctr("network", *args, ok=False)
        assert_clean_error(result, fragment)
        assert result.code == 1, result  # docker network's status
    host.lazyctr("network", "create", "--subnet", "10.89.60.0/24", "busy")
    # A plugin that fails (the bridge's name taken by a veth): its own message, and everything undone.
    host.run("ip", "link", "add", "lazyctr1", "type", "veth", "peer", "name", "lzn-peer")
    failed = host.lazyctr("run", "--rm", "--network", "busy", "busybox", "true", ok=False)
    assert_clean_error(failed, 'CNI bridge ADD failed: failed to create bridge "lazyctr1"')
    assert failed.code == 125 and host.leftovers() == {**NOTHING, "veths": 2}  # the pair we made
    host.run("ip", "link", "delete", "lazyctr1")
    assert_clean_error(
        host.lazyctr("network", "create", "busy", ok=False), "network with name busy already exists"
    )
    overlap = host.lazyctr("network", "create", "--subnet", "10.89.60.128/25", "other", ok=False)
    assert_clean_error(overlap, "overlaps that of network busy")
    started(host, "--name", "user", "--network", "busy", "busybox", "sleep", "1000")
    in_use = host.lazyctr("network", "rm", "busy", ok=False)
    assert_clean_error(in_use, "network busy is in use by container user")
    assert in_use.code == 1
    host.lazyctr("rm", "-f", "user")
    host.lazyctr("network", "rm", "busy")
    assert not list((host.root / "networks").glob("busy*")) and host.leftovers() == NOTHING
    assert [p.name for p in (host.root / "containers").iterdir()] == []


def test_a_created_container_publishes_its_ports_when_started(host: Host) -> None:
    """`create -p` then `start`: the port is published by the start (held while it runs), and a start
    whose host port another holds meanwhile is refused in one line."""
    host.lazyctr("create", "--name", "later", "-p", "8081:80", "busybox", "sh", "-c", SERVE)
    host.lazyctr("create", "--name", "rival", "-p", "8081:80", "busybox", "true")  # free until a start
    assert host.fetch(f"http://{GATEWAY}:8081/") == ""  # created: nothing published yet
    host.lazyctr("start", "later")
    wait_for(lambda: host.fetch(f"http://{GATEWAY}:8081/") == PAGE, what="the page on the host's port")
    assert_clean_error(host.lazyctr("start", "rival", ok=False), "port is already allocated")
