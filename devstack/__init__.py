"""Obtain and run real backends locally, for `make run`, the tests and the benchmarks.

Only the standard library is used here, so this package works before the project's own
dependencies are installed. See `devstack.triton` for NVIDIA Triton Inference Server.
"""
