"""Sigstore image signatures as podman/skopeo (`sigstoreSigned`) and cosign write and read them.

A signature is a *simple-signing payload* (JSON that names the image: its manifest digest and a
docker reference), an ECDSA P-256 signature over the payload's SHA-256, base64 in the annotation
`dev.cosignproject.cosign/signature` of the payload's layer descriptor. The layers live in an OCI
image manifest, found two ways: the `sha256-<hex>.sig` tag of the image's repository (where
cosign and containers/image look), and an OCI 1.1 referrer of the image manifest (artifact type
cosign's `application/vnd.dev.cosign.artifact.sig.v1+json`). Neither changes the image's digest.

This module owns the payload, signing and verifying one payload, the signature manifests, and
moving them to and from a registry; keys are `registry/sigkeys.py`'s, policy `registry/policy.py`'s.
A payload is parsed as strictly as containers/image does (exact fields), so what we accept it
accepts too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from registry.client import RegistryClient, RegistryClientError, RegistryNotFound
from storage.digest import Digest
from storage.errors import IntegrityError, InvalidManifest, InvalidReference
from storage.oci import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor, Manifest, canonical_json
from storage.reference import ImageRef
from storage.store import Image, Store

PAYLOAD_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"  # the layers' media type
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_ARTIFACT = "application/vnd.dev.cosign.artifact.sig.v1+json"  # cosign's referrer artifactType
CLAIM_TYPE = "cosign container image signature"
CREATOR = "lazyctr"
PAYLOAD_LIMIT = 1 << 20


class SignatureInvalid(IntegrityError):
    """A signature that does not verify, or a payload that is not what a signature must say."""


@dataclass(frozen=True)
class Claim:
    """What a verified payload says: this manifest digest is the image `docker_reference`."""

    docker_reference: str
    manifest_digest: Digest


@dataclass(frozen=True)
class Signature:
    """One signature as found: the payload bytes and the base64 signature over them (unverified)."""

    payload: bytes
    signature: str


# -- the payload ---------------------------------------------------------------------------------


def make_payload(docker_reference: str, digest: Digest) -> bytes:
    """The simple-signing payload claiming `digest` is `docker_reference`."""
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": str(digest)},
                "type": CLAIM_TYPE,
            },
            "optional": {"creator": CREATOR, "timestamp": int(time.time())},
        },
        separators=(",", ":"),
    ).encode()


def _exact(obj: Any, fields: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != fields:
        found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise SignatureInvalid(f"signature payload: {what} must have exactly {sorted(fields)}, found {found}")
    return obj


def _text(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise SignatureInvalid(f"signature payload: {what}.{key} must be a string")
    return value


def parse_payload(data: bytes) -> Claim:
    """The claim of a payload (whose signature verified), checked field by field."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SignatureInvalid(f"signature payload is not JSON: {e}") from None
    top = _exact(obj, {"critical", "optional"}, "the payload")
    critical = _exact(top["critical"], {"identity", "image", "type"}, "critical")
    if critical["type"] != CLAIM_TYPE:
        raise SignatureInvalid(f"signature payload: type {critical['type']!r} is not {CLAIM_TYPE!r}")
    identity = _exact(critical["identity"], {"docker-reference"}, "critical.identity")
    image = _exact(critical["image"], {"docker-manifest-digest"}, "critical.image")
    optional = top["optional"]
    if optional is not None and not isinstance(optional, dict):
        raise SignatureInvalid("signature payload: optional must be an object or null")
    digest_text = _text(image, "docker-manifest-digest", "critical.image")
    try:
        digest = Digest(digest_text)
    except InvalidReference:
        raise SignatureInvalid(f"signature payload: invalid manifest digest {digest_text!r}") from None
    return Claim(_text(identity, "docker-reference", "critical.identity"), digest)


# -- one signature ---------------------------------------------------------------------------------


