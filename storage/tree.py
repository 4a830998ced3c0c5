"""The merged file tree of an image, built from its layers' TOCs without touching any file data.

Layers stack as the OCI spec says: a later entry replaces an earlier one, `.wh.NAME` hides NAME
from the layers below, `.wh..wh..opq` hides everything a directory had below. Hard links point to
the entry that holds their data in the same layer. lazyfs's image source serves it (a mount,
`lazyctr ls` and `cat`), and the builder reads base images through it.
"""

from __future__ import annotations

import base64
import dataclasses
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from storage.errors import CorruptLayer, NotFound
from storage.paths import OPAQUE_WHITEOUT, WHITEOUT_PREFIX, resolve
from storage.toc import LayerToc, TocEntry


@dataclass(slots=True)
class Node:
    entry: TocEntry  # the metadata (mode, owner, times) of this path
    layer: int  # index of the layer the entry comes from
    children: dict[str, Node] | None = None  # for directories
    data: TocEntry | None = None  # for a hard link, the entry it links to (in the same layer)
    ino: int = 0  # its inode number, for a reader that numbers the tree (lazyfs)

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    @property
    def content(self) -> TocEntry:
        return self.data or self.entry

    @property
    def kind(self) -> str:
        """The file type seen by a reader: a hard link has the type of what it links to."""
        return self.content.type


OVERLAY_OPAQUE = "trusted.overlay.opaque"


def _implicit_dir(path: str) -> TocEntry:
    return TocEntry(type="dir", name="./" + path, mode=0o755, path=path or "")


