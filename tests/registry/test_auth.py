"""htpasswd basic auth and anonymous pull by repository pattern."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from registry.auth import Access
from registry.htpasswd import load_htpasswd
from storage.errors import BadArchive
from tests.registry.conftest import Registry


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1)
    path = tmp_path / "htpasswd"
    path.write_text(f"# users\nalice:{hashed}\n")
    return path


@pytest.fixture
def guarded(tmp_path: Path, htpasswd: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry", access=Access(load_htpasswd(htpasswd), ("public/*",)))
    yield server
    server.stop()


def test_no_or_wrong_credentials_get_401_with_a_basic_challenge(guarded: Registry) -> None:
    for headers in ({}, basic("alice", "wrong"), basic("bob", "s3cret"), {"Authorization": "Basic !!!"}):
        reply = guarded.request("GET", "/v2/", headers=headers)
        assert reply.status == 401 and reply.error_code == "UNAUTHORIZED"
        assert reply.headers["WWW-Authenticate"] == 'Basic realm="lazyctr"'


def test_the_right_credentials_push_and_pull(guarded: Registry) -> None:
    assert guarded.request("GET", "/v2/", headers=basic("alice", "s3cret")).status == 200
    reply = guarded.request("POST", "/v2/team/app/blobs/uploads/", headers=basic("alice", "s3cret"))
    assert reply.status == 202


def test_anonymous_pull_is_allowed_only_where_the_pattern_says(guarded: Registry) -> None:
    assert guarded.request("GET", "/v2/public/app/tags/list").error_code == "NAME_UNKNOWN"  # got through
    assert guarded.request("GET", "/v2/private/app/tags/list").status == 401
    assert guarded.request("POST", "/v2/public/app/blobs/uploads/").status == 401  # pull only


def test_htpasswd_other_than_bcrypt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    with pytest.raises(BadArchive, match="htpasswd -B"):
        load_htpasswd(path)
