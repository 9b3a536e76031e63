"""Benchmarks: one module per benchmark, run with `python -m benchmarks.<name>`; results in results/."""
