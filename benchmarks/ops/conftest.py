"""Micro-benchmarks run outside the test suite (tests/); no interpreter, no poisoning."""
