"""Benchmarks for tensorgate: load generator, bare pass-through proxy and scenario runners."""
