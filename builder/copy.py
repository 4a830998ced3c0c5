"""COPY and ADD as one step: the files its sources name written into the upper directory that becomes
the step's layer. What it reads, and the digest of that for its cache key, is builder/sources.py; how
entries are written, builder/copier.py; archives, builder/archives.py; URLs, builder/fetch.py.

The rules are BuildKit's: a directory source copies its contents, not itself; several sources (or a
wildcard matching several) need a directory destination; heredocs become 0644 files and downloads
0600 ones; ADD extracts local tar archives (told by content, not name) and downloads URLs, which it
never extracts.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from builder.archives import archive_compression, extract_archive
from builder.context import BuildContext
from builder.copier import Destination, Writer, owner_ids, parse_chmod
from builder.errors import BuildError
from builder.fetch import fetch, is_url
from builder.image_files import ImageFiles
from builder.sources import (
    ContextSource,
    CopyRequest,
    Excludes,
    Source,
    check_sources,
    copy_digest,
    heredoc_for,
    local_matches,
    os_errors,
    source_tree,
    walk,
)

HEREDOC_MODE = 0o644
DOWNLOAD_MODE = 0o600
MULTIPLE_SOURCES = (
    "When using COPY with more than one source file, the destination must be a directory and end with a /"
)

__all__ = ["MULTIPLE_SOURCES", "CopyRequest", "copy_digest", "copy_step"]


def copy_step(
    request: CopyRequest,
    source: BuildContext | ImageFiles,
    target: ImageFiles,
    upper: Path,
    clamp_mtime_ns: int | None = None,
) -> None:
    """Write what the step adds into `upper`, an empty directory laid out like an overlayfs upper dir
    (the caller turns it into a layer with storage.diff.upper_to_tar). `target` is the image the
    step writes onto: it decides whether dest is an existing directory, the metadata of parents that
    exist, and user and group names."""
    with os_errors(request):
        _copy_step(request, source, target, upper, clamp_mtime_ns)


def _copy_step(
    request: CopyRequest,
    source: BuildContext | ImageFiles,
    target: ImageFiles,
    upper: Path,
    clamp_mtime_ns: int | None,
) -> None:
    check_sources(request)
    tree = source_tree(source)
    owner = owner_ids(request.chown, target)
    chmod = parse_chmod(request.chmod) if request.chmod is not None else None
    writer = Writer(upper, None if request.link else target, owner, chmod, clamp_mtime_ns)
    dest = Destination.of(request, target)

    local = local_matches(request, tree)
    count = sum(len(found) for _, found in local) + sum(1 for s in request.sources if is_url(s))
    count += sum(1 for s in request.sources if heredoc_for(request, s) is not None)
    if (len(request.sources) > 1 or count > 1) and not dest.is_dir:
        raise BuildError(MULTIPLE_SOURCES)

    for src in request.sources:
        heredoc = heredoc_for(request, src)
        if heredoc is not None:
            parts = dest.file_parts(heredoc.name)
            writer.parents(parts[:-1])
            writer.file(parts, heredoc.body.encode(), HEREDOC_MODE, None)
        elif is_url(src):
            download = fetch(src, request.checksum)
            parts = dest.file_parts(download.filename)
            writer.parents(parts[:-1])
            with open(download.path, "rb") as f:
                writer.file(parts, _chunks(f), DOWNLOAD_MODE, download.mtime_ns)
    excludes = Excludes(request.excludes)
    for _, found in local:
        for match in found:
            if request.add and match.entry.kind == "reg" and isinstance(tree, ContextSource):
                compression = archive_compression(tree.context, match.real)
                if compression is not None:
                    extract_archive(tree, match, compression, dest, writer)
                    continue
            if match.entry.kind == "dir":
                _copy_dir(tree, match.real, dest.parts, excludes, writer)
            else:
                parts = dest.file_parts(posixpath.basename(match.shown))
                writer.parents(parts[:-1])
                writer.entry(parts, tree, match.real, match.entry)
    writer.finish()


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while data := f.read(1 << 20):
        yield data


def _copy_dir(tree: Source, root: str, dest: list[str], excludes: Excludes, writer: Writer) -> None:
    writer.parents(dest[:-1])
    if dest:
        root_entry = tree.entry(root)
        assert root_entry is not None
        writer.directory(dest, root_entry, keep_existing=True)
    for rel, path, entry in walk(tree, root, excludes):
        writer.entry([*dest, *rel.split("/")], tree, path, entry)
