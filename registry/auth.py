"""Who may use the registry: htpasswd (bcrypt) basic auth, and anonymous pull by repository pattern.

A request without valid credentials gets 401 UNAUTHORIZED with `WWW-Authenticate: Basic`, unless
it only reads (GET, HEAD) a repository that matches an anonymous-pull pattern.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
from pathlib import Path

import bcrypt

from registry.errors import Unauthorized
from storage.errors import BadArchive

READ_METHODS = ("GET", "HEAD")


def load_htpasswd(path: Path) -> dict[str, bytes]:
    """`user:bcrypt-hash` lines (as `htpasswd -B` writes them); anything else is refused."""
    users: dict[str, bytes] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        user, colon, hashed = line.strip().partition(":")
        if not colon or not user or not hashed.startswith(("$2y$", "$2b$", "$2a$")):
            raise BadArchive(f"{path}:{number}: expected user:bcrypt-hash (htpasswd -B)")
        users[user] = ("$2b$" + hashed[4:]).encode()  # $2y$ is what Apache writes for $2b$
    return users


class Access:
    def __init__(
        self, users: dict[str, bytes], anonymous_pull: tuple[str, ...] = (), required: bool = True
    ) -> None:
        self.users = users
        self.anonymous_pull = anonymous_pull
        self.required = required

    @classmethod
    def anyone(cls) -> Access:
        """No authentication: everyone may do everything (the default, as docker-registry's)."""
        return cls({}, required=False)

    def check(self, path: str, method: str, authorization: str | None) -> None:
        """Return if the request may go on; raise Unauthorized otherwise."""
        if not self.required or self._authenticated(authorization):
            return
        repository = _repository(path)
        if (
            method in READ_METHODS
            and repository
            and any(fnmatch.fnmatchcase(repository, pattern) for pattern in self.anonymous_pull)
        ):
            return
        raise Unauthorized("authentication required")

    def _authenticated(self, authorization: str | None) -> bool:
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        return hashed is not None and bcrypt.checkpw(password.encode(), hashed)


def _repository(path: str) -> str:
    """The repository a /v2/<name>/... path is about ('' for /v2/ itself)."""
    rest = path.removeprefix("/v2/")
    for marker in ("/manifests/", "/blobs/", "/tags/", "/referrers/"):
        if marker in rest:
            return rest.split(marker, 1)[0]
    return ""
