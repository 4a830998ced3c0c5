"""OCI image types (descriptor, manifest, image config, index) and their canonical JSON form.

Canonical JSON (sorted keys, no spaces) makes the same content give the same digest. Parsing is
tolerant of unknown fields and of Docker schema 2 media types, which are read as their OCI twins;
a document that is not what the spec says (malformed JSON, a missing field, a field of the wrong
type, a descriptor with an invalid digest or size) raises `InvalidManifest`, one line that says
which field. The media types and these checks live here only: the other rooms import them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from storage.digest import ALGORITHMS, Digest
from storage.errors import InvalidManifest, InvalidReference

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_EMPTY = "application/vnd.oci.empty.v1+json"  # the `{}` config of an artifact
PROFILE_TYPE = "application/vnd.lazyctr.access-profile.v1+json"  # lazyfs's access profiles (artifacts)
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Layers whose blob a registry need not hold and a client must not copy (licensing): fetched, where
# at all, from the descriptor's `urls`. Deprecated by the image spec, still met in the wild.
NON_DISTRIBUTABLE_TYPES = {
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}

MANIFEST_TYPES = {MEDIA_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {MEDIA_INDEX, DOCKER_MANIFEST_LIST}
LAYER_TYPES = {MEDIA_LAYER_TAR, MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD, DOCKER_LAYER_TAR, DOCKER_LAYER_GZIP}
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, integers of too many digits
        raise InvalidManifest(f"{what}: malformed JSON: {e}") from None
    except RecursionError:
        raise InvalidManifest(f"{what}: malformed JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise InvalidManifest(f"{what}: expected a JSON object, found {_kind(obj)}")
    return obj


# -- checking the types of fields read from a document; each failure is one InvalidManifest line -----


def _kind(value: Any) -> str:
    """The JSON name of a value's type, for messages (the value itself may be huge)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidManifest(f"{what}: expected a string, found {_kind(value)}")
    return value


def _opt_str(obj: dict[str, Any], key: str, what: str) -> str | None:
    value = obj.get(key)
    return None if value is None else _str(value, f"{what}: {key!r}")


