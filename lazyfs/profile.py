"""Access profiles: which pieces of an image a container read while starting, in the order it read them.

Slacker's and eStargz's insight: startup reads a small, predictable set of files. A profile is
recorded once (`lazyctr run --record-profile`) and stored as an OCI artifact whose `subject` is the
image manifest, so adding one does not change the image's digest; `lazyctr push` pushes it along
and registries answer for it on their referrers API. A lazy mount that finds a profile prefetches
its pieces, in order, as soon as it is up.

A profile derived from an earlier version's (lazyfs.lineage) carries the annotation DERIVED_FROM
(that version's manifest digest); a profile recorded for the image itself is preferred to it.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from storage.digest import Digest
from storage.errors import CorruptLayer, StorageError
from storage.oci import MEDIA_EMPTY, MEDIA_MANIFEST, PROFILE_TYPE, Descriptor, Manifest, canonical_json
from storage.store import Image, Store

EMPTY = b"{}"
DERIVED_FROM = "io.lazyctr.profile.derived-from"  # on a derived profile: the version it comes from


def profile_manifest(
    store: Store, image: Image, accesses: list[dict[str, Any]], derived_from: Digest | None = None
) -> Manifest:
    """The artifact manifest for a profile, its blobs put in the store."""
    blob = canonical_json({"pieces": accesses})
    empty = Descriptor(MEDIA_EMPTY, store.put_blob(EMPTY), len(EMPTY))
    layer = Descriptor(PROFILE_TYPE, store.put_blob(blob), len(blob))
    subject = Descriptor(MEDIA_MANIFEST, image.descriptor.digest, image.descriptor.size)
    annotations = {DERIVED_FROM: str(derived_from)} if derived_from is not None else {}
    return Manifest(empty, [layer], annotations, subject=subject, artifact_type=PROFILE_TYPE)


def save_profile(
    store: Store, image: Image, accesses: list[dict[str, Any]], derived_from: Digest | None = None
) -> Descriptor:
    return store.add_referrer(profile_manifest(store, image, accesses, derived_from).to_bytes())


def load_profile(store: Store, image: Image) -> list[dict[str, Any]]:
    """The profile of `image` (its pieces in read order), or [] when there is none: the newest one
    recorded for it, else the newest derived one."""
    artifacts = []
    for descriptor in store.referrers(image.descriptor.digest, PROFILE_TYPE):
        with contextlib.suppress(StorageError):
            artifacts.append(store.read_blob(descriptor.digest))
    return best_profile(store, artifacts)


def best_profile(store: Store, artifacts: list[bytes]) -> list[dict[str, Any]]:
    """The pieces of the best of these profile artifact manifests (oldest first; their blobs in the
    store): the newest recorded one, else the newest derived one; [] if none can be read."""
    parsed: list[Manifest] = []
    for data in artifacts:
        with contextlib.suppress(StorageError):
            parsed.append(Manifest.parse(data))
    recorded = [m for m in parsed if DERIVED_FROM not in m.annotations]
    derived = [m for m in parsed if DERIVED_FROM in m.annotations]
    for artifact in [*reversed(recorded), *reversed(derived)]:
        try:
            return parse_profile(store.read_blob(artifact.layers[0].digest))
        except (StorageError, IndexError):
            continue
    return []


def parse_profile(data: bytes) -> list[dict[str, Any]]:
    try:
        pieces = json.loads(data)["pieces"]
        return [{"layer": str(Digest(p["layer"])), "digest": str(Digest(p["digest"]))} for p in pieces]
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptLayer(f"access profile is malformed: {e}") from None
