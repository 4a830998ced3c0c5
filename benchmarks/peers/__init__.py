"""Peer systems measured next to lazyctr in the benchmarks, each in its own module (stargz: stargz.py)."""
