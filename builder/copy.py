"""COPY and ADD: which files a step reads (and their digest for the cache key), and writing them into
an overlayfs-style upper directory that becomes the step's layer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from builder.context import BuildContext
from builder.dockerfile import Heredoc
from builder.image_files import ImageFiles


@dataclass(frozen=True)
class CopyRequest:
    sources: list[str]  # already variable-expanded; for ADD may be URLs
    dest: str  # already expanded; relative dests are relative to workdir
    workdir: str = "/"
    chown: str | None = None  # "user[:group]", names or ids
    chmod: str | None = None  # octal "755" or symbolic "u+x"
    link: bool = False  # --link: the layer must not depend on the base
    excludes: tuple[str, ...] = ()  # --exclude patterns
    heredocs: tuple[Heredoc, ...] = ()  # COPY <<EOF /dest: heredoc names appear in `sources`
    add: bool = False  # ADD: local archives are extracted, URLs downloaded
    checksum: str | None = None  # ADD --checksum=sha256:... for URLs
    keep_git_dir: bool = False  # git sources are refused


def copy_digest(request: CopyRequest, source: BuildContext | ImageFiles) -> str:
    """sha256 hex over everything the step reads (paths, types, modes, link targets, contents; no
    mtimes), for the step's cache key."""
    raise NotImplementedError


def copy_step(
    request: CopyRequest,
    source: BuildContext | ImageFiles,
    target: ImageFiles,
    upper: Path,
    clamp_mtime_ns: int | None = None,
) -> None:
    """Write what the step adds into `upper`, an empty overlayfs-style upper directory."""
    raise NotImplementedError
