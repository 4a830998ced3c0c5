"""registry: the OCI distribution server (aiohttp), its storage, auth, and the client.

- `registry.server`: the server, one module per resource (see its package docstring);
  `registry.server.app.make_app` and `serve` assemble it.
- `registry.storage`: `BlobStore`, the repository logic (blobs, links, tags, manifests, referrers,
  upload sessions) written once above a storage driver (`registry.driver`): `registry.filesystem`
  or `registry.s3`; `registry.blobcache` keeps whole blobs locally for S3.
- `registry.auth`, `registry.htpasswd`, `registry.tokens`: who may do what (Basic, bearer tokens).
- `registry.client` and its peers: pushing, pulling and reading ranges from any OCI registry.
- `registry.errors`: one `RegistryError` subclass per spec error code.
"""