def _opt_dict(obj: dict[str, Any], key: str, what: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidManifest(f"{what}: {key!r} must be an object, found {_kind(value)}")
    return value


def _opt_list(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidManifest(f"{what}: {key!r} must be an array, found {_kind(value)}")
    return value


def _str_list(obj: dict[str, Any], key: str, what: str) -> list[str] | None:
    value = obj.get(key)
    if value is None:
        return None
    items = _opt_list(obj, key, what)
    for item in items:
        _str(item, f"{what}: {key!r} item")
    return items


def _str_map(obj: dict[str, Any], key: str, what: str) -> dict[str, str]:
    """An object of string values, such as annotations or labels ({} when absent or null)."""
    value = _opt_dict(obj, key, what) or {}
    for name, item in value.items():
        _str(item, f"{what}: {key!r} value of {name!r}")
    return dict(value)


def _digest(value: Any, what: str) -> Digest:
    try:
        if isinstance(value, str) and value.endswith("\n"):  # Digest's `$` lets one through
            raise InvalidReference(value)
        return Digest(value)
    except InvalidReference:
        shown = repr(value)
        if isinstance(value, str) and len(shown) > 100:
            shown = repr(value[:60]) + "..."  # the algorithm, and enough of the rest to know it by
        elif len(shown) > 100 or isinstance(value, list | dict):
            shown = _kind(value)
        expected = " or ".join(
            f"{name}:<{digits} lowercase hex digits>" for name, digits in ALGORITHMS.items()
        )
        raise InvalidManifest(f"{what} {shown}: expected {expected}") from None


@dataclass
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    artifact_type: str | None = None
    urls: list[str] | None = None

    @property
    def distributable(self) -> bool:
        """False for a non-distributable (foreign) layer: its blob is neither pushed nor pulled."""
        return self.media_type not in NON_DISTRIBUTABLE_TYPES

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.urls is not None:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> Descriptor:
        if not isinstance(obj, dict):
            raise InvalidManifest(f"{what}: expected a descriptor object, found {_kind(obj)}")
        for key in ("mediaType", "digest", "size"):
            if key not in obj:
                raise InvalidManifest(f"{what}: missing field {key!r}")
        size = obj["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifest(
                f"{what}: invalid size: expected a non-negative integer, found {_kind(size)}"
            )
        return cls(
            media_type=_str(obj["mediaType"], f"{what}: 'mediaType'"),
            digest=_digest(obj["digest"], f"{what}: invalid digest"),
            size=size,
            annotations=_str_map(obj, "annotations", what),
            platform=_opt_dict(obj, "platform", what),
            artifact_type=_opt_str(obj, "artifactType", what),
            urls=_str_list(obj, "urls", what),
        )


@dataclass
class Manifest:
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str] = field(default_factory=dict)
    subject: Descriptor | None = None
    artifact_type: str | None = None
    media_type: str = MEDIA_MANIFEST

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.subject:
            out["subject"] = self.subject.to_json()
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def parse(cls, data: bytes) -> Manifest:
        obj = load_json(data, "manifest")
        media_type = _str(obj.get("mediaType", MEDIA_MANIFEST), "manifest: 'mediaType'")
        if media_type not in MANIFEST_TYPES or obj.get("schemaVersion") != 2:
            raise InvalidManifest(f"manifest: unsupported media type {media_type!r}")
        if not isinstance(obj.get("layers"), list):
            raise InvalidManifest(f"manifest: 'layers' must be an array, found {_kind(obj.get('layers'))}")
        if obj.get("config") is None:
            raise InvalidManifest("manifest: missing field 'config'")
        subject = obj.get("subject")
        return cls(
            config=Descriptor.from_json(obj["config"], "manifest config"),
            layers=[Descriptor.from_json(layer, "manifest layer") for layer in obj["layers"]],
            annotations=_str_map(obj, "annotations", "manifest"),
            subject=None if subject is None else Descriptor.from_json(subject, "manifest subject"),
            artifact_type=_opt_str(obj, "artifactType", "manifest"),
            media_type=media_type,
        )


@dataclass
class ImageConfig:
    """The image configuration blob: the runtime defaults, the layer diff_ids and the history."""

    architecture: str = "amd64"
    os: str = "linux"
    created: str | None = None
    author: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    diff_ids: list[Digest] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "os": self.os,
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": [str(d) for d in self.diff_ids]},
            "history": self.history,
        }
        for key, value in (("created", self.created), ("author", self.author), ("variant", self.variant)):
            if value:
                out[key] = value
        return out

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def parse(cls, data: bytes) -> ImageConfig:
        what = "image config"
        obj = load_json(data, what)
        rootfs = _opt_dict(obj, "rootfs", what) or {}
        diff_ids = [
            _digest(d, f"{what}: invalid diff_id") for d in _opt_list(rootfs, "diff_ids", f"{what}: rootfs")
        ]
        history = _opt_list(obj, "history", what)
        for item in history:
            if not isinstance(item, dict):
                raise InvalidManifest(f"{what}: 'history' items must be objects, found {_kind(item)}")
        return cls(
            architecture=_opt_str(obj, "architecture", what) or "",
            os=_opt_str(obj, "os", what) or "",
            created=_opt_str(obj, "created", what),
            author=_opt_str(obj, "author", what),
            config=_runtime_config(obj, what),
            diff_ids=diff_ids,
            history=list(history),
            variant=_opt_str(obj, "variant", what),
        )


def _runtime_config(obj: dict[str, Any], what: str) -> dict[str, Any]:
    """The `config` object; the fields a container is made from must have their spec's types."""
    config = _opt_dict(obj, "config", what) or {}
    where = f"{what}: 'config'"
    for key in ("Entrypoint", "Cmd", "Env"):
        _str_list(config, key, where)
    for key in ("WorkingDir", "User", "StopSignal"):
        _opt_str(config, key, where)
    _str_map(config, "Labels", where)
    return dict(config)


@dataclass
class Index:
    manifests: list[Descriptor] = field(default_factory=list)

    def for_platform(self, architecture: str) -> Descriptor | None:
        """The first image for linux on `architecture`; an entry that names no platform fits any."""
        for descriptor in self.manifests:
            plat = descriptor.platform or {}
            if plat.get("os", "linux") == "linux" and plat.get("architecture", architecture) == architecture:
                return descriptor
        return None

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_INDEX,
                "manifests": [m.to_json() for m in self.manifests],
            }
        )

    @classmethod
    def parse(cls, data: bytes) -> Index:
        obj = load_json(data, "image index")
        manifests = obj.get("manifests")
        if not isinstance(manifests, list):
            raise InvalidManifest(f"image index: 'manifests' must be an array, found {_kind(manifests)}")
        return cls([Descriptor.from_json(m, "image index entry") for m in manifests])
