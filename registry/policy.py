"""Which images may be pulled: containers-policy.json, as podman and skopeo read it, enforced on a pull.

The policy file is `$LAZYCTR_POLICY`, else `/etc/containers/policy.json`; without either file
every image is accepted (as before policies existed). Of its `transports`, `docker` applies (the
registry transport): the most specific scope that names the image wins (`host/repo:tag` or
`host/repo@digest`, `host/repo`, each parent namespace, `host`, `*.domain` wildcards), then the
transport's `""` scope, then `default`. Every requirement of the chosen list must accept:
`insecureAcceptAnything`, `reject`, or `sigstoreSigned` with `keyPath` or `keyData` and an
optional `signedIdentity` (matchRepoDigestOrExact by default, matchExact, matchRepository,
exactReference, exactRepository). Other requirement types refuse the image, saying so.

`enforce` runs right after the tag is resolved and before any layer byte is fetched: it pins
the image to the manifest digest it checked, so a tag that moves afterwards cannot swap it.
`check_stored` runs again before a lazy mount serves a byte, against the signatures kept in the
store, so an image pulled under a laxer policy is not served under a stricter one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storage.errors import IntegrityError, InvalidReference, StorageError
from storage.reference import ImageRef, Origin

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from registry.client import RegistryClient
    from registry.signatures import Claim, Signature
    from storage.digest import Digest
    from storage.store import Image, Store

# cryptography, the signatures and the registry client (aiohttp) are imported only where a policy
# asks for signatures: a lazy mount checks the policy, and most policies accept anything.

POLICY_ENV = "LAZYCTR_POLICY"
SYSTEM_POLICY = Path("/etc/containers/policy.json")
DEFAULT_IDENTITY = {"type": "matchRepoDigestOrExact"}


class PolicyInvalid(StorageError):
    """A policy file that cannot be read as containers-policy.json(5) says."""


class ImageRefused(IntegrityError):
    """An image the policy does not accept: one line naming the image and the reason."""


@dataclass(frozen=True)
class Requirement:
    """One requirement of a policy list; `keys` and `identity` only for sigstoreSigned."""

    kind: str
    keys: tuple[ec.EllipticCurvePublicKey, ...] = ()
    identity: tuple[tuple[str, str], ...] = ()  # signedIdentity's fields, sorted

    @property
    def needs_signatures(self) -> bool:
        return self.kind == "sigstoreSigned"


@dataclass(frozen=True)
class Policy:
    source: str
    default: tuple[Requirement, ...]
    scopes: dict[str, tuple[Requirement, ...]]  # the docker transport's, by scope ("" included)

    def requirements(self, ref: ImageRef) -> tuple[str, tuple[Requirement, ...]]:
        """The scope that applies to `ref` (for messages) and its requirements."""
        for scope in _scopes_of(ref):
            if scope in self.scopes:
                return scope or "docker", self.scopes[scope]
        return "default", self.default


def policy_path() -> Path:
    return Path(os.environ.get(POLICY_ENV) or SYSTEM_POLICY)


def load_policy(path: Path | None = None) -> Policy | None:
    """The policy in `path` (default: `policy_path()`); None when there is no policy file at all."""
    path = path or policy_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if path == SYSTEM_POLICY:
            return None
        raise PolicyInvalid(f"policy {path}: no such file") from None
    except OSError as e:
        raise PolicyInvalid(f"policy {path}: {e.strerror}") from None
    return parse_policy(data, str(path))


def parse_policy(data: bytes, source: str) -> Policy:
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise PolicyInvalid(f"policy {source}: not JSON: {e}") from None
    if not isinstance(obj, dict) or "default" not in obj:
        raise PolicyInvalid(f"policy {source}: expected an object with a 'default' list")
    transports = obj.get("transports", {})
    if not isinstance(transports, dict) or not isinstance(transports.get("docker", {}), dict):
        raise PolicyInvalid(f"policy {source}: 'transports' must map transports to scopes")
    scopes = {
        scope: _requirements(value, f"policy {source}: transports.docker[{scope!r}]")
        for scope, value in transports.get("docker", {}).items()
    }
    return Policy(source, _requirements(obj["default"], f"policy {source}: default"), scopes)


def _requirements(value: Any, what: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list) or not value:
        raise PolicyInvalid(f"{what}: expected a non-empty list of requirements")
    return tuple(_requirement(item, what) for item in value)


def _requirement(item: Any, what: str) -> Requirement:
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise PolicyInvalid(f"{what}: a requirement must be an object with a 'type'")
    kind = item["type"]
    if kind != "sigstoreSigned":
        return Requirement(kind)
    if ("keyPath" in item) == ("keyData" in item):
        raise PolicyInvalid(f"{what}: sigstoreSigned needs exactly one of keyPath and keyData")
    identity = item.get("signedIdentity", DEFAULT_IDENTITY)
    if not isinstance(identity, dict) or not all(isinstance(v, str) for v in identity.values()):
        raise PolicyInvalid(f"{what}: signedIdentity must be an object of strings")
    if identity.get("type") not in _IDENTITY_RULES:
        raise PolicyInvalid(f"{what}: unsupported signedIdentity type {identity.get('type')!r}")
    return Requirement(kind, (_policy_key(item, what),), tuple(sorted(identity.items())))


def _policy_key(item: dict[str, Any], what: str) -> ec.EllipticCurvePublicKey:
    from registry.sigkeys import SigningKeyError, load_public_key

    try:
        if "keyPath" in item:
            path = Path(str(item["keyPath"]))
            return load_public_key(path.read_bytes(), f"{what}: keyPath {path}")
        return load_public_key(base64.b64decode(str(item["keyData"]), validate=True), f"{what}: keyData")
    except OSError as e:
        raise PolicyInvalid(f"{what}: keyPath {item['keyPath']}: {e.strerror}") from None
    except (binascii.Error, ValueError):
        raise PolicyInvalid(f"{what}: keyData is not base64") from None
    except SigningKeyError as e:
        raise PolicyInvalid(str(e)) from None


def _scopes_of(ref: ImageRef) -> list[str]:
    """Scopes from the most specific to the least: the reference, the repository, its parent
    namespaces, the host, `*.` wildcards of the host's domain, then the transport's default."""
    scopes = [f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"]
    parts = ref.name.split("/")
    scopes += ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
    labels = parts[0].split(":")[0].split(".")
    scopes += ["*." + ".".join(labels[n:]) for n in range(1, len(labels))]
    return [*scopes, ""]


# -- signed identities ---------------------------------------------------------------------------------


def _split_reference(text: str) -> ImageRef:
    """A signature's docker-reference, its tag left None when it has none (ImageRef would say latest)."""
    ref = ImageRef.parse(text)
    has_tag = ":" in text.rsplit("/", 1)[-1].split("@", 1)[0]
    return ref if has_tag else dataclasses.replace(ref, tag=None)