def sign_payload(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    """The base64 ECDSA (SHA-256, ASN.1 DER) signature of `payload`, as cosign writes it."""
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def verify_signature(key: ec.EllipticCurvePublicKey, found: Signature) -> Claim:
    """The claim of `found` if `key` signed its payload; SignatureInvalid otherwise."""
    try:
        raw = base64.b64decode(found.signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid("the signature is not valid base64") from None
    try:
        key.verify(raw, found.payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureInvalid("the signature does not verify with the key") from None
    return parse_payload(found.payload)


# -- signature manifests -----------------------------------------------------------------------------


def signature_tag(digest: Digest) -> str:
    """The tag where cosign and containers/image keep the signatures of manifest `digest`."""
    return f"sha256-{digest.hex}.sig"


def _config(payload_digests: list[Digest]) -> bytes:
    """A config like cosign's: its rootfs lists the payloads (readers ignore it)."""
    return canonical_json(
        {
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [str(d) for d in payload_digests]},
        }
    )


def signature_manifest(store: Store, layers: list[Descriptor], subject: Descriptor | None) -> Manifest:
    """A manifest of signature `layers` (payloads in the store); a referrer of `subject` if given."""
    config = _config([layer.digest for layer in layers])
    config_descriptor = Descriptor(MEDIA_CONFIG, store.put_blob(config), len(config))
    artifact_type = SIGNATURE_ARTIFACT if subject is not None else None
    return Manifest(config_descriptor, layers, subject=subject, artifact_type=artifact_type)


def signature_layers(manifest: Manifest) -> list[Descriptor]:
    """The layers of a signature manifest that carry a signature (others are not signatures)."""
    return [
        layer
        for layer in manifest.layers
        if layer.media_type == PAYLOAD_TYPE and SIGNATURE_ANNOTATION in layer.annotations
    ]


def add_signature(store: Store, image: Image, key: ec.EllipticCurvePrivateKey, docker_reference: str) -> None:
    """Sign `image` as `docker_reference` and keep the signature as a referrer in the store."""
    payload = make_payload(docker_reference, image.descriptor.digest)
    keep_signatures(store, image, [Signature(payload, sign_payload(key, payload))])


def _signature_layer(store: Store, signature: Signature) -> Descriptor:
    """The layer descriptor of `signature`, its payload put in the store."""
    payload = signature.payload
    return Descriptor(
        PAYLOAD_TYPE, store.put_blob(payload), len(payload), {SIGNATURE_ANNOTATION: signature.signature}
    )


def stored_signatures(store: Store, image: Image) -> list[Signature]:
    """The signatures the store keeps for `image` (unverified)."""
    return [
        Signature(store.read_blob(layer.digest), layer.annotations[SIGNATURE_ANNOTATION])
        for layer in stored_signature_layers(store, image)
    ]


def keep_signatures(store: Store, image: Image, found: list[Signature]) -> None:
    """Keep signatures `found` for `image` in the store, as one referrer (so they travel on push)."""
    if not found:
        return
    layers = [
        Descriptor(
            PAYLOAD_TYPE, store.put_blob(s.payload), len(s.payload), {SIGNATURE_ANNOTATION: s.signature}
        )
        for s in found
    ]
    subject = Descriptor(image.descriptor.media_type, image.descriptor.digest, image.descriptor.size)
    store.add_referrer(signature_manifest(store, layers, subject).to_bytes())


def stored_signature_layers(store: Store, image: Image) -> list[Descriptor]:
    """The signature layers the store keeps for `image` (its signature referrers'), oldest first."""
    layers: list[Descriptor] = []
    for descriptor in store.referrers(image.descriptor.digest, SIGNATURE_ARTIFACT):
        for layer in signature_layers(Manifest.parse(store.read_blob(descriptor.digest))):
            if layer not in layers:
                layers.append(layer)
    return layers


# -- to and from a registry ------------------------------------------------------------------------


async def push_signature_tag(
    store: Store, client: RegistryClient, repo: str, digest: Digest, ours: list[Descriptor]
) -> int:
    """Put signature layers `ours` (payloads in the store) of manifest `digest` on its `.sig` tag in
    `repo`, keeping those there already (as containers/image does). Returns how many are new."""
    if not ours:  # nothing to add: not even a look at the tag
        return 0
    theirs = await _tag_manifest(client, repo, digest)
    present = signature_layers(theirs) if theirs is not None else []
    new = [layer for layer in ours if layer not in present]
    if not new:
        return 0
    for layer in present:  # their payloads, so the config lists them too
        if not store.has_blob(layer.digest):
            await _fetch_payload(store, client, repo, layer)
    manifest = signature_manifest(store, [*present, *new], None)
    for blob in [manifest.config, *new]:
        await client.push_blob(repo, blob.digest, store.blob_path(blob.digest))
    await client.put_manifest(repo, signature_tag(digest), manifest.to_bytes(), MEDIA_MANIFEST)
    return len(new)


async def sign_remote(
    store: Store, client: RegistryClient, ref: ImageRef, key: ec.EllipticCurvePrivateKey
) -> tuple[Digest, str]:
    """Sign the manifest `ref` names in its registry, as `ref` (without a digest): the signature goes
    up as a referrer and on the `.sig` tag. Returns the manifest digest and the signed identity."""
    data, media_type, digest = await client.get_manifest(ref.repository, ref.digest or ref.tag or "latest")
    identity = f"{ref.name}:{ref.tag}" if ref.tag else ref.name
    payload = make_payload(identity, digest)
    layer = _signature_layer(store, Signature(payload, sign_payload(key, payload)))
    subject = Descriptor(media_type, digest, len(data))
    referrer = signature_manifest(store, [layer], subject)
    for blob in [referrer.config, layer]:
        await client.push_blob(ref.repository, blob.digest, store.blob_path(blob.digest))
    body = referrer.to_bytes()
    await client.put_manifest(ref.repository, str(Digest.of(body)), body, MEDIA_MANIFEST)
    await push_signature_tag(store, client, ref.repository, digest, [layer])
    return digest, identity


async def _tag_manifest(client: RegistryClient, repo: str, digest: Digest) -> Manifest | None:
    try:
        data, _, _ = await client.get_manifest(repo, signature_tag(digest))
    except RegistryNotFound:
        return None
    try:
        return Manifest.parse(data)
    except InvalidManifest as e:
        raise SignatureInvalid(f"{client.registry}/{repo}:{signature_tag(digest)}: {e}") from None


async def _fetch_payload(store: Store | None, client: RegistryClient, repo: str, layer: Descriptor) -> bytes:
    """A payload blob, verified against its digest (and put in `store` when given)."""
    if layer.size > PAYLOAD_LIMIT:
        raise SignatureInvalid(f"signature payload {layer.digest} is larger than {PAYLOAD_LIMIT} bytes")
    if store is not None and store.has_blob(layer.digest):
        return store.read_blob(layer.digest)
    buffer = io.BytesIO()
    await client.get_blob(repo, layer.digest, buffer, layer.size)
    data = buffer.getvalue()
    if store is not None:
        store.put_blob(data)
    return data


async def fetch_signatures(client: RegistryClient, repo: str, digest: Digest) -> list[Signature]:
    """Every signature the registry holds for manifest `digest` of `repo`, from its `.sig` tag and
    its referrers (unverified). A registry without signatures gives none."""
    manifests: list[Manifest] = []
    tagged = await _tag_manifest(client, repo, digest)
    if tagged is not None:
        manifests.append(tagged)
    try:
        listed = await client.referrers(repo, digest, SIGNATURE_ARTIFACT)
    except RegistryClientError:
        listed = []
    for descriptor in listed:
        data, _, _ = await client.get_manifest(repo, descriptor.digest)
        try:
            artifact = Manifest.parse(data)
        except InvalidManifest:
            continue  # not a signature we can read; the others may still do
        if artifact.subject is not None and artifact.subject.digest == digest:
            manifests.append(artifact)
    layers: list[Descriptor] = []
    for manifest in manifests:
        layers.extend(layer for layer in signature_layers(manifest) if layer not in layers)
    payloads = await asyncio.gather(*(_fetch_payload(None, client, repo, layer) for layer in layers))
    return [
        Signature(payload, layer.annotations[SIGNATURE_ANNOTATION])
        for layer, payload in zip(layers, payloads, strict=True)
    ]


__all__ = [
    "Claim",
    "Signature",
    "SignatureInvalid",
    "add_signature",
    "fetch_signatures",
    "keep_signatures",
    "make_payload",
    "parse_payload",
    "push_signature_tag",
    "sign_payload",
    "sign_remote",
    "signature_tag",
    "stored_signature_layers",
    "stored_signatures",
    "verify_signature",
]
