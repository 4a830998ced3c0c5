"""registry: the OCI distribution server (aiohttp) and its storage backends.

- `registry.server`: `make_app(root, read_only)` and `serve(root, host, port, read_only)`, the OCI
  distribution spec v1.1 API: ping, manifests (GET/HEAD/PUT/DELETE by tag and digest, byte-exact,
  4 MiB limit, `OCI-Subject`), blobs (GET/HEAD with single and multipart ranges, DELETE), uploads
  (monolithic, POST+PUT, chunked PATCH, status, cancel, cross-repository mount), tag listing with
  `n`/`last` paging, the referrers API with `artifactType` filtering, spec error bodies, read-only mode.
- `registry.storage`: the `BlobStore` interface and `FilesystemBlobStore`.
- `registry.errors`: one `RegistryError` subclass per spec error code.

Not built yet: the S3 backend, auth (htpasswd, tokens), TLS, cleanup of abandoned uploads, and the
client that pushes, pulls and reads ranges.
"""
