"""The errors a user can cause, rooted in one class that carries the command line's exit status.

Every room's errors derive from `LazyctrError` (storage/ is the room every other imports), so the
command line maps an error to its status by asking the error, not by a table of classes. Content
that is not what was promised (a digest that does not match, a layer or TOC that cannot be read as
its descriptor says) forms the integrity family under `IntegrityError`.
"""

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: a bug of ours, not the user's input


def os_error_line(e: OSError) -> str:
    """An OSError as the one line a user sees: what went wrong, and on which file."""
    where = f": {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


class LazyctrError(Exception):
    """Base of every error a user can cause: one line of message, and `exit_code` for the CLI."""

    exit_code = EXIT_ERROR


class StorageError(LazyctrError):
    """Base of every error a user can cause through the storage room."""


class InvalidReference(StorageError):
    """A digest, image name or tag does not follow the OCI grammar."""

    exit_code = EXIT_USAGE


class UnsupportedDigestAlgorithm(InvalidReference):
    """A digest of the OCI grammar whose algorithm is not a registered one (sha256, sha512)."""


class NotFound(StorageError):
    """An image, blob or file that was asked for is not there."""


class InvalidManifest(StorageError):
    """An image manifest, index, config or descriptor that cannot be read as the OCI image spec says."""


class BadArchive(StorageError):
    """An input tarball that is malformed, truncated or uses something we do not support."""


class UnsafePath(StorageError):
    """A path from a tar entry, TOC or symlink that would escape the root it belongs to."""


class IntegrityError(StorageError):
    """Content that is not what its digest or descriptor promised: never used, always reported."""


class DigestMismatch(IntegrityError):
    """Content whose digest is not the one that was promised."""


class CorruptLayer(IntegrityError):
    """A layer blob, footer or table of contents that cannot be read as promised."""
