"""The shaped link of benchmarks/link.py: spec parsing, namespaces that never outlive it, and a link that
carries TCP, delays by at least its RTT and loses about its share. Behaviour only: no speed is asserted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.link import (
    NETNS_DIR,
    LinkError,
    LinkSpec,
    LinkSpecError,
    netem_available,
    parse_link_spec,
    remove_stale_namespaces,
    shaped_link,
)
from tests.conftest import Result, assert_clean_error, require_tools

REPO = Path(__file__).resolve().parents[2]


def namespaces() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if NETNS_DIR.is_dir() else set()


def link_module(*args: str, timeout: float = 120) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.link", *args], cwd=REPO, capture_output=True, timeout=timeout
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("100mbit/20ms", LinkSpec(100_000_000, 0.020)),
        ("1gbit/2ms", LinkSpec(1_000_000_000, 0.002)),
        ("10mbit/50ms/1%", LinkSpec(10_000_000, 0.050, 0.01)),
        ("1.5Mbit/500us/0.5%", LinkSpec(1_500_000, 0.0005, 0.005)),
        ("unlimited/1s", LinkSpec(None, 1.0)),
        (" 64kbit / 0ms ", LinkSpec(64_000, 0.0)),
    ],
)
def test_parse_link_spec(text: str, spec: LinkSpec) -> None:
    parsed = parse_link_spec(text)
    assert parsed.rate == spec.rate
    assert parsed.rtt == pytest.approx(spec.rtt)
    assert parsed.loss == pytest.approx(spec.loss)
    assert parse_link_spec(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("100mbit", "expected RATE/RTT[/LOSS%]"),
        ("100mbit/20ms/1%/x", "expected RATE/RTT[/LOSS%]"),
        ("100mbit//1%", "expected RATE/RTT[/LOSS%]"),
        ("", "expected RATE/RTT[/LOSS%]"),
        ("100mb/20ms", "bad rate '100mb'"),
        ("100mbps/20ms", "bad rate '100mbps'"),
        ("fast/20ms", "bad rate 'fast'"),
        ("1bit/20ms", "below 8kbit"),
        ("100mbit/20", "bad delay '20'"),
        ("100mbit/-20ms", "bad delay '-20ms'"),
        ("100mbit/20min", "bad delay '20min'"),
        ("100mbit/11s", "more than 10 s"),
        ("100mbit/20ms/1", "bad loss '1'"),
        ("100mbit/20ms/100%", "below 100%"),
        ("100mbit/20ms/-1%", "bad loss '-1%'"),
    ],
)
def test_parse_link_spec_rejects(text: str, fragment: str) -> None:
    with pytest.raises(LinkSpecError) as excinfo:
        parse_link_spec(text)
    message = str(excinfo.value)
    assert fragment in message
    assert f"bad link spec {text!r}" in message


def test_bad_spec_on_the_command_line_is_one_clear_line() -> None:
    assert_clean_error(link_module("100mb/20ms"), "bad rate '100mb'")
    assert_clean_error(link_module("100mbit"), "expected RATE/RTT[/LOSS%]")


def test_bad_arguments_to_shaped_link() -> None:
    with pytest.raises(LinkSpecError, match="bad loss"), shaped_link("100mbit", "20ms", loss=1.5):
        pass
    with pytest.raises(LinkSpecError, match="bad delay"), shaped_link("100mbit", "twenty"):
        pass


@pytest.mark.privileged
def test_namespaces_exist_inside_and_are_removed_after() -> None:
    with shaped_link("100mbit", "10ms", emulator="tun") as link:
        assert {link.server_ns, link.client_ns} <= namespaces()
        assert link.server_ns != link.client_ns
        assert link.ip("server") == "10.77.0.1"
        assert link.ip("client") == "10.77.0.2"
        shown = link.run("client", ["ip", "-o", "addr", "show", "lzlink0"], capture_output=True, text=True)
        assert "10.77.0.2" in shown.stdout
        mtu = link.run("server", ["cat", "/sys/class/net/lzlink0/mtu"], capture_output=True, text=True)
        assert mtu.stdout.strip() == "1500"
        forwarder = link.forwarder
        assert forwarder is not None
        names = {link.server_ns, link.client_ns}
    assert not names & namespaces()
    assert forwarder.poll() is not None


@pytest.mark.privileged
def test_namespaces_are_removed_after_an_exception_inside() -> None:
    names: set[str] = set()
    with pytest.raises(RuntimeError, match="inside"), shaped_link("10mbit", "5ms", emulator="tun") as link:
        names = {link.server_ns, link.client_ns}
        raise RuntimeError("inside")
    assert names
    assert not names & namespaces()


@pytest.mark.privileged
def test_namespaces_are_removed_after_ctrl_c() -> None:
    # A transfer long enough to be interrupted: 30 MB at 1 Mbit/s.
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.link", "1mbit/10ms", "--emulator", "tun", "--size", "30000000"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # As from a terminal, even where pytest runs as a background job (SIGINT ignored, inherited).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    prefix = f"lzlink-{proc.pid}-"
    deadline = time.monotonic() + 30
    while not any(name.startswith(prefix) for name in namespaces()):
        assert time.monotonic() < deadline, "the link never came up"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    time.sleep(1.5)  # into the transfer
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert_clean_error(Result(proc.returncode, b"", err.decode()), "interrupted")
    assert not any(name.startswith(prefix) for name in namespaces())


@pytest.mark.privileged
def test_forwarder_ends_with_its_parent_and_stale_namespaces_are_swept() -> None:
    script = (
        "import sys, time\n"
        "from benchmarks.link import shaped_link\n"
        "with shaped_link('10mbit', '1ms', emulator='tun') as link:\n"
        "    print(link.forwarder.pid, link.server_ns, link.client_ns, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    pid, *names = proc.stdout.readline().decode().split()
    proc.kill()  # no clean-up runs
    proc.wait()
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
        assert time.monotonic() < deadline, "the forwarder outlived its parent"
        time.sleep(0.05)
    assert set(names) <= namespaces()
    assert set(names) <= set(remove_stale_namespaces())
    assert not set(names) & namespaces()


@pytest.mark.privileged
def test_tcp_across_the_link_between_processes() -> None:
    server_code = (
        "import socket, sys\n"
        "s = socket.create_server(('10.77.0.1', 7007))\n"
        "print('listening', flush=True)\n"
        "conn, peer = s.accept()\n"
        "data = b''\n"
        "while not data.endswith(b'\\n'):\n"
        "    data += conn.recv(65536)\n"
        "conn.sendall(('from ' + peer[0] + ': ' + data.decode()).encode())\n"
        "conn.close()\n"
    )
    client_code = (
        "import socket\n"
        "c = socket.create_connection(('10.77.0.1', 7007), timeout=10)\n"
        "c.sendall(b'x' * 200000 + b'\\n')\n"
        "reply = b''\n"
        "while chunk := c.recv(65536):\n"
        "    reply += chunk\n"
        "print(len(reply), reply[:20].decode())\n"
    )
    with shaped_link("50mbit", "4ms", emulator="tun") as link:
        server = link.popen("server", [sys.executable, "-c", server_code], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            assert server.stdout.readline() == "listening\n"
            client = link.run(
                "client", [sys.executable, "-c", client_code], capture_output=True, text=True, timeout=60
            )
            assert client.returncode == 0, client.stderr
            expected = [str(len("from 10.77.0.2: ") + 200_001), "from", "10.77.0.2:", "xxxx"]
            assert client.stdout.split() == expected
            assert server.wait(timeout=10) == 0
        finally:
            server.kill()
            server.wait()
        # Nothing listens on the client side's address in the server's namespace: it is across the link.
        probe = link.run("server", ["ip", "route", "get", "10.77.0.2"], capture_output=True, text=True)
        assert "lzlink0" in probe.stdout


@pytest.mark.privileged
def test_rtt_is_at_least_the_set_delay_and_bulk_data_arrives_whole() -> None:
    with shaped_link("20mbit", "30ms", emulator="tun") as link:
        rtts = link.measure_rtt(count=10)
        assert min(rtts) >= 0.030
        rate, transferred = link.measure_rate(size=2_000_000)
        assert transferred == 2_000_000
        assert rate > 0
        # A TCP handshake takes one round trip too.
        client = link.socket("client")
        listener = link.socket("server")
        with client, listener:
            listener.bind((link.server_ip, 0))
            listener.listen(1)
            start = time.perf_counter()
            client.connect((link.server_ip, listener.getsockname()[1]))
            assert time.perf_counter() - start >= 0.030


@pytest.mark.privileged
def test_loss_drops_roughly_its_share() -> None:
    sent = 2000
    with shaped_link(None, "0ms", loss=0.2, emulator="tun") as link:
        receiver = link.socket("server", socket.SOCK_DGRAM)
        sender = link.socket("client", socket.SOCK_DGRAM)
        with receiver, sender:
            receiver.bind((link.server_ip, 0))
            receiver.settimeout(1.0)
            received: list[int] = []

            def receive() -> None:
                try:
                    while True:
                        received.append(int(receiver.recv(64)))
                except TimeoutError:
                    pass

            thread = threading.Thread(target=receive)
            thread.start()
            for n in range(sent):
                sender.sendto(str(n).encode(), (link.server_ip, receiver.getsockname()[1]))
                if n % 50 == 49:
                    time.sleep(0.002)  # never more in flight than any queue on the way holds
            thread.join()
        stats = link.forwarder_stats()
    assert len(set(received)) == len(received)
    assert 0.65 * sent <= len(received) <= 0.92 * sent
    assert stats is not None
    assert stats["b_to_a"]["dropped_queue"] == 0


@pytest.mark.privileged
def test_verify_from_the_command_line() -> None:
    result = link_module("unlimited/2ms", "--emulator", "tun", "--size", "2000000")
    assert result.code == 0, result.stderr
    assert "link unlimited/2ms (userspace forwarder)" in result.out
    assert "RTT   set     2.00 ms  measured median" in result.out
    assert "TCP payload over 2.0 MB" in result.out


@pytest.mark.privileged
def test_netem_where_the_kernel_has_it() -> None:
    require_tools("tc")
    before = namespaces()
    if netem_available():
        with shaped_link("50mbit", "10ms", emulator="netem") as link:
            assert link.emulator == "netem"
            assert min(link.measure_rtt(count=5)) >= 0.010
    else:
        with pytest.raises(LinkError, match="no netem"), shaped_link("50mbit", "10ms", emulator="netem"):
            pass
        with shaped_link("50mbit", "10ms") as link:
            assert link.emulator == "userspace forwarder"
    assert namespaces() <= before
