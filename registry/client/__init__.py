"""The registry client: the OCI distribution API of any registry, as calls.

- `api`: `RegistryClient`, the calls (manifests, blobs, uploads, referrers, byte ranges) and the
  checks of what comes back;
- `transport`: the HTTP session, retries, redirects and reading answer bodies;
- `auth`: the answer to a registry's 401 challenge (basic, bearer tokens), stored credentials;
- `byteranges`: byte ranges out of `206` and `multipart/byteranges` answers;
- `errors`: the client's errors;
- `tls`: the context of https requests (and aiohttp imported without loading the CA bundle twice).

The workflows that push and pull images (and write into the store) are in registry/transfer.py.
"""

from registry.client.tls import import_aiohttp

import_aiohttp()  # before any module of the client imports it (see registry/client/tls.py)

from registry.client.api import RegistryClient  # noqa: E402
from registry.client.errors import (  # noqa: E402
    NonDistributableLayer,
    RegistryAuthFailed,
    RegistryAuthRequired,
    RegistryClientError,
    RegistryDigestMismatch,
    RegistryNotFound,
    RegistryUnreachable,
)

__all__ = [
    "NonDistributableLayer",
    "RegistryAuthFailed",
    "RegistryAuthRequired",
    "RegistryClient",
    "RegistryClientError",
    "RegistryDigestMismatch",
    "RegistryNotFound",
    "RegistryUnreachable",
]
