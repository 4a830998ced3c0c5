"""`lazyctr serve`: a registry that answers, stops cleanly, and refuses a bad address."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.conftest import CliRunner, assert_clean_error, cli_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_and_stops_on_sigterm(root: Path) -> None:
    port = free_port()
    command = cli_command(root, "serve", "--addr", f"127.0.0.1:{port}")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as response:
                    assert response.status == 200
                    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
                    break
            except OSError:
                assert time.monotonic() < deadline, "the registry never answered"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert (root / "registry").is_dir()
    finally:
        proc.kill()


def test_serve_refuses_a_bad_address(lazyctr: CliRunner) -> None:
    assert_clean_error(lazyctr("serve", "--addr", "nowhere", ok=False), "invalid address 'nowhere'")
