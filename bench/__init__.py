"""Benchmarks of relayq-supervisor next to supervisord, circus and a raw respawn loop.

`python -m bench` (from the repository root) runs them and writes BENCHMARKS.md.
Scripts that print and write tables; nothing here asserts on wall time.
"""
