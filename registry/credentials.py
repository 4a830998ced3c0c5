"""Registry credentials, kept where podman and docker keep theirs.

Read from `$REGISTRY_AUTH_FILE` when set (as podman does), else podman's
`${XDG_RUNTIME_DIR}/containers/auth.json`, then docker's `~/.docker/config.json`. Both hold
`{"auths": {"host[:port]": {"auth": base64("user:password")}}}`; keys written by older docker
(`https://host/v1/`) name the same registry. `lazyctr login` writes podman's file (or
`$REGISTRY_AUTH_FILE`), mode 0600, keeping every other entry.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.errors import StorageError
from storage.files import atomic_write


class CredentialsError(StorageError):
    """An auth file that cannot be read or written."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        """The value of an `Authorization` header for HTTP basic auth."""
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def __repr__(self) -> str:  # never a password in a log or a traceback
        return f"Credentials(username={self.username!r})"


def podman_auth_file() -> Path:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        return Path(runtime_dir) / "containers" / "auth.json"
    return Path(f"/run/containers/{os.getuid()}/auth.json")


def docker_config_file() -> Path:
    return Path(os.path.expanduser("~")) / ".docker" / "config.json"


def auth_files() -> list[Path]:
    """The files credentials are read from, first match wins."""
    override = os.environ.get("REGISTRY_AUTH_FILE")
    if override:
        return [Path(override)]
    return [podman_auth_file(), docker_config_file()]


def login_file() -> Path:
    """The file `lazyctr login` writes."""
    override = os.environ.get("REGISTRY_AUTH_FILE")
    return Path(override) if override else podman_auth_file()


def normalize_key(key: str) -> str:
    """`https://host:port/v1/` -> `host:port`: the registry an `auths` key names."""
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    return key.split("/", 1)[0]


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise CredentialsError(f"cannot read auth file {path}: {e.strerror or e}") from None
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise CredentialsError(f"auth file {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("auths", {}), dict):
        raise CredentialsError(f'auth file {path}: expected an object with an "auths" object')
    return doc


def _decode(path: Path, key: str, entry: object) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, colon, password = "", "", ""
        if not colon or not user:
            raise CredentialsError(f"auth file {path}: entry {key!r} is not base64 of user:password")
        return Credentials(user, password)
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(name, secret)
    return None  # e.g. only an identitytoken or a credHelper: not something we speak


def lookup(registry: str) -> Credentials | None:
    """The credentials stored for `registry` (`host[:port]`), or None."""
    for path in auth_files():
        auths: dict[str, Any] = _read(path).get("auths", {})
        exact = auths.get(registry)
        if exact is not None:
            found = _decode(path, registry, exact)
            if found is not None:
                return found
        for key, entry in auths.items():
            if key != registry and normalize_key(key) == registry:
                found = _decode(path, key, entry)
                if found is not None:
                    return found
    return None


def _write(path: Path, doc: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, (json.dumps(doc, indent="\t") + "\n").encode(), mode=0o600)
    except OSError as e:
        raise CredentialsError(f"cannot write auth file {path}: {e.strerror or e}") from None


def store(registry: str, credentials: Credentials) -> Path:
    """Save `credentials` for `registry` in the login file, replacing any entry naming it."""
    path = login_file()
    doc = _read(path)
    auths = {k: v for k, v in doc.get("auths", {}).items() if normalize_key(k) != registry}
    auths[registry] = {
        "auth": base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    }
    doc["auths"] = auths
    _write(path, doc)
    return path


def remove(registry: str) -> bool:
    """Forget `registry` in the login file; False when it had no entry."""
    path = login_file()
    doc = _read(path)
    auths = doc.get("auths", {})
    kept = {k: v for k, v in auths.items() if normalize_key(k) != registry}
    if len(kept) == len(auths):
        return False
    doc["auths"] = kept
    _write(path, doc)
    return True


__all__ = ["Credentials", "CredentialsError", "auth_files", "login_file", "lookup", "remove", "store"]