def _match_repo_digest_or_exact(image: ImageRef, signed: ImageRef, rule: dict[str, str]) -> bool:
    if image.digest is not None and image.tag is None:
        return signed.name == image.name
    return _match_exact(image, signed, rule)


def _match_exact(image: ImageRef, signed: ImageRef, rule: dict[str, str]) -> bool:
    return image.tag is not None and (signed.name, signed.tag, signed.digest) == (image.name, image.tag, None)


def _match_repository(image: ImageRef, signed: ImageRef, rule: dict[str, str]) -> bool:
    return signed.name == image.name


def _exact_reference(image: ImageRef, signed: ImageRef, rule: dict[str, str]) -> bool:
    return str(signed) == str(_split_reference(rule.get("dockerReference", "")))


def _exact_repository(image: ImageRef, signed: ImageRef, rule: dict[str, str]) -> bool:
    return signed.name == rule.get("dockerRepository")


_IDENTITY_RULES = {
    "matchRepoDigestOrExact": _match_repo_digest_or_exact,
    "matchExact": _match_exact,
    "matchRepository": _match_repository,
    "exactReference": _exact_reference,
    "exactRepository": _exact_repository,
}


def _identity_matches(requirement: Requirement, image: ImageRef, claim: Claim) -> bool:
    rule = dict(requirement.identity)
    try:
        signed = _split_reference(claim.docker_reference)
    except InvalidReference:
        return False
    return _IDENTITY_RULES[rule["type"]](image, signed, rule)


