"""lazyfs: the FUSE file system that fetches, verifies and caches file contents on demand. Not built yet."""
