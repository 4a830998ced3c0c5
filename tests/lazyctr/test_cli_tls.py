"""The registry client over TLS: a registry that is not local is spoken to over https, verified
against the trust store (SSL_CERT_FILE, as OpenSSL reads it), never against aiohttp's own contexts,
which `registry.client` imports without trust roots (registry/client/tls.py)."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CliRunner, assert_clean_error
from tests.lazyctr.test_cli_push_pull import push_then_pull
from tests.lazyctr.test_cli_serve import self_signed, serving

# Not 127.0.0.1: the client speaks plain HTTP to localhost, as docker does.
HOST = "127.0.0.2"


@dataclass
class TlsRegistry:
    address: str  # HOST:PORT
    cert: Path  # its self-signed certificate, which is its own CA


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[TlsRegistry]:
    """`lazyctr serve` over TLS on HOST, with a certificate nobody trusts unless told to."""
    cert, key = self_signed(tmp_path, HOST)
    trusted = ssl.create_default_context(cafile=str(cert))
    options = ("--tls-cert", str(cert), "--tls-key", str(key))
    with serving(tmp_path / "server", *options, context=trusted, host=HOST) as reply:
        yield TlsRegistry(reply.address, cert)


def test_push_and_pull_over_tls_with_the_registry_trusted(
    lazyctr: CliRunner, busybox_tar: Path, tls_registry: TlsRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_registry.cert))
    push_then_pull(lazyctr, busybox_tar, tls_registry.address)


def test_a_registry_whose_certificate_is_not_trusted_is_refused_in_one_line(
    lazyctr: CliRunner, busybox_tar: Path, tls_registry: TlsRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    ref = f"{tls_registry.address}/test/busybox:latest"
    lazyctr("import", str(busybox_tar), ref)
    assert_clean_error(lazyctr("push", ref, ok=False), "certificate")
    assert_clean_error(lazyctr("pull", ref, ok=False), "certificate")


def test_the_client_imports_aiohttp_without_trust_and_keeps_the_trust_paths(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, HOST)
    probe = f"""
import os, ssl
import registry.client
import aiohttp.connector as connector
from registry.client import tls
from yarl import URL
assert connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"] == 0
assert os.environ["SSL_CERT_FILE"] == {str(cert)!r}
assert "SSL_CERT_DIR" not in os.environ
assert tls.for_url(URL("https://example.invalid/v2/")).cert_store_stats()["x509_ca"] == 1
assert tls.for_url(URL("http://example.invalid/v2/")) is True
"""
    env = {"PATH": "/usr/bin:/bin", "SSL_CERT_FILE": str(cert)}
    subprocess.run([sys.executable, "-c", probe], check=True, env=env, cwd=Path(__file__).parents[2])
