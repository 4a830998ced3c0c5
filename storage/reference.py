"""Image references (`[host[:port]/]path[:tag][@digest]`) checked against the distribution grammar,
and the origin the store records for a pulled image (`[http://]host[:port]/repository`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from storage.digest import Digest
from storage.errors import InvalidReference

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # ASCII only: \w would take any Unicode letter
# Anchored with \Z, not $: `$` also matches before a trailing newline, so "tag\n" would pass.
_NAME_RE = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*\Z")
_REPOSITORY_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_RE = re.compile(rf"^{_TAG}\Z")
NAME_MAX = 255
DEFAULT_TAG = "latest"


def validate_repository(name: str) -> str:
    """A repository path as it appears in registry URLs (no host part)."""
    if len(name) > NAME_MAX or not _REPOSITORY_RE.match(name):
        raise InvalidReference(f"invalid repository name {name!r}")
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise InvalidReference(f"invalid tag {tag!r}")
    return tag


def names_registry(name: str) -> bool:
    """Whether an image name starts with a registry host (`host.domain`, `host:port`, `localhost`),
    as docker reads names: `library/busybox` names none, `127.0.0.1:5000/busybox` does."""
    first, slash, _ = name.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference; `name` may include a registry host."""

    name: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        rest, at, digest_text = text.partition("@")
        digest = Digest(digest_text) if at else None
        name, tag = rest, None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            name, tag = rest[:colon], validate_tag(rest[colon + 1 :])
        if len(name) > NAME_MAX or not _NAME_RE.match(name):
            raise InvalidReference(f"invalid image name {text!r}: expected [host/]name[:tag][@digest]")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(name, tag, digest)

    @property
    def domain(self) -> str | None:
        return self.name.partition("/")[0] if names_registry(self.name) else None

    @property
    def repository(self) -> str:
        """The name without its registry host."""
        return self.name.split("/", 1)[1] if self.domain else self.name

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def registry_ref(text: str) -> ImageRef:
    """A reference that names its registry host, as push and pull need."""
    ref = ImageRef.parse(text)
    if ref.domain is None:
        raise InvalidReference(
            f"{text!r} names no registry: expected HOST[:PORT]/NAME[:TAG], e.g. 127.0.0.1:5000/{text}"
        )
    return ref


INSECURE_PREFIX = "http://"  # on an origin: pulled with --insecure, so fetched over plain HTTP too


@dataclass(frozen=True)
class Origin:
    """The repository a lazily pulled image came from: where its missing layers are fetched."""

    registry: str
    repository: str
    insecure: bool = False

    @classmethod
    def parse(cls, text: str) -> Origin:
        ref = registry_ref(text.removeprefix(INSECURE_PREFIX))
        assert ref.domain is not None
        return cls(ref.domain, ref.repository, text.startswith(INSECURE_PREFIX))

    def __str__(self) -> str:
        return f"{INSECURE_PREFIX if self.insecure else ''}{self.registry}/{self.repository}"
