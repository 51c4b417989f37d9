"""Benchmarks of StyleCap against faithful re-implementations of the reference ClipCap algorithms."""
