"""Who may use the registry: htpasswd (bcrypt) basic auth or Docker bearer tokens, and anonymous pull.

A request without valid credentials gets 401 UNAUTHORIZED with `WWW-Authenticate: Basic`, unless
it only reads (GET, HEAD) a repository that matches an anonymous-pull pattern.

In token mode (`Access.with_tokens`) the challenge is `Bearer realm=...,service=...,scope=...`
(scope `repository:NAME:pull` for GET/HEAD, `repository:NAME:pull,push` otherwise, none for
/v2/ itself); a valid token that lacks the actions gets 401 with `error="insufficient_scope"`.
"""

from __future__ import annotations

import fnmatch

from registry.errors import Unauthorized
from registry.htpasswd import basic_user
from registry.tokens import InvalidToken, PublicKey, granted, subject_of, verify

READ_METHODS = ("GET", "HEAD")


class Access:
    def __init__(
        self, users: dict[str, bytes], anonymous_pull: tuple[str, ...] = (), required: bool = True
    ) -> None:
        self.users = users
        self.anonymous_pull = anonymous_pull
        self.required = required
        self.tokens: TokenConfig | None = None

    @classmethod
    def anyone(cls) -> Access:
        """No authentication: everyone may do everything (the default, as docker-registry's)."""
        return cls({}, required=False)

    @classmethod
    def with_tokens(
        cls,
        realm: str,
        service: str,
        public_key: PublicKey,
        anonymous_pull: tuple[str, ...] = (),
        issuer: str | None = None,
    ) -> Access:
        """Bearer tokens from the token service at `realm`, verified with its `public_key`."""
        access = cls({}, anonymous_pull)
        access.tokens = TokenConfig(realm, service, public_key, issuer)
        return access

    def check(self, path: str, method: str, authorization: str | None) -> str | None:
        """The user the request comes from (None: anonymous) if it may go on; raise Unauthorized otherwise."""
        if not self.required:
            return None
        repository = _repository(path)
        if method in READ_METHODS and self._anyone_pulls(repository):
            return None
        if self.tokens is not None:
            return self.tokens.check(repository, method, authorization)
        user = basic_user(authorization, self.users)
        if user is None:
            raise Unauthorized("authentication required")
        return user

    def may_pull(self, repository: str, authorization: str | None) -> bool:
        """Whether the request's credentials (already checked by `check`) may pull `repository`.

        A cross-repository mount needs this for its source: in token mode a push token for one
        repository says nothing about another. htpasswd users may pull every repository.
        """
        if not self.required or self._anyone_pulls(repository) or self.tokens is None:
            return True
        try:
            self.tokens.check(repository, "GET", authorization)
        except Unauthorized:
            return False
        return True

    def _anyone_pulls(self, repository: str) -> bool:
        return bool(repository) and any(fnmatch.fnmatchcase(repository, p) for p in self.anonymous_pull)


class TokenConfig:
    """Where tokens come from and how to check them."""

    def __init__(self, realm: str, service: str, public_key: PublicKey, issuer: str | None) -> None:
        self.realm = realm
        self.service = service
        self.public_key = public_key
        self.issuer = issuer

    def check(self, repository: str, method: str, authorization: str | None) -> str | None:
        """The token's subject if it grants what the request needs; raise Unauthorized otherwise."""
        needed = ("pull",) if method in READ_METHODS else ("pull", "push")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self._challenge(repository, needed, "authentication required")
        try:
            access = verify(token.strip(), self.public_key, audience=self.service, issuer=self.issuer)
        except InvalidToken as e:
            raise self._challenge(repository, needed, f"invalid token: {e}", "invalid_token") from None
        if repository and not set(needed) <= granted(access, repository):
            raise self._challenge(repository, needed, "the token does not grant this", "insufficient_scope")
        return subject_of(token.strip())

    def _challenge(
        self, repository: str, needed: tuple[str, ...], message: str, error: str | None = None
    ) -> Unauthorized:
        params = {"realm": self.realm, "service": self.service}
        if repository:
            params["scope"] = f"repository:{repository}:{','.join(needed)}"
        if error:
            params["error"] = error
        challenge = "Bearer " + ",".join(f'{k}="{_quote(v)}"' for k, v in params.items())
        unauthorized = Unauthorized(message)
        unauthorized.headers = {"WWW-Authenticate": challenge}  # shadows the class's Basic challenge
        return unauthorized


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _repository(path: str) -> str:
    """The repository a /v2/<name>/... path is about ('' for /v2/ itself)."""
    rest = path.removeprefix("/v2/")
    for marker in ("/manifests/", "/blobs/", "/tags/", "/referrers/"):
        if marker in rest:
            return rest.split(marker, 1)[0]
    return ""
