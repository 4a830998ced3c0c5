"""The registry room's errors: one class per failure, carrying its distribution-spec code and status."""

from __future__ import annotations


class RegistryError(Exception):
    """A failure a client can cause; `code` and `status` are the distribution spec's."""

    code = "UNKNOWN"
    status = 500
    headers: dict[str, str] = {}  # noqa: RUF012 (read-only: subclasses replace it)

    def __init__(self, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NameInvalid(RegistryError):
    """A repository name that does not follow the grammar."""

    code, status = "NAME_INVALID", 400


class NameUnknown(RegistryError):
    """A repository that holds nothing."""

    code, status = "NAME_UNKNOWN", 404


class ManifestUnknown(RegistryError):
    """A tag or manifest digest that is not in the repository."""

    code, status = "MANIFEST_UNKNOWN", 404


class ManifestInvalid(RegistryError):
    """A manifest body that is not a JSON object of a known media type, or a bad tag."""

    code, status = "MANIFEST_INVALID", 400


class ManifestBlobUnknown(RegistryError):
    """A manifest referring to a blob or manifest the repository does not have."""

    code, status = "MANIFEST_BLOB_UNKNOWN", 404


class ManifestTooLarge(RegistryError):
    """A manifest over the size limit."""

    code, status = "SIZE_INVALID", 413


class BlobUnknown(RegistryError):
    """A blob that is not in the repository."""

    code, status = "BLOB_UNKNOWN", 404


class BlobUploadUnknown(RegistryError):
    """An upload session that does not exist (never started, finished or cancelled)."""

    code, status = "BLOB_UPLOAD_UNKNOWN", 404


class BlobUploadInvalid(RegistryError):
    """A chunk that does not continue the upload where it stands, or a malformed range."""

    code, status = "BLOB_UPLOAD_INVALID", 416


class DigestInvalid(RegistryError):
    """Content that does not hash to the digest it was given under, or a malformed digest."""

    code, status = "DIGEST_INVALID", 400


class SizeInvalid(RegistryError):
    """A Content-Length that does not match the content."""

    code, status = "SIZE_INVALID", 400


class Unsupported(RegistryError):
    """An operation this registry does not perform."""

    code, status = "UNSUPPORTED", 405


class Denied(RegistryError):
    """A write to a read-only registry."""

    code, status = "DENIED", 403


class Unauthorized(RegistryError):
    """No credentials, or wrong ones, where the registry wants them."""

    code, status = "UNAUTHORIZED", 401
    headers = {"WWW-Authenticate": 'Basic realm="lazyctr"'}  # noqa: RUF012
