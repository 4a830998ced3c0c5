"""htpasswd users (bcrypt, as `htpasswd -B` writes them) and checking Basic credentials against them."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import bcrypt

from storage.errors import BadArchive


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


def basic_user(authorization: str | None, users: dict[str, bytes]) -> str | None:
    """The user that `Authorization: Basic ...` authenticates, or None (absent, malformed, wrong)."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    hashed = users.get(user)
    return user if hashed is not None and bcrypt.checkpw(password.encode(), hashed) else None
