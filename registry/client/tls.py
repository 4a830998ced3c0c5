"""TLS of the registry client: one verified context, made when a registry first speaks TLS.

aiohttp makes two TLS contexts when it is imported, each loading the system's CA bundle: about
40 ms of CPU in every process that imports it, twice on the path of a lazy start (its `pull` and
its mount daemon), whether or not any registry it talks to speaks TLS (a local registry, an
--insecure one, a rack's cache often do not). `import_aiohttp` imports it with OpenSSL's default
trust paths pointed at nothing, so those two contexts trust no one: a request that fell back on
them would fail verification, closed and never open. Every request the client sends names its
context instead (`for_url`): for https, a default context made on first use, which reads the
trust paths then (so SSL_CERT_FILE and SSL_CERT_DIR keep their usual meaning).
"""

from __future__ import annotations

import functools
import os
import ssl
import sys

from yarl import URL

_TRUST_PATHS = ("SSL_CERT_FILE", "SSL_CERT_DIR")
_NOWHERE = "/nonexistent/lazyctr-no-trust-at-import"


def import_aiohttp() -> None:
    """Import aiohttp without loading the CA bundle twice (see the module's docstring); a process
    that imported it already keeps it as it is."""
    if "aiohttp" in sys.modules:
        return
    saved = {name: os.environ.get(name) for name in _TRUST_PATHS}
    os.environ.update(dict.fromkeys(_TRUST_PATHS, _NOWHERE))
    try:
        import aiohttp  # noqa: F401
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@functools.cache
def verified_context() -> ssl.SSLContext:
    """The context every https request of the client uses: the system's trust store (or
    SSL_CERT_FILE/SSL_CERT_DIR), hostnames checked."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    return context


def for_url(url: URL) -> ssl.SSLContext | bool:
    """What a request to `url` passes as aiohttp's `ssl`: the verified context for https; plain
    HTTP needs none (True is aiohttp's default and means nothing there)."""
    return verified_context() if url.scheme == "https" else True
