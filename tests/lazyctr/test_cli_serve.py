"""`lazyctr serve`: a registry that answers, stops cleanly, and refuses a bad address."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
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


def test_serve_with_htpasswd_requires_credentials(root: Path, tmp_path: Path) -> None:
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    port = free_port()
    proc = subprocess.Popen(
        cli_command(root, "serve", "--addr", f"127.0.0.1:{port}", "--htpasswd", str(htpasswd))
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                raise AssertionError("answered without credentials")
            except urllib.error.HTTPError as e:
                assert e.code == 401 and e.headers["WWW-Authenticate"].startswith("Basic")
                break
            except OSError:
                assert time.monotonic() < deadline, "the registry never answered"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()


def test_serve_refuses_a_non_bcrypt_htpasswd(lazyctr: CliRunner, tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:plaintext\n")
    assert_clean_error(lazyctr("serve", "--htpasswd", str(htpasswd), ok=False), "htpasswd -B")
