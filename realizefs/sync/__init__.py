"""Sync: what peers tell each other of their arenas, over `realizefs.peers`, into `realizefs.store`.

Depends on peers (connections, methods), store (the index) and consensus
(versions); nothing below imports it. The daemon runs its services.
"""
