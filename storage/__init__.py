"""storage: digests, the local OCI store, the zstd:chunked layer codec and OCI types.

This room imports no other room of lazyctr; every other room builds on it.
"""