# -- enforcing -------------------------------------------------------------------------------------------


def accepted_by(
    requirement: Requirement, image: ImageRef, digest: Digest, found: list[Signature]
) -> str | None:
    """None when `requirement` accepts the image (manifest `digest`) with signatures `found`, else why not."""
    if requirement.kind == "insecureAcceptAnything":
        return None
    if requirement.kind == "reject":
        return "the policy rejects it"
    if requirement.kind != "sigstoreSigned":
        return f"policy requirement {requirement.kind!r} is not supported by lazyctr"
    if not found:
        return "it has no sigstore signature, and the policy requires one"
    from registry.signatures import SignatureInvalid, verify_signature

    reasons: list[str] = []
    for signature in found:
        for key in requirement.keys:
            try:
                claim = verify_signature(key, signature)
            except SignatureInvalid as e:
                reasons.append(str(e))
                continue
            if claim.manifest_digest != digest:
                reasons.append(f"the signature is for manifest {claim.manifest_digest}, not {digest}")
            elif not _identity_matches(requirement, image, claim):
                reasons.append(f"the signature is for {claim.docker_reference!r}, not {str(image)!r}")
            else:
                return None
    return "no valid signature: " + "; ".join(dict.fromkeys(reasons))


def _judge(policy: Policy, ref: ImageRef, digest: Digest, found: list[Signature]) -> None:
    """Raise ImageRefused unless every requirement of `ref`'s scope accepts manifest `digest`."""
    scope, requirements = policy.requirements(ref)
    for requirement in requirements:
        reason = accepted_by(requirement, ref, digest, found)
        if reason is not None:
            raise ImageRefused(f"{ref}: refused by policy {policy.source} (scope {scope}): {reason}")


def _needs_signatures(policy: Policy, ref: ImageRef) -> bool:
    return any(r.needs_signatures for r in policy.requirements(ref)[1])


async def enforce(
    client: RegistryClient, ref: ImageRef, policy: Policy | None
) -> tuple[ImageRef, list[Signature]]:
    """Check `ref` against `policy` (None: accept anything): the reference pinned to the manifest
    digest that was checked (unchanged when nothing needed checking) and the signatures found.
    Raises ImageRefused, naming the image and the reason."""
    if policy is None or all(r.kind == "insecureAcceptAnything" for r in policy.requirements(ref)[1]):
        return ref, []
    from registry.signatures import fetch_signatures

    _, _, digest = await client.get_manifest(ref.repository, ref.digest or ref.tag or "latest")
    found = await fetch_signatures(client, ref.repository, digest) if _needs_signatures(policy, ref) else []
    _judge(policy, ref, digest, found)
    return dataclasses.replace(ref, digest=digest), found


def check_stored(store: Store, image: Image) -> None:
    """Before a lazily pulled image serves a byte: the policy must accept it as its origin's
    `repository@digest`, with the signatures the store kept at its pull (no network: the pull
    checked the registry's). Images with no origin (built or imported here) are not pulls."""
    if image.source is None:
        return
    policy = load_policy()
    if policy is None:
        return
    origin = Origin.parse(image.source)
    digest = image.descriptor.digest
    ref = ImageRef(f"{origin.registry}/{origin.repository}", None, digest)
    found: list[Signature] = []
    if _needs_signatures(policy, ref):
        from registry.signatures import stored_signatures

        found = stored_signatures(store, image)
    _judge(policy, ref, digest, found)


__all__ = [
    "ImageRefused",
    "Policy",
    "PolicyInvalid",
    "check_stored",
    "enforce",
    "load_policy",
    "parse_policy",
    "policy_path",
]
