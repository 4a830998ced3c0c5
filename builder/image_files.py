"""A read-only view of an image's merged file tree for build steps: the tree from the layers' TOCs,
file contents read (and verified) through each layer's LayerReader, and user and group names
resolved through the image's /etc/passwd and /etc/group, as BuildKit resolves `--chown` names."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from builder.errors import BuildError
from storage.errors import NotFound, StorageError
from storage.layer_reader import LayerReader
from storage.paths import resolve
from storage.store import Image, Store
from storage.tree import ImageTree, Node

MAX_ID = (1 << 32) - 2  # (uid_t)-1 means "unchanged" to chown


class ImageFiles:
    def __init__(self, tree: ImageTree, layers: list[LayerReader], name: str = "scratch") -> None:
        self.tree = tree
        self.layers = layers
        self.name = name

    @classmethod
    @contextmanager
    def open(cls, store: Store, image: Image | None) -> Iterator[ImageFiles]:
        """The files of `image`; None is scratch, an empty tree."""
        if image is None:
            yield cls(ImageTree(), [])
            return
        with ExitStack() as stack:
            try:
                layers = stack.enter_context(store.open_layers(image))
                tree = ImageTree.from_tocs([layer.toc for layer in layers])
            except StorageError as e:  # a layer without a TOC or blob: it cannot be read lazily
                raise BuildError(f"cannot read the files of {image.name}: {e}") from None
            yield cls(tree, layers, image.name)

    def node(self, path: str, follow_last: bool = True) -> Node | None:
        """The node at `path` (symlinks resolved inside the image), None if there is none."""
        try:
            return self.tree.lookup(path, follow_last)
        except (NotFound, StorageError):
            return None

    def exact(self, parts: list[str]) -> Node | None:
        """The node at `parts`, a path already resolved: no symlink on the way is followed."""
        node: Node | None = self.tree.root
        for part in parts:
            node = (node.children or {}).get(part) if node is not None else None
        return node

    def resolve(self, path: str) -> list[str]:
        """The components of the path `path` leads to, symlinks followed inside the image (as if it
        were the root), the last one too."""

        def link_at(parts: list[str]) -> str | None:
            node = self.exact(parts)
            return node.entry.link_name if node is not None and node.entry.type == "symlink" else None

        try:
            return resolve(path, link_at, follow_last=True)
        except StorageError as e:
            raise BuildError(f"{path}: {e}") from None

    def iter_content(self, node: Node) -> Iterator[bytes]:
        """A regular file's contents, chunk by chunk, each verified against its TOC digest."""
        return self.layers[node.layer].iter_file(node.content)

    def read(self, path: str) -> bytes:
        node = self.node(path)
        if node is None or node.kind != "reg":
            raise BuildError(f"{path}: no such file in {self.name}")
        try:
            return b"".join(self.iter_content(node))
        except StorageError as e:
            raise BuildError(f"{path} in {self.name}: {e}") from None

    def user_ids(self, user: str, group: str | None) -> tuple[int, int]:
        """Numbers pass through; a user name gives its uid and primary gid from /etc/passwd (a number
        without a group gives the same number as gid, like BuildKit); a group name is looked up in
        /etc/group."""
        if user.isdigit():
            uid = gid = _number(user, "user")
        else:
            entry = self._lookup("/etc/passwd", user, min_fields=4)
            if entry is None:
                raise BuildError(f"unable to find user {user}")
            uid, gid = _number(entry[2], "user"), _number(entry[3], "group")
        if group is not None:
            if group.isdigit():
                gid = _number(group, "group")
            else:
                entry = self._lookup("/etc/group", group, min_fields=3)
                if entry is None:
                    raise BuildError(f"unable to find group {group}")
                gid = _number(entry[2], "group")
        return uid, gid

    def _lookup(self, path: str, name: str, min_fields: int) -> list[str] | None:
        node = self.node(path)
        if node is None or node.kind != "reg":
            return None
        for line in self.read(path).decode("utf-8", "replace").splitlines():
            fields = line.split(":")
            if len(fields) >= min_fields and fields[0] == name:
                return fields
        return None


def _number(text: str, what: str) -> int:
    if not text.isdigit() or int(text) > MAX_ID:
        raise BuildError(f"invalid {what} id {text!r}")
    return int(text)
