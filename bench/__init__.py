"""Benchmark of this service beside the SSE servers users would otherwise pick.

``python -m bench`` (see ``bench/README.md``).
"""
