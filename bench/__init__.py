"""Benchmarks: run each as `python -m bench.<name>`; they print numbers and assert nothing."""
