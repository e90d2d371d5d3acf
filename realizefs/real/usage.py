"""Counting what an arena's Real holds (files, bytes, directories).

A walk of the backing tree by descriptors (never following symlinks), meant
for a worker thread. Directories the daemon cannot read are counted and
reported, not treated as empty. The content index (a later layer) will keep
these counts incrementally; until then the status file asks for a walk.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from realizefs.errors import FsError
from realizefs.real.backing import Backing


@dataclass(frozen=True)
class Usage:
    files: int = 0
    bytes: int = 0
    directories: int = 0
    other: int = 0  # symlinks, FIFOs, sockets
    unreadable: int = 0  # directories that could not be listed


def count(backing: Backing) -> Usage:
    files = size = dirs = other = unreadable = 0
    pending = [b""]
    while pending:
        rel = pending.pop()
        try:
            entries = backing.listdir(rel)
        except FsError:
            unreadable += 1
            continue
        for name, st in entries:
            kind = stat.S_IFMT(st.st_mode)
            if kind == stat.S_IFREG:
                files += 1
                size += st.st_size
            elif kind == stat.S_IFDIR:
                dirs += 1
                pending.append(rel + b"/" + name if rel else name)
            else:
                other += 1
    return Usage(files, size, dirs, other, unreadable)
