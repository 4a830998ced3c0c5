"""Docker token auth (the distribution token spec): compact ES256 or RS256 JWTs, and the token endpoint.

`issue` signs a token granting `access` (a list of {"type", "name", "actions"}) for one service;
`verify` checks signature, algorithm, exp/nbf (with a small leeway), audience and, when asked,
issuer, and returns the granted access. `TokenEndpoint` is the aiohttp handler of a token
service: `GET ?service=&scope=repository:NAME:pull,push` with Basic credentials or anonymously.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fnmatch
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from registry.htpasswd import basic_user

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
Grant = dict[str, Any]  # {"type": "repository", "name": NAME, "actions": [...]}

EXPIRES_IN = 300
LEEWAY = 30  # seconds of clock skew tolerated on exp, nbf and iat
KNOWN_ACTIONS = ("pull", "push")


class InvalidToken(Exception):
    """A token that is malformed, badly signed, expired, not yet valid, or for another service."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise InvalidToken("bad base64url") from e


def load_private_key(path: Path) -> PrivateKey:
    """A PEM private key, EC P-256 (ES256) or RSA (RS256); anything else is refused."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not an unencrypted PEM private key") from e
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key
    raise ValueError(f"{path}: expected an EC P-256 or RSA (>= 2048 bits) private key")


def algorithm_of(key: PrivateKey | PublicKey) -> str:
    return "RS256" if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey) else "ES256"


def key_id(public_key: PublicKey) -> str:
    """The libtrust fingerprint docker/distribution uses as `kid`: sha256 of the DER SPKI, base32."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def issue(
    private_key: PrivateKey,
    *,
    issuer: str,
    subject: str,
    audience: str,
    access: list[Grant],
    expires_in: int = EXPIRES_IN,
    now: float | None = None,
) -> str:
    """A signed compact JWT granting `access` to `subject` for the service `audience`."""
    issued = int(time.time() if now is None else now)
    header = {"typ": "JWT", "alg": algorithm_of(private_key), "kid": key_id(private_key.public_key())}
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": issued + expires_in,
        "nbf": issued,
        "iat": issued,
        "jti": secrets.token_hex(16),
        "access": access,
    }
    signing_input = ".".join(
        _b64encode(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    return f"{signing_input}.{_b64encode(_sign(private_key, signing_input.encode()))}"


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants raw r || s, not DER


def _check_signature(key: PublicKey, data: bytes, signature: bytes) -> None:
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(signature) != 64:
                raise InvalidToken("bad ES256 signature length")
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as e:
        raise InvalidToken("bad signature") from e


def verify(
    token: str,
    public_key: PublicKey,
    *,
    audience: str,
    issuer: str | None = None,
    now: float | None = None,
    leeway: int = LEEWAY,
) -> list[Grant]:
    """The access a valid token grants; InvalidToken for anything wrong with it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("not a compact JWS")
    try:
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidToken("bad JSON") from e
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("header and claims must be JSON objects")
    if header.get("alg") != algorithm_of(public_key):  # no "none", no algorithm confusion
        raise InvalidToken(f"unexpected algorithm {header.get('alg')!r}")
    _check_signature(public_key, f"{parts[0]}.{parts[1]}".encode(), _b64decode(parts[2]))
    current = time.time() if now is None else now
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
    if not isinstance(exp, int | float) or isinstance(exp, bool) or current > exp + leeway:
        raise InvalidToken("expired")
    if nbf is not None and (not isinstance(nbf, int | float) or current < nbf - leeway):
        raise InvalidToken("not yet valid")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise InvalidToken("issued for another service")
    if issuer is not None and claims.get("iss") != issuer:
        raise InvalidToken("from another issuer")
    access = claims.get("access", [])
    if not isinstance(access, list):
        raise InvalidToken("access must be a list")
    return [
        grant
        for grant in access
        if isinstance(grant, dict)
        and isinstance(grant.get("type"), str)
        and isinstance(grant.get("name"), str)
        and isinstance(grant.get("actions"), list)
    ]


def subject_of(token: str) -> str | None:
    """The `sub` claim of a token that `verify` accepted (for logs: who made the request)."""
    try:
        claims = json.loads(_b64decode(token.split(".")[1]))
    except (ValueError, IndexError, UnicodeDecodeError):
        return None
    subject = claims.get("sub") if isinstance(claims, dict) else None
    return subject if isinstance(subject, str) and subject else None


def granted(access: list[Grant], name: str) -> set[str]:
    """The actions `access` grants on repository `name`."""
    actions: set[str] = set()
    for grant in access:
        if grant["type"] == "repository" and grant["name"] == name:
            actions.update(a for a in grant["actions"] if isinstance(a, str))
    return actions


def parse_scope(scope: str) -> Grant | None:
    """`repository:NAME:pull,push` -> a grant request; None for what we do not understand."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        return None
    return {"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]}


def _basic_user(authorization: str, users: dict[str, bytes]) -> str | None:
    """The user Basic credentials authenticate; raise HTTPUnauthorized for wrong ones."""
    user = basic_user(authorization, users)
    if user is None:
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="lazyctr-token"'})
    return user


@dataclass(frozen=True)
class TokenEndpoint:
    """The token endpoint: users get pull and push, anyone pull on the anonymous-pull patterns.

    Wrong credentials get 401; a scope the caller may not have is left out of the token (the
    registry then refuses the request), as the token spec says.
    """

    users: dict[str, bytes]
    private_key: PrivateKey
    service: str
    issuer: str
    anonymous_pull: tuple[str, ...] = ()
    expires_in: int = EXPIRES_IN

    def app(self) -> web.Application:
        """A tiny application serving just the token endpoint at /token (and / for convenience)."""
        app = web.Application()
        app.router.add_get("/token", self.handle)
        app.router.add_get("/", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        requested = request.query.get("service")
        if requested is not None and requested != self.service:
            raise web.HTTPBadRequest(text=f"unknown service {requested!r}")
        authorization = request.headers.get("Authorization")
        user = None
        if authorization:
            user = await asyncio.to_thread(_basic_user, authorization, self.users)
        access: list[Grant] = []
        for scope in " ".join(request.query.getall("scope", [])).split():
            grant = self._grant(scope, user)
            if grant is not None:
                access.append(grant)
        now = time.time()
        token = issue(
            self.private_key,
            issuer=self.issuer,
            subject=user or "",
            audience=self.service,
            access=access,
            expires_in=self.expires_in,
            now=now,
        )
        issued_at = datetime.fromtimestamp(int(now), UTC).isoformat().replace("+00:00", "Z")
        body = {"token": token, "access_token": token, "expires_in": self.expires_in, "issued_at": issued_at}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _grant(self, scope: str, user: str | None) -> Grant | None:
        """What the token grants of a requested scope: what `user` (None: anonymous) may have of it."""
        wanted = parse_scope(scope)
        if wanted is None or wanted["type"] != "repository":
            return None
        allowed: set[str] = set()
        if user is not None:
            allowed = set(KNOWN_ACTIONS)
        elif any(fnmatch.fnmatchcase(wanted["name"], pattern) for pattern in self.anonymous_pull):
            allowed = {"pull"}
        actions = [a for a in KNOWN_ACTIONS if a in wanted["actions"] and a in allowed]
        return {"type": "repository", "name": wanted["name"], "actions": actions} if actions else None
