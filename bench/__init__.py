"""Benchmarks, never part of the test suite: ``python -m bench [all|cps|calls|media]``."""
