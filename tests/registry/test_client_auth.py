"""Client authentication: auth files, basic and bearer challenges, redirects, login and logout."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from aiohttp import web

from registry.auth import Access
from registry.client import RegistryAuthFailed, RegistryAuthRequired, RegistryClient
from registry.credentials import Credentials, lookup
from registry.htpasswd import load_htpasswd
from tests.conftest import CliRunner, assert_clean_error
from tests.registry.conftest import Registry, sha256


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def auth_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """REGISTRY_AUTH_FILE for this process and the CLI subprocesses (not yet created)."""
    path = tmp_path / "auth" / "auth.json"
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    return path


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Registry]:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{hashed}\n")
    server = Registry(tmp_path / "registry", access=Access(load_htpasswd(htpasswd)))
    yield server
    server.stop()


def test_credentials_are_read_like_podman_and_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    docker = tmp_path / "home" / ".docker" / "config.json"
    docker.parent.mkdir(parents=True)
    docker.write_text(
        json.dumps(
            {
                "auths": {
                    "https://old.example:5000/v1/": {"auth": b64("bob:pw:with:colons")},
                    "both.example": {"auth": b64("docker:d")},
                }
            }
        )
    )
    podman = tmp_path / "run" / "containers" / "auth.json"
    podman.parent.mkdir(parents=True)
    podman.write_text(json.dumps({"auths": {"both.example": {"auth": b64("podman:p")}}}))
    assert lookup("old.example:5000") == Credentials("bob", "pw:with:colons")
    assert lookup("both.example") == Credentials("podman", "p")  # podman's file first
    assert lookup("other.example") is None
    override = tmp_path / "override.json"
    override.write_text(json.dumps({"auths": {"both.example": {"auth": b64("over:o")}}}))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(override))
    assert lookup("both.example") == Credentials("over", "o")
    assert lookup("old.example:5000") is None  # the override is the only file read


def test_push_and_pull_with_credentials_from_the_auth_file(
    guarded: Registry, auth_file: Path, lazyctr: CliRunner, busybox_tar: Path
) -> None:
    auth_file.parent.mkdir()
    auth_file.write_text(
        json.dumps({"auths": {f"https://{guarded.address}/v1/": {"auth": b64("alice:s3cret")}}})
    )
    image_id = lazyctr("import", str(busybox_tar), "busybox").out.strip()
    target = f"{guarded.address}/team/busybox:latest"
    lazyctr("push", "busybox", target)
    lazyctr("rmi", "busybox")
    assert lazyctr("pull", target).out.strip() == image_id


def test_pull_without_or_with_wrong_credentials_is_a_clean_error(
    guarded: Registry, auth_file: Path, lazyctr: CliRunner
) -> None:
    target = f"{guarded.address}/team/busybox:latest"
    assert_clean_error(lazyctr("pull", target, ok=False), f"lazyctr login {guarded.address}")
    auth_file.parent.mkdir()
    auth_file.write_text(json.dumps({"auths": {guarded.address: {"auth": b64("alice:wrong")}}}))
    assert_clean_error(lazyctr("pull", target, ok=False), "credentials refused")


def test_login_then_logout(guarded: Registry, auth_file: Path, lazyctr: CliRunner, busybox_tar: Path) -> None:
    auth_file.parent.mkdir()
    other = {"auths": {"elsewhere.example": {"auth": b64("x:y")}}}
    auth_file.write_text(json.dumps(other))
    failed = lazyctr("login", guarded.address, "-u", "alice", "--password-stdin", input=b"nope\n", ok=False)
    assert_clean_error(failed, "login failed")
    assert json.loads(auth_file.read_text()) == other  # unchanged

    done = lazyctr("login", guarded.address, "-u", "alice", "--password-stdin", input=b"s3cret\n")
    assert done.out.strip() == "Login Succeeded"
    assert auth_file.stat().st_mode & 0o777 == 0o600
    auths = json.loads(auth_file.read_text())["auths"]
    assert auths == {**other["auths"], guarded.address: {"auth": b64("alice:s3cret")}}
    lazyctr("import", str(busybox_tar), "busybox")
    lazyctr("push", "busybox", f"{guarded.address}/team/busybox:latest")

    lazyctr("logout", guarded.address)
    assert json.loads(auth_file.read_text()) == other
    assert_clean_error(lazyctr("logout", guarded.address, ok=False), "not logged in")
    pushed = lazyctr("push", "busybox", f"{guarded.address}/team/busybox:v2", ok=False)
    assert_clean_error(pushed, "lazyctr login")


def test_login_with_p_and_a_wrong_user(guarded: Registry, auth_file: Path, lazyctr: CliRunner) -> None:
    assert_clean_error(
        lazyctr("login", guarded.address, "-u", "bob", "-p", "s3cret", ok=False), "login failed"
    )
    assert not auth_file.exists()
    assert lazyctr("login", guarded.address, "-u", "alice", "-p", "s3cret").out.strip() == "Login Succeeded"


# -- bearer tokens, against a small registry stand-in -------------------------------------------------

BLOB = b"the blob's bytes"


class BearerRegistry:
    """A token service, a registry that wants its tokens, and a storage host it redirects blobs to."""

    def __init__(self) -> None:
        self.token_requests: list[tuple[str | None, str | None]] = []  # (scope, Authorization)
        self.storage_authorization: list[str | None] = []
        self.runners: list[web.AppRunner] = []

    async def start(self) -> None:
        self.auth_port = await self._serve(self._auth_app())
        self.registry_port = await self._serve(self._registry_app())

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        server = runner.server
        assert server is not None and site._server is not None
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    def _auth_app(self) -> web.Application:
        async def token(request: web.Request) -> web.Response:
            authorization = request.headers.get("Authorization")
            self.token_requests.append((request.query.get("scope"), authorization))
            if request.query.get("service") != "test-registry":
                return web.Response(status=400)
            if authorization != "Basic " + b64("alice:s3cret"):
                return web.Response(status=401)
            scope = request.query.get("scope", "")
            return web.json_response(
                {"token": f"t:{scope}"} if "push" in scope else {"access_token": f"t:{scope}"}
            )

        async def storage(request: web.Request) -> web.Response:
            self.storage_authorization.append(request.headers.get("Authorization"))
            return web.Response(body=BLOB)

        app = web.Application()
        app.router.add_get("/token", token)
        app.router.add_get("/storage/blob", storage)
        return app

    def _registry_app(self) -> web.Application:
        def challenge(request: web.Request, scope: str | None) -> web.Response | None:
            if request.headers.get("Authorization") == f"Bearer t:{scope or ''}":
                return None
            realm = f"http://127.0.0.1:{self.auth_port}/token"
            params = f'realm="{realm}",service="test-registry"' + (f',scope="{scope}"' if scope else "")
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": None}]},
                status=401,
                headers={"WWW-Authenticate": f"Bearer {params}"},
            )

        async def ping(request: web.Request) -> web.Response:
            return challenge(request, None) or web.json_response({})

        async def blob(request: web.Request) -> web.StreamResponse:
            denied = challenge(request, "repository:team/app:pull")
            if denied is not None:
                return denied
            raise web.HTTPTemporaryRedirect(f"http://127.0.0.1:{self.auth_port}/storage/blob")

        app = web.Application()
        app.router.add_get("/v2/", ping)
        app.router.add_get("/v2/team/app/blobs/{digest}", blob)
        return app


def run_bearer(test: object) -> None:
    async def main() -> None:
        server = BearerRegistry()
        await server.start()
        try:
            await test(server)  # type: ignore[operator]
        finally:
            await server.stop()

    asyncio.run(main())


def test_bearer_tokens_are_fetched_cached_and_kept_from_other_hosts() -> None:
    async def test(server: BearerRegistry) -> None:
        address = f"127.0.0.1:{server.registry_port}"
        alice = Credentials("alice", "s3cret")
        async with RegistryClient(address, credentials=alice) as client:
            await client.login()
            for _ in range(3):
                dest = io.BytesIO()
                assert await client.get_blob("team/app", sha256(BLOB), dest, len(BLOB)) == len(BLOB)
                assert dest.getvalue() == BLOB
        scopes = [scope for scope, _ in server.token_requests]
        assert scopes == [None, "repository:team/app:pull"]  # one token per scope, then cached
        assert all(auth == alice.basic() for _, auth in server.token_requests)
        assert server.storage_authorization == [None, None, None]  # never sent to the storage host

        async with RegistryClient(address, credentials=Credentials("alice", "wrong")) as client:
            with pytest.raises(RegistryAuthFailed, match="login failed"):
                await client.login()
        async with RegistryClient(address, read_auth_file=False) as client:
            with pytest.raises(RegistryAuthRequired, match=f"lazyctr login {address}"):
                await client.get_blob("team/app", sha256(BLOB), io.BytesIO())

    run_bearer(test)
