"""Sigstore signatures: lazyctr signs, pushes, verifies and enforces a containers-policy.json on pulls.

A real registry on 127.0.0.1 and the real command line; attacks are crafted as raw pushes to the
registry (a moved tag, a signature for another digest or by another key, a broken signature, a
payload naming another image) and each must be refused with one line, leaving nothing in the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from nacl.secret import SecretBox

from registry.policy import PolicyInvalid, parse_policy
from storage.reference import ImageRef
from tests.conftest import CliRunner, Result, assert_clean_error, cli_command
from tests.registry.conftest import Registry

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE = "dev.cosignproject.cosign/signature"


@pytest.fixture
def keys(lazyctr: CliRunner, tmp_path: Path) -> Path:
    """A key pair made by `lazyctr generate-key-pair`: keys/cosign.key (passphrase in keys/pass)."""
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "pass").write_text("correct horse\n")
    prefix = str(directory / "cosign")
    out = lazyctr(
        "generate-key-pair", "--output-prefix", prefix, "--passphrase-file", str(directory / "pass")
    ).out
    assert "cosign.key" in out and "cosign.pub" in out
    assert b"ENCRYPTED PRIVATE KEY" in (directory / "cosign.key").read_bytes()
    assert (directory / "cosign.key").stat().st_mode & 0o077 == 0
    return directory


def policy_file(
    tmp_path: Path, keys: Path, host: str, scope_overrides: dict[str, object] | None = None
) -> Path:
    """A policy that requires signatures by `keys` for the test registry (a host scope names its
    port, as in containers/image), and rejects anything else."""
    docker: dict[str, object] = {
        host: [{"type": "sigstoreSigned", "keyPath": str(keys / "cosign.pub")}],
        **(scope_overrides or {}),
    }
    path = tmp_path / f"policy-{len(list(tmp_path.glob('policy-*')))}.json"
    path.write_text(json.dumps({"default": [{"type": "reject"}], "transports": {"docker": docker}}))
    return path


class Pusher:
    """Pushes busybox from an origin root, and crafted signatures straight to the registry."""

    def __init__(self, registry: Registry, busybox_tar: Path, tmp_path: Path, keys: Path) -> None:
        self.registry = registry
        self.origin = tmp_path / "origin"
        self.keys = keys
        self.run("import", str(busybox_tar), "busybox")

    def run(self, *args: str, ok: bool = True) -> Result:
        proc = subprocess.run(cli_command(self.origin, *args), capture_output=True, timeout=120)
        result = Result(proc.returncode, proc.stdout, proc.stderr.decode())
        assert result.code == 0 or not ok, result.stderr
        return result

    def push(self, repo_tag: str, *options: str) -> str:
        """Push busybox to `repo_tag`; its manifest digest."""
        out = self.run("push", *options, "busybox", f"{self.registry.address}/{repo_tag}").out
        return out.split("manifest ", 1)[1].split()[0]

    def push_signed(self, repo_tag: str) -> str:
        passphrase = str(self.keys / "pass")
        return self.push(
            repo_tag, "--sign-by", str(self.keys / "cosign.key"), "--sign-passphrase-file", passphrase
        )

    def put_signature(self, repo: str, digest: str, payload: bytes, signature: str) -> None:
        """A `.sig` tag for manifest `digest` holding one signature layer, pushed raw."""
        payload_digest = self.registry.push_blob(repo, payload)
        config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [payload_digest]}}).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.registry.push_blob(repo, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": PAYLOAD_TYPE,
                    "digest": payload_digest,
                    "size": len(payload),
                    "annotations": {SIGNATURE: signature},
                }
            ],
        }
        tag = "sha256-" + digest.split(":")[1] + ".sig"
        assert self.registry.push_manifest(repo, tag, manifest).status == 201


def payload_for(reference: str, digest: str) -> bytes:
    critical = {
        "identity": {"docker-reference": reference},
        "image": {"docker-manifest-digest": digest},
        "type": "cosign container image signature",
    }
    return json.dumps({"critical": critical, "optional": None}).encode()


def sign_with(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def our_key(keys: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((keys / "cosign.key").read_bytes(), b"correct horse")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.fixture
def pusher(registry: Registry, busybox_tar: Path, tmp_path: Path, keys: Path) -> Pusher:
    return Pusher(registry, busybox_tar, tmp_path, keys)


def assert_store_empty(root: Path) -> None:
    blobs = root / "store" / "blobs" / "sha256"
    assert not blobs.exists() or list(blobs.iterdir()) == []
    index = root / "store" / "index.json"
    assert not index.exists() or json.loads(index.read_text())["manifests"] == []


# -- the good path ---------------------------------------------------------------------------------------


def test_signed_push_verifies_pulls_and_keeps_the_digest(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    unsigned = pusher.push("test/plain:latest")
    signed = pusher.push_signed("test/busybox:latest")
    assert signed == unsigned  # a signature does not change the image
    ref = f"{registry.address}/test/busybox:latest"
    pub = str(keys / "cosign.pub")
    assert lazyctr("verify", "--key", pub, ref).out.split() == ["verified", ref, signed]
    # Where podman and cosign look: the .sig tag of the digest.
    tag = "sha256-" + signed.split(":")[1] + ".sig"
    sig_manifest = registry.request("GET", f"/v2/test/busybox/manifests/{tag}").json()
    (layer,) = sig_manifest["layers"]
    assert layer["mediaType"] == PAYLOAD_TYPE and SIGNATURE in layer["annotations"]
    # And as an OCI 1.1 referrer of the image.
    referrers = registry.request("GET", f"/v2/test/busybox/referrers/{signed}").json()["manifests"]
    assert [r["artifactType"] for r in referrers] == ["application/vnd.dev.cosign.artifact.sig.v1+json"]

    policy = policy_file(tmp_path, keys, registry.address)
    lazyctr("--policy", str(policy), "pull", ref)
    # The signature came along: verified offline, and it travels on with the next push.
    assert "verified" in lazyctr("verify", "--key", pub, ref).out
    assert "referrers 1" in lazyctr("push", ref, f"{registry.address}/test/again:latest").out
    assert registry.request("GET", f"/v2/test/again/manifests/{tag}").status == 200
    # ... but it names test/busybox: under another repository it does not vouch for the image.
    again = lazyctr("verify", "--key", pub, f"{registry.address}/test/again:latest", ok=False)
    assert_clean_error(again, f"the signature is for '{ref}'")


def test_sign_a_remote_reference_and_a_stored_image(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    digest = pusher.push("test/busybox:v1")
    ref = f"{registry.address}/test/busybox:v1"
    key, passphrase = str(keys / "cosign.key"), str(keys / "pass")
    assert lazyctr("sign", "--key", key, "--passphrase-file", passphrase, ref).out.split() == [
        "signed",
        ref,
        digest,
    ]
    lazyctr("--policy", str(policy_file(tmp_path, keys, registry.address)), "pull", ref)
    # COSIGN_PASSWORD works as with cosign; a stored image is signed locally and pushed with it.
    pusher.run("tag", "busybox", f"{registry.address}/test/local:v2")
    proc = subprocess.run(
        cli_command(pusher.origin, "sign", "--key", key, f"{registry.address}/test/local:v2"),
        capture_output=True,
        timeout=60,
        env={**_environ(), "COSIGN_PASSWORD": "correct horse"},
    )
    assert proc.returncode == 0, proc.stderr
    pusher.run("push", f"{registry.address}/test/local:v2")
    assert (
        "verified"
        in lazyctr("verify", "--key", str(keys / "cosign.pub"), f"{registry.address}/test/local:v2").out
    )


def _environ() -> dict[str, str]:
    return dict(os.environ)


# -- attacks: each refused with one line, nothing stored ---------------------------------------------------


def refused(lazyctr: CliRunner, root: Path, policy: Path, ref: str, reason: str) -> None:
    assert_clean_error(lazyctr("--policy", str(policy), "pull", ref, ok=False), reason)
    assert_clean_error(lazyctr("--policy", str(policy), "pull", "--eager", ref, ok=False), reason)
    assert_store_empty(root)


def test_an_unsigned_image_is_refused(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    pusher.push("test/plain:latest")
    ref = f"{registry.address}/test/plain:latest"
    policy = policy_file(tmp_path, keys, registry.address)
    refused(
        lazyctr, root, policy, ref, f"{ref}: refused by policy {policy} (scope {registry.address}): it has no"
    )


def test_a_moved_tag_is_refused(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    pusher.push_signed("test/busybox:latest")
    # Whoever controls the registry points the tag at another manifest (same layers, other config).
    manifest = registry.request("GET", "/v2/test/busybox/manifests/latest").json()
    manifest["annotations"] = {"evil": "yes"}
    assert registry.push_manifest("test/busybox", "latest", manifest).status == 201
    refused(
        lazyctr,
        root,
        policy_file(tmp_path, keys, registry.address),
        f"{registry.address}/test/busybox:latest",
        "no sigstore",
    )


def test_a_signature_for_another_digest_is_refused(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    digest = pusher.push("test/busybox:latest")
    ref = f"{registry.address}/test/busybox:latest"
    other = "sha256:" + hashlib.sha256(b"another image").hexdigest()
    payload = payload_for(ref, other)
    pusher.put_signature("test/busybox", digest, payload, sign_with(our_key(keys), payload))
    refused(
        lazyctr,
        root,
        policy_file(tmp_path, keys, registry.address),
        ref,
        f"the signature is for manifest {other}",
    )


def test_a_signature_by_another_key_is_refused(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    digest = pusher.push("test/busybox:latest")
    ref = f"{registry.address}/test/busybox:latest"
    payload = payload_for(ref, digest)
    pusher.put_signature(
        "test/busybox", digest, payload, sign_with(ec.generate_private_key(ec.SECP256R1()), payload)
    )
    refused(lazyctr, root, policy_file(tmp_path, keys, registry.address), ref, "does not verify with the key")
    assert_clean_error(lazyctr("verify", "--key", str(keys / "cosign.pub"), ref, ok=False), "does not verify")


GOOD = b""  # stands for the payload that names the image


@pytest.mark.parametrize(
    ("payload", "mangle", "reason"),
    [
        (GOOD, lambda good: good[: len(good) // 2], "does not verify"),  # truncated (still valid base64)
        (GOOD, lambda good: good[:-3], "not valid base64"),
        (GOOD, lambda good: "not a signature!", "not valid base64"),
        (GOOD, lambda good: "", "does not verify"),
        (b"{not json", str, "not JSON"),
        (b'{"critical": {}, "optional": null}', str, "critical must have exactly"),
        (b"[]", str, "the payload must have exactly"),
    ],
)
def test_a_truncated_or_malformed_signature_is_refused(
    lazyctr: CliRunner,
    pusher: Pusher,
    registry: Registry,
    tmp_path: Path,
    keys: Path,
    root: Path,
    payload: bytes,
    mangle: Callable[[str], str],
    reason: str,
) -> None:
    digest = pusher.push("test/busybox:latest")
    ref = f"{registry.address}/test/busybox:latest"
    payload = payload or payload_for(ref, digest)
    pusher.put_signature("test/busybox", digest, payload, mangle(sign_with(our_key(keys), payload)))
    refused(lazyctr, root, policy_file(tmp_path, keys, registry.address), ref, reason)


def test_a_payload_naming_another_image_is_refused(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    digest = pusher.push("test/busybox:latest")
    payload = payload_for(f"{registry.address}/test/other:latest", digest)
    pusher.put_signature("test/busybox", digest, payload, sign_with(our_key(keys), payload))
    ref = f"{registry.address}/test/busybox:latest"
    refused(
        lazyctr, root, policy_file(tmp_path, keys, registry.address), ref, "the signature is for '127.0.0.1:"
    )


def test_a_policy_that_rejects_is_obeyed(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    pusher.push_signed("test/busybox:latest")
    ref = f"{registry.address}/test/busybox:latest"
    # The most specific scope wins: the repository's reject over the host's sigstoreSigned.
    policy = policy_file(
        tmp_path, keys, registry.address, {f"{registry.address}/test/busybox": [{"type": "reject"}]}
    )
    refused(lazyctr, root, policy, ref, "the policy rejects it")
    # ... and the host's scope still lets another signed repository in.
    pusher.push_signed("test/other:latest")
    lazyctr("--policy", str(policy), "pull", f"{registry.address}/test/other:latest")


def test_insecure_accept_anything_pulls_as_before(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path
) -> None:
    pusher.push("test/plain:latest")
    policy = tmp_path / "accept.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    lazyctr("--policy", str(policy), "pull", f"{registry.address}/test/plain:latest")


# -- bad input --------------------------------------------------------------------------------------------


def test_bad_policies_and_keys_are_one_line(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path, root: Path
) -> None:
    ref = f"{registry.address}/test/busybox:latest"
    pusher.push("test/busybox:latest")
    broken = tmp_path / "broken.json"
    broken.write_text('{"default": [')
    assert_clean_error(lazyctr("--policy", str(broken), "pull", ref, ok=False), "not JSON")
    assert_clean_error(
        lazyctr("--policy", str(tmp_path / "none.json"), "pull", ref, ok=False), "no such file"
    )
    assert_store_empty(root)
    key = str(keys / "cosign.key")
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong horse\n")
    assert_clean_error(
        lazyctr("sign", "--key", key, "--passphrase-file", str(wrong), ref, ok=False), "passphrase"
    )
    assert_clean_error(lazyctr("sign", "--key", key, ref, ok=False), "is encrypted: give its passphrase")
    assert_clean_error(lazyctr("verify", "--key", key, ref, ok=False), "not a PEM public key")
    assert_clean_error(
        lazyctr("verify", "--key", str(keys / "cosign.pub"), ref, ok=False), "no sigstore signature"
    )
    prefix = str(keys / "cosign")
    assert_clean_error(lazyctr("generate-key-pair", "--output-prefix", prefix, ok=False), "exists already")


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"transports": {}}, "'default' list"),
        ({"default": []}, "non-empty list"),
        ({"default": [{"type": "sigstoreSigned"}]}, "exactly one of keyPath and keyData"),
        ({"default": [{"type": "sigstoreSigned", "keyData": "%%%"}]}, "keyData is not base64"),
        (
            {"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent.pub"}]},
            "keyPath /nonexistent.pub: No such file",
        ),
    ],
)
def test_policy_documents_are_checked(document: object, reason: str) -> None:
    with pytest.raises(PolicyInvalid, match=reason):
        parse_policy(json.dumps(document).encode(), "test.json")


def test_the_most_specific_scope_wins(keys: Path) -> None:
    pub = base64.b64encode((keys / "cosign.pub").read_bytes()).decode()
    document = {
        "default": [{"type": "reject"}],
        "transports": {
            "docker": {
                "": [{"type": "insecureAcceptAnything"}],
                "reg.example.com": [{"type": "sigstoreSigned", "keyData": pub}],
                "reg.example.com/team": [{"type": "reject"}],
                "reg.example.com/team/app:stable": [{"type": "insecureAcceptAnything"}],
                "*.example.com": [{"type": "reject"}],
            }
        },
    }
    policy = parse_policy(json.dumps(document).encode(), "test.json")

    def scope(text: str) -> str:
        return policy.requirements(ImageRef.parse(text))[0]

    assert scope("reg.example.com/team/app:stable") == "reg.example.com/team/app:stable"
    assert scope("reg.example.com/team/app:latest") == "reg.example.com/team"
    assert scope("reg.example.com/other/app:latest") == "reg.example.com"
    assert scope("mirror.example.com/app:latest") == "*.example.com"
    assert scope("127.0.0.1:5000/app:latest") == "docker"


def sigstore_encrypted_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes) -> bytes:
    """`key` as cosign and skopeo 1.10+ write it: scrypt + nacl/secretbox over the PKCS#8 DER, in JSON"""
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    salt, nonce = os.urandom(32), os.urandom(24)
    box_key = Scrypt(salt=salt, length=32, n=32768, r=8, p=1).derive(passphrase)
    ciphertext = bytes(SecretBox(box_key).encrypt(der, nonce).ciphertext)
    sealed = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": 32768, "r": 8, "p": 1},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    body = base64.encodebytes(json.dumps(sealed).encode()).decode()
    kind = "ENCRYPTED SIGSTORE PRIVATE KEY"
    return f"-----BEGIN {kind}-----\n{body}-----END {kind}-----\n".encode()


