"""Authentication to a registry, by its 401 challenge (`WWW-Authenticate`).

`Basic` is answered with the credentials stored for the registry (registry/credentials.py, read
when first needed: anonymous pulls never touch the file), `Bearer` by asking the named token realm
for a token, with the credentials when there are any and anonymously otherwise. Tokens are kept
per scope for the client's life, and each repository remembers the scope last granted for it.
"""

from __future__ import annotations

import json
import re

import aiohttp
from yarl import URL

from registry.client import tls
from registry.client.errors import (
    RegistryAuthFailed,
    RegistryAuthRequired,
    RegistryClientError,
    unreachable,
)
from registry.client.transport import read_body
from registry.credentials import Credentials, lookup

TOKEN_LIMIT = 1 << 20
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3))
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def repository_of(url: URL) -> str:
    """The repository a /v2/<name>/... URL is about ('' for /v2/ itself)."""
    rest = url.path.removeprefix("/v2/")
    for marker in ("/manifests/", "/blobs/", "/tags/", "/referrers/"):
        if marker in rest:
            return rest.split(marker, 1)[0]
    return ""


class Authenticator:
    """The credentials and tokens for one registry (an `Authorizer` of the transport)."""

    def __init__(self, registry: str, credentials: Credentials | None, read_auth_file: bool) -> None:
        """`credentials` default to those stored for `registry` (unless `read_auth_file` is False)."""
        self.registry = registry
        self._credentials = credentials
        self._read_auth_file = read_auth_file and credentials is None
        self._basic = False  # the registry asked for basic auth: send it with every request
        self._tokens: dict[str, str] = {}  # bearer token by challenge scope
        self._scope_of_repo: dict[str, str] = {}  # the scope last granted for a repository

    @property
    def credentials(self) -> Credentials | None:
        if self._read_auth_file:
            self._read_auth_file = False
            self._credentials = lookup(self.registry)
        return self._credentials

    def authorization(self, url: URL) -> str | None:
        scope = self._scope_of_repo.get(repository_of(url), self._scope_of_repo.get(""))
        if scope is not None and scope in self._tokens:
            return f"Bearer {self._tokens[scope]}"
        if self._basic and self.credentials is not None:
            return self.credentials.basic()
        return None

    async def answer(self, challenge: str, url: URL, session: aiohttp.ClientSession) -> bool:
        """Get what the challenge asks for; True when the request is worth sending again."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self._basic or self.credentials is None:
                return False
            self._basic = True
            return True
        if scheme != "bearer" or not params.get("realm"):
            return False
        scope = params.get("scope", "")
        repo = repository_of(url)
        if scope in self._tokens and self._scope_of_repo.get(repo) != scope:
            self._scope_of_repo[repo] = scope  # a token we hold but did not send
            return True
        self._tokens[scope] = await self._fetch_token(session, params["realm"], params.get("service"), scope)
        self._scope_of_repo[repo] = scope
        return True

    async def _fetch_token(
        self, session: aiohttp.ClientSession, realm: str, service: str | None, scope: str
    ) -> str:
        query = {k: v for k, v in (("service", service), ("scope", scope)) if v}
        token_url = URL(realm).update_query(query)
        if token_url.scheme not in ("http", "https") or not token_url.host:
            raise RegistryClientError(f"{self.registry}: a token realm that is not an HTTP URL: {realm!r}")
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = self.credentials.basic()
        what = f"token from {token_url.with_query(None)}"
        try:
            # aiohttp follows the realm's redirects itself, with this context (one may lead to https).
            async with session.get(token_url, headers=headers, ssl=tls.verified_context()) as response:
                if response.status in (401, 403):
                    raise self.refused(what, True, "refused")
                if response.status != 200:
                    raise RegistryClientError(f"{self.registry}: {what}: HTTP {response.status}")
                body = await read_body(response.content, TOKEN_LIMIT)
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            raise unreachable(self.registry, e) from None
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryClientError(f"{self.registry}: {what}: an answer without a token")
        return token

    def refused(self, what: str, sent: bool, detail: str) -> RegistryAuthRequired:
        """Failed when we sent credentials we hold (`sent`), required when we had none to send."""
        if sent and self.credentials is not None:
            return RegistryAuthFailed(
                f"{self.registry}: {what}: credentials {detail}: run `lazyctr login {self.registry}` again"
            )
        return RegistryAuthRequired(
            f"{self.registry}: {what}: authentication required: run `lazyctr login {self.registry}`"
        )
