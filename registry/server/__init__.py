"""The OCI distribution spec v1.1 server on aiohttp, one module per resource.

- `app`: the application (routes, auth and read-only middleware, error bodies) and `serve`;
- `state`: the application's keys and what every handler takes from a request;
- `bodies`: reading request bodies (limits, cut-off connections);
- `manifests`, `blobs`, `uploads`, `tags`, `referrers`: the handlers of each resource;
- `ranges`: `Range` headers and the 206/416 and `multipart/byteranges` answers;
- `access_log`: one line per request, as text or JSON.

Every handler validates what it takes from the URL (see `registry.storage.check_*`) before the
store sees it. Storage work runs in threads so one slow disk or bucket does not stall every connection.
"""
