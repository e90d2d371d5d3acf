"""realizefs: a peer-to-peer file-syncing filesystem (Real files on disk, Unreal on demand)."""

__version__ = "0.1.0"
