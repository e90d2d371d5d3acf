"""Peers: identity, TLS, the sans-I/O protocol and connections (knows nothing of store or cache)."""
