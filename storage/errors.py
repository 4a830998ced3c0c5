"""The errors the storage room raises; each says what was expected and what was found."""


class StorageError(Exception):
    """Base of every error a user can cause through the storage room."""


class InvalidReference(StorageError):
    """A digest, image name or tag does not follow the OCI grammar."""


class NotFound(StorageError):
    """An image, blob or file that was asked for is not there."""


class DigestMismatch(StorageError):
    """Content whose digest is not the one that was promised."""


class CorruptLayer(StorageError):
    """A layer blob, footer or table of contents that cannot be read as promised."""


class BadArchive(StorageError):
    """An input tarball that is malformed, truncated or uses something we do not support."""


class UnsafePath(StorageError):
    """A path from a tar entry, TOC or symlink that would escape the root it belongs to."""
