"""Tag listing, in lexical order, paged with `n` and `last` (and a `Link` to the next page)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from registry.server.state import REPOSITORY, name_of, store_of

routes = web.RouteTableDef()


@routes.get(REPOSITORY + "/tags/list")
async def list_tags(request: web.Request) -> web.Response:
    name = name_of(request)
    tags = await asyncio.to_thread(store_of(request).tags, name)
    last = request.query.get("last")
    if last is not None:
        tags = [t for t in tags if t > last]
    headers = {}
    n_text = request.query.get("n")
    if n_text is not None:
        if not n_text.isdigit():
            raise web.HTTPBadRequest(text=f"n must be a non-negative integer, not {n_text!r}")
        n = int(n_text)
        if len(tags) > n:
            tags = tags[:n]
            if tags:
                headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
    return web.json_response({"name": name, "tags": tags}, headers=headers)