def test_keys_in_other_forms(
    lazyctr: CliRunner, pusher: Pusher, registry: Registry, tmp_path: Path, keys: Path
) -> None:
    pusher.push("test/busybox:latest")
    ref = f"{registry.address}/test/busybox:latest"
    pub = str(keys / "cosign.pub")
    plain = tmp_path / "plain.key"  # an unencrypted EC key, as openssl writes it
    plain.write_bytes(
        our_key(keys).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    lazyctr("sign", "--key", str(plain), ref)
    assert "verified" in lazyctr("verify", "--key", pub, ref).out
    sigstore = tmp_path / "sigstore.key"
    sigstore.write_bytes(sigstore_encrypted_key(our_key(keys), b"correct horse"))
    lazyctr("sign", "--key", str(sigstore), "--passphrase-file", str(keys / "pass"), ref)
    assert "verified" in lazyctr("verify", "--key", pub, ref).out
    wrong = tmp_path / "wrong-pass"
    wrong.write_text("battery staple\n")
    signing = lazyctr("sign", "--key", str(sigstore), "--passphrase-file", str(wrong), ref, ok=False)
    assert_clean_error(signing, "wrong passphrase for the sigstore private key")
    p384 = tmp_path / "p384.key"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert_clean_error(lazyctr("sign", "--key", str(p384), ref, ok=False), "not an ECDSA P-256 private key")
