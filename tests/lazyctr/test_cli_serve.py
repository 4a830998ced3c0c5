"""`lazyctr serve`: a registry that answers, stops cleanly, and refuses a bad address."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from tests.conftest import CliRunner, assert_clean_error, cli_command


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FirstReply:
    status: int
    headers: Message
    address: str  # where the registry listens, HOST:PORT


@contextlib.contextmanager
def serving(
    root: Path, *options: str, context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> Iterator[FirstReply]:
    """Run `lazyctr serve` on a free port of `host`; yield its first answer to GET /v2/ (any HTTP
    status).

    On leaving, the server gets SIGTERM and must stop cleanly (status 0).
    """
    address = f"{host}:{free_port()}"
    proc = subprocess.Popen(cli_command(root, "serve", "--addr", address, *options))
    url = f"{'https' if context else 'http'}://{address}/v2/"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as response:
                    reply = FirstReply(response.status, response.headers, address)
            except urllib.error.HTTPError as e:
                reply = FirstReply(e.code, e.headers, address)
            except OSError:
                assert time.monotonic() < deadline, "the registry never answered"
                time.sleep(0.1)
                continue
            break
        yield reply
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()


def test_serve_answers_and_stops_on_sigterm(root: Path) -> None:
    with serving(root) as reply:
        assert reply.status == 200
        assert reply.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert (root / "registry").is_dir()


def test_serve_refuses_a_bad_address(lazyctr: CliRunner) -> None:
    assert_clean_error(lazyctr("serve", "--addr", "nowhere", ok=False), "invalid address 'nowhere'")


def test_serve_with_htpasswd_requires_credentials(root: Path, tmp_path: Path) -> None:
    import bcrypt

    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode() + "\n")
    with serving(root, "--htpasswd", str(htpasswd)) as reply:
        assert reply.status == 401 and reply.headers["WWW-Authenticate"].startswith("Basic")


def test_serve_refuses_a_non_bcrypt_htpasswd(lazyctr: CliRunner, tmp_path: Path) -> None:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:plaintext\n")
    assert_clean_error(lazyctr("serve", "--htpasswd", str(htpasswd), ok=False), "htpasswd -B")


def self_signed(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_serve_over_tls(root: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    with serving(root, "--tls-cert", str(cert), "--tls-key", str(key), context=trusted) as reply:
        assert reply.status == 200


def test_serve_refuses_bad_tls_files(lazyctr: CliRunner, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    assert_clean_error(
        lazyctr("serve", "--tls-cert", str(junk), "--tls-key", str(junk), ok=False), "--tls-cert"
    )
    lone = lazyctr("serve", "--tls-cert", str(junk), ok=False)
    assert lone.code == 2 and "go together" in lone.stderr


def test_serve_s3_options_go_together(lazyctr: CliRunner) -> None:
    result = lazyctr("serve", "--s3", "http://127.0.0.1:1", ok=False)
    assert result.code == 2 and "--s3 and --s3-bucket go together" in result.stderr
