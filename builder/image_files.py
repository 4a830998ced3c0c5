"""A read-only view of an image's merged file tree for build steps: the tree from the layers' TOCs,
file contents read through each layer's LayerReader, and user/group names resolved through the
image's /etc/passwd and /etc/group."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from storage.layer_reader import LayerReader
from storage.store import Image, Store
from storage.tree import ImageTree


class ImageFiles:
    def __init__(self, tree: ImageTree, layers: list[LayerReader]) -> None:
        self.tree = tree
        self.layers = layers

    @classmethod
    @contextmanager
    def open(cls, store: Store, image: Image | None) -> Iterator[ImageFiles]:
        """The files of `image`; None is scratch, an empty tree."""
        raise NotImplementedError
        yield

    def read(self, path: str) -> bytes:
        raise NotImplementedError

    def user_ids(self, user: str, group: str | None) -> tuple[int, int]:
        raise NotImplementedError
