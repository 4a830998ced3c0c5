"""ADD of a local tar archive: telling an archive by its content (plain, gzip, bzip2, xz or zstd), and
unpacking it into the destination, as docker does. URLs are downloaded (builder/fetch.py), never
extracted.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO, BinaryIO, cast

import zstandard

from builder.context import BuildContext
from builder.copier import Destination, Writer
from builder.errors import BuildError
from builder.sources import ContextSource, Excludes, Match, walk
from storage.errors import StorageError
from storage.extract import extract_layer

TAR_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)


def archive_compression(context: BuildContext, path: str) -> str | None:
    """How the file at `path` is compressed if it is a tar archive ("" for a plain tar), else None.
    Like docker, by content: the decompressed first block must be a valid tar header."""
    with open(context.root / path, "rb") as f:
        head = f.read(8)
        compression = next((name for magic, name in TAR_MAGICS if head.startswith(magic)), "")
        f.seek(0)
        try:
            with decompressed(f, compression) as stream:
                block = stream.read(tarfile.BLOCKSIZE)
        except (OSError, EOFError, lzma.LZMAError, zstandard.ZstdError):
            return None
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return compression


def decompressed(f: IO[bytes], compression: str) -> BinaryIO:
    stream: object
    if compression == "gzip":
        stream = gzip.GzipFile(fileobj=f)
    elif compression == "bzip2":
        stream = bz2.BZ2File(f)
    elif compression == "xz":
        stream = lzma.LZMAFile(f)  # noqa: SIM115  # the caller closes it
    elif compression == "zstd":
        stream = zstandard.ZstdDecompressor().stream_reader(f, closefd=False)
    else:
        stream = f  # closed by the caller either way
    return cast(BinaryIO, stream)


def extract_archive(
    tree: ContextSource, match: Match, compression: str, dest: Destination, writer: Writer
) -> None:
    """Unpack a local archive into the destination directory: first into a private directory with
    the layer extractor (which refuses names and links leading out of it), then copied in like a
    directory, keeping the archive's owners unless --chown."""
    scratch = Path(tempfile.mkdtemp(prefix=".lazyctr-add-", dir=writer.upper.parent))
    try:
        with open(tree.context.root / match.real, "rb") as f, decompressed(f, compression) as stream:
            try:
                extract_layer(stream, "archive", scratch)
            except (StorageError, OSError, EOFError, lzma.LZMAError) as e:
                raise BuildError(f"ADD failed: {match.shown}: cannot extract archive: {e}") from None
            except zstandard.ZstdError as e:
                raise BuildError(f"ADD failed: {match.shown}: cannot extract archive: {e}") from None
        unpacked = ContextSource(BuildContext.plain(scratch), keep_owners=True)
        writer.parents(dest.parts)  # made like any missing parent, not from the scratch directory
        for rel, path, entry in walk(unpacked, "", Excludes(())):
            writer.entry([*dest.parts, *rel.split("/")], unpacked, path, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
