"""The marker file in each arena's root: proof that the root is the directory that was indexed.

An arena's root is marked with `MARKER` when this store first uses it (its
index holds nothing yet). A root that has been indexed but has no marker is
not the tree that was indexed: its filesystem is not mounted, or the directory
was replaced. Indexing it would record a delete for every file, so the indexer
leaves such an arena alone (`realizefs.real.indexer`). Only the marker's
presence counts: its text (the arena's name and the store's id) is for a
person who finds it, and an empty marker a user made does as well.

Blocking (a stat, or creating a small file): called from worker threads.
"""

from __future__ import annotations

import os

from realizefs.errors import FsError, NotFound
from realizefs.real.backing import Backing, Owner

MARKER = b".realize-arena"


def present(backing: Backing) -> bool:
    """Whether the arena root holds its marker (any kind of object under that name)."""
    try:
        backing.stat(MARKER)
    except NotFound:
        return False
    return True


def make(backing: Backing, arena: str, store_id: bytes) -> None:
    """Mark the arena root (an existing marker is left as it is)."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        fd, _ = backing.create(
            b"", MARKER, os.O_WRONLY | os.O_EXCL, 0o444, Owner(uid, gid, lambda g: g == gid)
        )
    except FsError as exc:
        if present(backing):
            return
        raise exc from None
    try:
        text = f"realizefs arena\nname = {arena}\nstore = {store_id.hex()}\n"
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
