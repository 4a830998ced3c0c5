"""Image references follow the distribution grammar."""

from __future__ import annotations

import pytest

from storage.errors import InvalidReference
from storage.reference import ImageRef


@pytest.mark.parametrize(
    ("text", "name", "tag", "domain"),
    [
        ("busybox", "busybox", "latest", None),
        ("busybox:1.36", "busybox", "1.36", None),
        ("library/busybox:musl", "library/busybox", "musl", None),
        ("localhost:5000/app", "localhost:5000/app", "latest", "localhost:5000"),
        (
            "registry.example.com/a/b-c/d_e:v1.0-rc",
            "registry.example.com/a/b-c/d_e",
            "v1.0-rc",
            "registry.example.com",
        ),
    ],
)
def test_valid_references(text: str, name: str, tag: str, domain: str | None) -> None:
    ref = ImageRef.parse(text)
    assert (ref.name, ref.tag, ref.domain) == (name, tag, domain)


def test_digest_reference() -> None:
    ref = ImageRef.parse("busybox@sha256:" + "a" * 64)
    assert ref.tag is None and ref.digest == "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "text", ["Busybox", "bad..name", "a/../b", "", "x:" + "t" * 200, "name:", "-x", "a//b"]
)
def test_invalid_references(text: str) -> None:
    with pytest.raises(InvalidReference):
        ImageRef.parse(text)
