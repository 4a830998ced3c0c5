"""A stage as far as it is built: its layers, image config and history, the variables in scope, and
the cache key of its last file system step. Steps change it in place as they run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from builder.cache import LayerRef
from builder.run import DEFAULT_SHELL
from builder.variables import StageVariables
from storage.digest import Digest
from storage.importer import host_architecture
from storage.oci import MEDIA_CONFIG, MEDIA_MANIFEST, Descriptor, ImageConfig, Manifest
from storage.store import Image


def layer_refs(image: Image | None) -> list[LayerRef]:
    """An image's layers as a build state holds them (none for scratch)."""
    if image is None:
        return []
    return [LayerRef(d, i) for d, i in zip(image.manifest.layers, image.config.diff_ids, strict=True)]


@dataclass
class State:
    layers: list[LayerRef]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    variables: StageVariables
    key: str  # cache key of the last file system step
    workdir: str = "/"
    shell: list[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    user: str = ""
    author: str | None = None
    cmd_set: bool = False  # a CMD in this stage: an ENTRYPOINT after it keeps it

    def image(self, name: str = "build") -> Image:
        """An image object for this state, not stored: what runners and file views read."""
        config = ImageConfig(
            architecture=host_architecture(),
            config=dict(self.config),
            diff_ids=[layer.diff_id for layer in self.layers],
            history=list(self.history),
        )
        config_bytes = config.to_bytes()
        manifest = Manifest(
            Descriptor(MEDIA_CONFIG, Digest.of(config_bytes), len(config_bytes)),
            [layer.descriptor for layer in self.layers],
        )
        data = manifest.to_bytes()
        return Image(name, Descriptor(MEDIA_MANIFEST, Digest.of(data), len(data)), manifest, config)

    def files_image(self) -> Image | None:
        """The image whose files a step sees: None for an empty file system (scratch)."""
        return self.image() if self.layers else None
