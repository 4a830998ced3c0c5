"""The access log: a line per request, `REMOTE USER "METHOD PATH" STATUS BYTES DURATIONs` or a JSON object."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from registry.server.state import USER


class AccessLog(AbstractAccessLogger):
    """aiohttp's access logger class; its `log_format` is "text" or "json"."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        entry = access_entry(request, response, time)
        if self.log_format == "json":
            self.logger.info(json.dumps(entry, separators=(",", ":")))
        else:
            line = '{remote} {user} "{method} {path}" {status} {bytes} {duration:.6f}s'
            self.logger.info(line.format(**{k: "-" if v is None else v for k, v in entry.items()}))


def access_entry(request: web.BaseRequest, response: web.StreamResponse, duration: float) -> dict[str, Any]:
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "remote": request.remote,
        "user": request.get(USER),
        "method": request.method,
        "path": request.path_qs,
        "status": response.status,
        "bytes": body_bytes(request, response),
        "duration": round(duration, 6),
    }


def body_bytes(request: web.BaseRequest, response: web.StreamResponse) -> int:
    """The length of the body sent. Every response we send declares it; aiohttp's own `body_length`
    counts the headers too and misses what sendfile sent."""
    if request.method == "HEAD" or response.status in (204, 304):
        return 0
    return response.content_length if response.content_length is not None else response.body_length


def access_logger(stream: Any = None) -> logging.Logger:
    """The logger the access lines go to: standard output, the bare line, nothing else added."""
    logger = logging.getLogger("lazyctr.registry.access")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(stream or sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger
