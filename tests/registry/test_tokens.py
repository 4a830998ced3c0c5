"""Docker token auth: JWTs, the token endpoint, the registry's bearer challenge, and push/pull through it."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from registry.auth import Access
from registry.tokens import (
    Grant,
    InvalidToken,
    PrivateKey,
    TokenEndpoint,
    issue,
    key_id,
    load_private_key,
    verify,
)
from tests.conftest import CliRunner, assert_clean_error
from tests.registry.conftest import Registry, free_port, sha256

SERVICE = "test-registry"
ISSUER = "test-issuer"
PULL_PUSH: list[Grant] = [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def sign(key: PrivateKey, access: list[Grant], now: float | None = None) -> str:
    return issue(key, issuer=ISSUER, subject="alice", audience=SERVICE, access=access, now=now)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_a_token_round_trips(kind: str, ec_key: PrivateKey, rsa_key: PrivateKey) -> None:
    key = ec_key if kind == "ec" else rsa_key
    token = sign(key, PULL_PUSH)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {
        "typ": "JWT",
        "alg": "ES256" if kind == "ec" else "RS256",
        "kid": key_id(key.public_key()),
    }
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert {"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "access"} <= set(claims)
    assert claims["exp"] - claims["iat"] == 300
    assert verify(token, key.public_key(), audience=SERVICE, issuer=ISSUER) == PULL_PUSH


def test_bad_tokens_are_refused(ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey) -> None:
    public = ec_key.public_key()
    token = sign(ec_key, PULL_PUSH)
    head, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["access"][0]["name"] = "other/app"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    cases = {
        "bad signature": f"{head}.{forged}.{signature}",
        "unexpected algorithm": f"{none_header}.{payload}.",
        "not a compact JWS": "abc.def",
        "expired": sign(ec_key, PULL_PUSH, now=time.time() - 400),
        "not yet valid": sign(ec_key, PULL_PUSH, now=time.time() + 400),
    }
    for message, bad in cases.items():
        with pytest.raises(InvalidToken, match=message):
            verify(bad, public, audience=SERVICE)
    with pytest.raises(InvalidToken, match="another service"):
        verify(token, public, audience="elsewhere")
    with pytest.raises(InvalidToken, match="another issuer"):
        verify(token, public, audience=SERVICE, issuer="someone")
    with pytest.raises(InvalidToken, match="bad signature"):
        verify(token, ec.generate_private_key(ec.SECP256R1()).public_key(), audience=SERVICE)
    with pytest.raises(InvalidToken, match="unexpected algorithm"):  # an ES256 token against an RSA key
        verify(token, rsa_key.public_key(), audience=SERVICE)
    # within the leeway, a little skew is fine
    assert verify(sign(ec_key, PULL_PUSH, now=time.time() - 310), public, audience=SERVICE)


class TokenServer:
    """The token endpoint of a `TokenEndpoint` on 127.0.0.1 in a background thread."""

    def __init__(self, app: web.Application) -> None:
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def get(self, query: str, authorization: str | None = None) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(f"{self.realm}?{query}")
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, {}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode() + "\n")
    return path


@pytest.fixture
def token_server(ec_key: ec.EllipticCurvePrivateKey) -> Iterator[TokenServer]:
    users = {"alice": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4))}
    server = TokenServer(TokenEndpoint(users, ec_key, SERVICE, ISSUER, ("public/*",)).app())
    yield server
    server.stop()


@pytest.fixture
def guarded(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, token_server: TokenServer
) -> Iterator[Registry]:
    access = Access.with_tokens(token_server.realm, SERVICE, ec_key.public_key(), issuer=ISSUER)
    server = Registry(tmp_path / "registry", access=access)
    yield server
    server.stop()


def test_the_token_endpoint_grants_per_user_and_pattern(
    token_server: TokenServer, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    public = ec_key.public_key()
    scopes = f"service={SERVICE}&scope=repository:team/app:pull,push&scope=repository:public/x:pull,push"
    status, body = token_server.get(scopes, basic("alice", "s3cret"))
    assert status == 200 and body["token"] == body["access_token"] and body["expires_in"] == 300
    assert str(body["issued_at"]).endswith("Z")
    assert verify(str(body["token"]), public, audience=SERVICE, issuer=ISSUER) == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "public/x", "actions": ["pull", "push"]},
    ]
    status, body = token_server.get(scopes)  # anonymous: pull on public/* only
    assert status == 200
    assert verify(str(body["token"]), public, audience=SERVICE) == [
        {"type": "repository", "name": "public/x", "actions": ["pull"]}
    ]
    assert token_server.get(scopes, basic("alice", "wrong"))[0] == 401
    assert token_server.get(scopes, basic("mallory", "s3cret"))[0] == 401
    assert token_server.get("service=elsewhere&scope=repository:team/app:pull")[0] == 400


def test_the_registry_challenges_with_the_scope_the_request_needs(
    guarded: Registry, token_server: TokenServer
) -> None:
    reply = guarded.request("GET", "/v2/")  # /v2/ itself: no scope
    assert reply.status == 401 and reply.error_code == "UNAUTHORIZED"
    assert reply.headers["WWW-Authenticate"] == f'Bearer realm="{token_server.realm}",service="{SERVICE}"'
    reply = guarded.request("GET", "/v2/team/app/tags/list")
    assert reply.headers["WWW-Authenticate"].endswith(f'service="{SERVICE}",scope="repository:team/app:pull"')
    reply = guarded.request("POST", "/v2/team/app/blobs/uploads/")
    assert reply.headers["WWW-Authenticate"].endswith('scope="repository:team/app:pull,push"')
    reply = guarded.request("GET", "/v2/team/app/tags/list", headers=bearer("not.a.token"))
    assert reply.status == 401 and 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


def test_a_pull_token_pulls_but_does_not_push(guarded: Registry, ec_key: ec.EllipticCurvePrivateKey) -> None:
    pull_only: list[Grant] = [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    pull = bearer(sign(ec_key, pull_only))
    assert guarded.request("GET", "/v2/", headers=pull).status == 200
    assert guarded.request("GET", "/v2/team/app/tags/list", headers=pull).error_code == "NAME_UNKNOWN"
    assert guarded.request("GET", "/v2/other/app/tags/list", headers=pull).status == 401
    reply = guarded.request("POST", "/v2/team/app/blobs/uploads/", headers=pull)
    assert reply.status == 401
    challenge = reply.headers["WWW-Authenticate"]
    assert 'scope="repository:team/app:pull,push"' in challenge and 'error="insufficient_scope"' in challenge
    both = bearer(sign(ec_key, PULL_PUSH))
    assert guarded.request("POST", "/v2/team/app/blobs/uploads/", headers=both).status == 202
    wrong_audience = issue(ec_key, issuer=ISSUER, subject="a", audience="elsewhere", access=PULL_PUSH)
    assert guarded.request("GET", "/v2/team/app/tags/list", headers=bearer(wrong_audience)).status == 401


def test_push_and_pull_through_the_token_service(
    guarded: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    lazyctr: CliRunner,
    busybox_tar: Path,
) -> None:
    auth_file = tmp_path / "auth.json"
    auth = base64.b64encode(b"alice:s3cret").decode()
    auth_file.write_text(json.dumps({"auths": {guarded.address: {"auth": auth}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
    image_id = lazyctr("import", str(busybox_tar), "busybox").out.strip()
    target = f"{guarded.address}/team/busybox:latest"
    lazyctr("push", "busybox", target)
    lazyctr("rmi", "busybox")
    assert lazyctr("pull", target).out.strip() == image_id
    auth_file.write_text(json.dumps({"auths": {}}))  # anonymous: no pull token for team/*
    assert_clean_error(lazyctr("pull", target, ok=False), guarded.address)


def write_key(path: Path, key: PrivateKey) -> Path:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def test_load_private_key_takes_ec_and_rsa_pem(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert isinstance(load_private_key(write_key(tmp_path / "ec.pem", ec_key)), ec.EllipticCurvePrivateKey)
    assert isinstance(load_private_key(write_key(tmp_path / "rsa.pem", rsa_key)), rsa.RSAPrivateKey)
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ValueError, match="PEM private key"):
        load_private_key(tmp_path / "junk.pem")
    with pytest.raises(ValueError, match="P-256"):
        load_private_key(write_key(tmp_path / "p384.pem", ec.generate_private_key(ec.SECP384R1())))


def test_serve_with_a_token_key_needs_a_realm(
    lazyctr: CliRunner, tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key = str(write_key(tmp_path / "key.pem", ec_key))
    result = lazyctr("serve", "--token-key", key, ok=False)
    assert result.code == 2 and "--token-key needs --token-realm" in result.stderr  # a usage error


@pytest.mark.parametrize("source", ["&from=secret/app", ""], ids=["from", "without-from"])
def test_a_mount_needs_pull_on_its_source(
    guarded: Registry, ec_key: ec.EllipticCurvePrivateKey, source: str
) -> None:
    """Named with `from` or found without it (OCI 1.1), a blob is mounted only from a repository
    the token may pull."""
    data = b"a secret layer" * 100
    digest = sha256(data)
    secret: list[Grant] = [{"type": "repository", "name": "secret/app", "actions": ["pull", "push"]}]
    reply = guarded.request(
        "POST", f"/v2/secret/app/blobs/uploads/?digest={digest}", data, bearer(sign(ec_key, secret))
    )
    assert reply.status == 201
    mount = f"/v2/team/app/blobs/uploads/?mount={digest}{source}"
    # A push token for team/app alone: no mount, an ordinary upload instead (202), as the spec says.
    reply = guarded.request("POST", mount, headers=bearer(sign(ec_key, PULL_PUSH)))
    assert reply.status == 202 and "/blobs/uploads/" in reply.headers["Location"]
    head = guarded.request("HEAD", f"/v2/team/app/blobs/{digest}", headers=bearer(sign(ec_key, PULL_PUSH)))
    assert head.status == 404
    # With pull on the source as well, the blob is mounted.
    both: list[Grant] = [*PULL_PUSH, {"type": "repository", "name": "secret/app", "actions": ["pull"]}]
    reply = guarded.request("POST", mount, headers=bearer(sign(ec_key, both)))
    assert reply.status == 201 and reply.headers["Location"] == f"/v2/team/app/blobs/{digest}"
    head = guarded.request("HEAD", f"/v2/team/app/blobs/{digest}", headers=bearer(sign(ec_key, PULL_PUSH)))
    assert head.status == 200
    # A source the token names but that is malformed is refused as the name it is.
    reply = guarded.request(
        "POST", f"/v2/team/app/blobs/uploads/?mount={digest}&from=../x", headers=bearer(sign(ec_key, both))
    )
    assert (reply.status, reply.error_code) == (400, "NAME_INVALID")
