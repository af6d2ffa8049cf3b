"""Decoding stages: sans-I/O, fed records, returning records."""
