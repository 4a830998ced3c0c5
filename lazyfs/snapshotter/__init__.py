"""containerd's second front door to the lazy engine: a remote snapshotter served over gRPC.

api.py makes the Python stubs of containerd's Snapshots API from the .proto files Debian ships,
metadata.py keeps the snapshots' records across restarts, service.py answers containerd's calls.
"""
