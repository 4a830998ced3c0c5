"""The registry client's errors: a registry that did not answer, or did not answer what was asked.

They are storage errors (a user causes them with a name, a registry or credentials), and the ones
with a storage twin (`NotFound`, `DigestMismatch`) are that twin too, so callers that only know the
storage room still catch them.
"""

from __future__ import annotations

from storage.errors import DigestMismatch, NotFound, StorageError


class RegistryClientError(StorageError):
    """A registry that answered something other than what we asked for."""


class RegistryUnreachable(RegistryClientError):
    """No answer: connection refused, reset, timed out, or a body cut off half way."""


class RegistryNotFound(RegistryClientError, NotFound):
    """An unknown repository, tag, manifest or blob."""


class RegistryDigestMismatch(RegistryClientError, DigestMismatch):
    """Content from the registry whose digest is not the one asked for."""


class NonDistributableLayer(RegistryClientError):
    """An image layer whose blob no registry hands out (a non-distributable or foreign layer)."""


class RegistryAuthRequired(RegistryClientError):
    """A registry that wants credentials we do not have."""


class RegistryAuthFailed(RegistryAuthRequired):
    """A registry (or its token service) that refused the credentials we sent."""


def unreachable(registry: str, error: BaseException) -> RegistryUnreachable:
    """A connection error or timeout as one line that says why."""
    os_error = getattr(error, "os_error", None)
    if isinstance(os_error, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(error, TimeoutError):
        reason = "timed out"
    else:
        reason = str(error) or type(error).__name__
    return RegistryUnreachable(f"cannot reach registry {registry}: {reason}")
