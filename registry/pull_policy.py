"""Pull if missing: what `lazyctr run` and a Dockerfile's FROM do with an image the store lacks.

The name is looked up in the store first; only a name that starts with a registry host is pulled
(lazily for a container, eagerly for a build). asyncio, the registry client and the workflows are
imported only then: a container of an image that is here starts without loading them (~0.3 s).
"""

from __future__ import annotations

from storage.errors import NotFound, StorageError
from storage.reference import names_registry
from storage.store import Image, Store


class PullFailed(StorageError):
    """An image that is not in the store and could not be pulled from the registry its name names."""


def image_or_pull(store: Store, name: str, lazy: bool, insecure: bool = False) -> Image:
    """The image `name` in the store, else pulled from the registry its name starts with.

    Not there and no registry in the name: NotFound. A pull that fails: PullFailed, which says why.
    """
    try:
        return store.image(name)
    except NotFound:
        if not names_registry(name):
            raise NotFound(
                f"image not known: {name} (not in the store, and no registry host in the name)"
            ) from None
    import asyncio

    from registry.transfer import pull_image, pull_lazy

    pull = pull_lazy(store, name, insecure) if lazy else pull_image(store, name, insecure)
    try:
        return asyncio.run(pull)
    except StorageError as e:
        raise PullFailed(f"pulling {name}: {e}") from e
