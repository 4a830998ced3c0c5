"""The application's state keys, and what every handler takes from its request."""

from __future__ import annotations

from aiohttp import web

from registry.auth import Access
from registry.storage import BlobStore, check_name

STORE = web.AppKey("store", BlobStore)
READ_ONLY = web.AppKey("read_only", bool)
ACCESS = web.AppKey("access", Access)
UPLOAD_TIMEOUT = web.AppKey("upload_timeout", float)
USER = web.RequestKey("user", str)  # who made the request, for the access log (unset: anonymous)

REPOSITORY = "/v2/{name:.+}"  # the routes' prefix: a repository name may hold slashes


def store_of(request: web.Request) -> BlobStore:
    return request.app[STORE]


def name_of(request: web.Request) -> str:
    return check_name(request.match_info["name"])
