"""Signing keys: ECDSA P-256 key pairs in the PEM forms cosign and containers/image use.

A public key is a PEM `PUBLIC KEY` (SubjectPublicKeyInfo), what `cosign.pub` and a policy's
`keyPath`/`keyData` hold. A private key is read from a PEM `PRIVATE KEY` / `EC PRIVATE KEY`, a
PKCS#8 `ENCRYPTED PRIVATE KEY`, or sigstore's own `ENCRYPTED SIGSTORE PRIVATE KEY` (also
`ENCRYPTED COSIGN PRIVATE KEY`): JSON with an scrypt KDF and a nacl/secretbox cipher over the
PKCS#8 DER key, what `cosign generate-key-pair` and `skopeo generate-sigstore-key` write. That
one needs PyNaCl (XSalsa20-Poly1305 is not in `cryptography`); without it such a key is refused
with a line that says so. `generate_key_pair` writes PKCS#8 (encrypted when given a passphrase),
which cosign reads with `cosign import-key-pair`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from storage.errors import StorageError

SIGSTORE_PEM = re.compile(
    rb"-----BEGIN ENCRYPTED (?:SIGSTORE|COSIGN) PRIVATE KEY-----\s*(.*?)\s*-----END ENCRYPTED", re.S
)
PASSPHRASE_ENV = "COSIGN_PASSWORD"  # cosign's; `--passphrase-file` is skopeo's way


class SigningKeyError(StorageError):
    """A key file that cannot be read as a P-256 key (or its passphrase is wrong)."""


def load_public_key(data: bytes, what: str) -> ec.EllipticCurvePublicKey:
    """The ECDSA P-256 public key in PEM `data` (`what` names it in errors)."""
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SigningKeyError(f"{what}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{what}: not an ECDSA P-256 public key (sigstore signatures use P-256)")
    return key


def load_private_key(path: Path, passphrase: bytes | None) -> ec.EllipticCurvePrivateKey:
    """The ECDSA P-256 private key in file `path`, decrypted with `passphrase` where it is encrypted."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"{path}: {e.strerror}") from None
    sigstore = SIGSTORE_PEM.search(data)
    try:
        if sigstore is not None:
            der = _decrypt_sigstore(sigstore.group(1), passphrase or b"", path)
            key: Any = serialization.load_der_private_key(der, None)
        else:
            encrypted = b"ENCRYPTED" in data
            key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"{path}: not a PEM private key, or a wrong passphrase") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"{path}: not an ECDSA P-256 private key (sigstore signatures use P-256)")
    return key


def _decrypt_sigstore(body: bytes, passphrase: bytes, path: Path) -> bytes:
    """The PKCS#8 DER key inside sigstore's encrypted-key JSON (scrypt, then nacl/secretbox)."""
    try:
        sealed = json.loads(base64.b64decode(b"".join(body.split())))
        kdf, cipher = sealed["kdf"], sealed["cipher"]
        params = kdf["params"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise SigningKeyError(f"{path}: unsupported key encryption {kdf['name']}/{cipher['name']}")
        salt, nonce = base64.b64decode(kdf["salt"]), base64.b64decode(cipher["nonce"])
        ciphertext = base64.b64decode(sealed["ciphertext"])
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise SigningKeyError(f"{path}: a malformed sigstore encrypted private key") from None
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)
    try:
        return bytes(SecretBox(key).decrypt(ciphertext, nonce))
    except CryptoError:
        raise SigningKeyError(f"{path}: wrong passphrase for the sigstore private key") from None


def generate_key_pair(passphrase: bytes) -> tuple[bytes, bytes]:
    """A new P-256 key pair: the private key's PEM (PKCS#8, encrypted unless `passphrase` is empty)
    and the public key's PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def passphrase_from(file: Path | None) -> bytes | None:
    """The passphrase as skopeo (`--passphrase-file`, first line) or cosign (`COSIGN_PASSWORD`)
    take it; None when neither gives one (the caller may prompt)."""
    if file is not None:
        try:
            return file.read_bytes().split(b"\n", 1)[0].rstrip(b"\r")
        except OSError as e:
            raise SigningKeyError(f"{file}: {e.strerror}") from None
    value = os.environ.get(PASSPHRASE_ENV)
    return value.encode() if value is not None else None


def is_encrypted(path: Path) -> bool:
    try:
        return b"ENCRYPTED" in path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"{path}: {e.strerror}") from None
