"""The benchmarks: one module a suite, each run as `python -m benchmarks.NAME` (or `lazyctr bench`)."""
