"""Benchmarks (run `python -m bench`; see bench/run.py)."""