@dataclass
class ImageTree:
    root: Node = field(default_factory=lambda: Node(_implicit_dir(""), -1, {}))

    @classmethod
    def from_tocs(cls, tocs: list[LayerToc]) -> ImageTree:
        tree = cls()
        for index, toc in enumerate(tocs):
            tree.add_layer(index, toc)
        return tree

    @classmethod
    def overlay_lowers(cls, tocs: Mapping[int, LayerToc]) -> ImageTree:
        """One directory per layer, named by its index, holding that layer alone as overlayfs reads
        a lower directory (what containerd stacks a remote snapshotter's layers with): `.wh.NAME` is
        a 0/0 character device NAME, `.wh..wh..opq` the opaque xattr on its directory."""
        tree = cls()
        assert tree.root.children is not None
        for index, toc in tocs.items():
            alone = cls()
            alone.add_layer(index, toc)
            alone._overlay_whiteouts(index, toc)
            tree.root.children[str(index)] = alone.root
        return tree

    def _overlay_whiteouts(self, layer: int, toc: LayerToc) -> None:
        for entry in toc.entries:
            parent_path, _, base = entry.path.rpartition("/")
            if not base.startswith(WHITEOUT_PREFIX):
                continue
            parent = self._make_dirs(parent_path, layer)
            assert parent.children is not None
            if base == OPAQUE_WHITEOUT:
                xattrs = {**parent.entry.xattrs, OVERLAY_OPAQUE: base64.b64encode(b"y").decode()}
                # A copy: the TOC's own entry stays as it is.
                parent.entry = dataclasses.replace(parent.entry, xattrs=xattrs)
            else:
                name = base.removeprefix(WHITEOUT_PREFIX)
                whiteout = dataclasses.replace(
                    entry, type="char", mode=0, size=0, dev_major=0, dev_minor=0, xattrs={},
                    name=posixpath.join(parent_path, name), path=posixpath.join(parent_path, name),
                )  # fmt: skip
                parent.children[name] = Node(whiteout, layer)

    def add_layer(self, layer: int, toc: LayerToc) -> None:
        """Stack one layer: its whiteouts first (they hide only what lies below, wherever they
        stand in the tar), then its entries."""
        by_path: dict[str, TocEntry] = {}  # made when the layer's first hard link needs it
        entries = []
        for entry in toc.entries:
            parent_path, _, base = entry.path.rpartition("/")
            if base == OPAQUE_WHITEOUT:
                parent = self._existing_dir(parent_path)
                if parent is not None and parent.children is not None:
                    parent.children.clear()
            elif base.startswith(WHITEOUT_PREFIX):
                parent = self._existing_dir(parent_path)
                if parent is not None and parent.children is not None:
                    parent.children.pop(base.removeprefix(WHITEOUT_PREFIX), None)
            else:
                entries.append(entry)
        for entry in entries:
            if not entry.path:
                if entry.type == "dir":
                    self.root.entry, self.root.layer = entry, layer
                continue
            parent_path, _, base = entry.path.rpartition("/")
            parent = self._make_dirs(parent_path, layer)
            assert parent.children is not None
            existing = parent.children.get(base)
            if entry.type == "dir" and existing is not None and existing.is_dir:
                existing.entry, existing.layer = entry, layer
            else:
                data = _link_target(entry, toc, by_path) if entry.type == "hardlink" else None
                children: dict[str, Node] | None = {} if entry.type == "dir" else None
                parent.children[base] = Node(entry, layer, children, data)

    def _existing_dir(self, path: str) -> Node | None:
        node: Node | None = self.root
        for part in path.split("/") if path else []:
            node = (node.children or {}).get(part) if node is not None else None
        return node if node is not None and node.is_dir else None

    def _make_dirs(self, path: str, layer: int) -> Node:
        node = self.root
        walked = ""
        for part in path.split("/") if path else []:
            walked = f"{walked}/{part}" if walked else part
            assert node.children is not None
            child = node.children.get(part)
            if child is None or not child.is_dir:
                child = node.children[part] = Node(_implicit_dir(walked), layer, {})
            node = child
        return node

    def lookup(self, path: str, follow_last: bool = True) -> Node:
        """The node at `path`, resolving symlinks as if the image root were `/`."""
        return self._resolve(path, follow_last)[1]

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """The canonical path (`a/b`, the root ``) of what `path` names, symlinks resolved as if
        the image root were `/`."""
        return "/".join(self._resolve(path, follow_last)[0])

    def _resolve(self, path: str, follow_last: bool) -> tuple[list[str], Node]:
        def node_at(parts: list[str]) -> Node:
            node = self.root
            for part in parts:
                if node.children is None or part not in node.children:
                    raise NotFound(f"no such file or directory in image: {path}")
                node = node.children[part]
            return node

        def link_at(parts: list[str]) -> str | None:
            node = node_at(parts)
            return node.entry.link_name if node.entry.type == "symlink" else None

        parts = resolve(path, link_at, follow_last)
        return parts, node_at(parts)

    def node(self, path: str) -> Node | None:
        """The node at exactly `path` (`a/b`, the root ``), no symlink followed; None if there is none."""
        node: Node | None = self.root
        for part in path.split("/") if path else []:
            children = node.children if node is not None else None
            node = children.get(part) if children is not None else None
        return node

    def nodes(self, node: Node | None = None) -> Iterator[Node]:
        """Every node below `node` in the order of `walk`, without making their paths."""
        node = node or self.root
        yield node
        if node.children:
            for name in sorted(node.children):
                yield from self.nodes(node.children[name])

    def walk(self, node: Node | None = None, path: str = "") -> Iterator[tuple[str, Node]]:
        """Every path below `node` (depth first, sorted), the root as ``."""
        node = node or self.root
        yield path, node
        for name in sorted(node.children or {}):
            child = (node.children or {})[name]
            yield from self.walk(child, posixpath.join(path, name) if path else name)


def check_hard_links(toc: LayerToc) -> None:
    """Raise CorruptLayer unless each hard link of the layer points to a file in it, as stacking
    the layer in a tree would (whiteouts aside): a TOC indexed for mounts has passed this."""
    by_path: dict[str, TocEntry] = {}
    for entry in toc.entries:
        base = entry.path.rpartition("/")[2]
        if entry.type == "hardlink" and base and not base.startswith(WHITEOUT_PREFIX):
            _link_target(entry, toc, by_path)


def _link_target(entry: TocEntry, toc: LayerToc, by_path: dict[str, TocEntry]) -> TocEntry:
    """The file a hard link's data is in; `by_path` (the layer's entries by path) is filled on first use."""
    if not by_path:
        by_path.update((e.path, e) for e in toc.entries)
    target = by_path.get(entry.link_name)
    seen = {entry.path}
    while target is not None and target.type == "hardlink" and target.path not in seen:
        seen.add(target.path)
        target = by_path.get(target.link_name)
    if target is None or target.type in ("hardlink", "dir"):
        raise CorruptLayer(f"hard link {entry.name} points to {entry.link_name!r}, not a file in its layer")
    return target
