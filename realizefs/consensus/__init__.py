"""Consensus: the pure rules of versions and what wins (no I/O, no realizefs imports but types/errors)."""
