"""Benchmarks run by `make bench`; each writes JSON under benchmarks/results/."""
