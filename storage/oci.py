"""OCI image types (descriptor, manifest, image config, index) and their canonical JSON form.

Canonical JSON (sorted keys, no spaces) makes the same content give the same digest. Parsing is
tolerant of unknown fields and of Docker schema 2 media types, which are read as their OCI twins.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from storage.digest import Digest
from storage.errors import CorruptLayer

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

MANIFEST_TYPES = {MEDIA_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {MEDIA_INDEX, DOCKER_MANIFEST_LIST}
LAYER_TYPES = {MEDIA_LAYER_TAR, MEDIA_LAYER_GZIP, MEDIA_LAYER_ZSTD, DOCKER_LAYER_TAR, DOCKER_LAYER_GZIP}
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptLayer(f"{what}: malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CorruptLayer(f"{what}: expected a JSON object")
    return obj


@dataclass
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: Any, what: str = "descriptor") -> Descriptor:
        try:
            size = obj["size"]
            if not isinstance(size, int) or size < 0:
                raise CorruptLayer(f"{what}: invalid size {size!r}")
            return cls(
                media_type=str(obj["mediaType"]),
                digest=Digest(obj["digest"]),
                size=size,
                annotations=dict(obj.get("annotations") or {}),
                platform=obj.get("platform"),
                artifact_type=obj.get("artifactType"),
            )
        except (KeyError, TypeError) as e:
            raise CorruptLayer(f"{what}: missing or invalid field {e}") from None


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
        media_type = obj.get("mediaType", MEDIA_MANIFEST)
        if media_type not in MANIFEST_TYPES or obj.get("schemaVersion") != 2:
            raise CorruptLayer(f"manifest: unsupported media type {media_type!r}")
        layers = obj.get("layers")
        if not isinstance(layers, list):
            raise CorruptLayer("manifest: 'layers' must be a list")
        subject = obj.get("subject")
        return cls(
            config=Descriptor.from_json(obj.get("config"), "manifest config"),
            layers=[Descriptor.from_json(layer, "manifest layer") for layer in layers],
            annotations=dict(obj.get("annotations") or {}),
            subject=Descriptor.from_json(subject, "manifest subject") if subject else None,
            artifact_type=obj.get("artifactType"),
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
        obj = load_json(data, "image config")
        rootfs = obj.get("rootfs") or {}
        try:
            diff_ids = [Digest(d) for d in rootfs.get("diff_ids") or []]
        except AttributeError:
            raise CorruptLayer("image config: 'rootfs' must be an object") from None
        return cls(
            architecture=str(obj.get("architecture", "")),
            os=str(obj.get("os", "")),
            created=obj.get("created"),
            author=obj.get("author"),
            config=dict(obj.get("config") or {}),
            diff_ids=diff_ids,
            history=list(obj.get("history") or []),
            variant=obj.get("variant"),
        )


@dataclass
class Index:
    manifests: list[Descriptor] = field(default_factory=list)

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
            raise CorruptLayer("image index: 'manifests' must be a list")
        return cls([Descriptor.from_json(m, "index entry") for m in manifests])
