"""Benchmarks behind ``make bench``; figures land in ``bench/results.json``."""
