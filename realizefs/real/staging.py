"""The staging directory in each arena's root: where the daemon writes a file before it is Real.

A file is realized by writing it in full under `STAGING` (``.realize-tmp``
in the arena's root, on the same filesystem as its destination), fsyncing it
and renaming it into place: a crash leaves at worst a leftover here, never a
half-written file at its path. `STAGING` is reserved like the marker: the
mount neither shows it nor lets a name be made there, and the indexer never
indexes it (a file renamed out of it is a new file where it lands).
Leftovers of a crash are removed when the arena is first walked (`clear`).

Blocking calls: from worker threads, or briefly on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from realizefs.errors import Exists, FsError, NotFound
from realizefs.real.backing import Backing, Owner, join

STAGING = b".realize-tmp"


def reserved(rel: bytes) -> bool:
    """Whether *rel* is the staging directory or inside it."""
    return rel == STAGING or rel.startswith(STAGING + b"/")


def _name(backing: Backing) -> bytes:
    """A new name in the staging directory (made if missing)."""
    root = os.geteuid(), os.getegid()
    with contextlib.suppress(Exists, FileExistsError):
        backing.mkdir(b"", STAGING, 0o700, Owner(*root, lambda g: g == root[1]))
    return secrets.token_hex(8).encode()


def stage(backing: Backing, mode: int, owner: Owner) -> tuple[int, bytes]:
    """A new empty file in the staging directory, open for writing: (descriptor, its path
    from the arena root)."""
    name = _name(backing)
    fd, _ = backing.create(STAGING, name, os.O_WRONLY | os.O_EXCL, mode, owner)
    return fd, join(STAGING, name)


def stage_dir(backing: Backing, mode: int, owner: Owner) -> tuple[bytes, os.stat_result]:
    """A new empty directory in the staging directory: its path, its attributes."""
    name = _name(backing)
    return join(STAGING, name), backing.mkdir(STAGING, name, mode, owner)


def stage_link(backing: Backing, target: bytes, owner: Owner) -> tuple[bytes, os.stat_result]:
    """A new symlink to *target* in the staging directory: its path, its attributes."""
    name = _name(backing)
    return join(STAGING, name), backing.symlink(STAGING, name, target, owner)


def discard(backing: Backing, rel: bytes) -> None:
    """Remove a staged file, symlink or (empty) directory; gone already is no error."""
    name = rel.rsplit(b"/", 1)[-1]
    with contextlib.suppress(NotFound, FileNotFoundError):
        try:
            backing.unlink(STAGING, name)
        except IsADirectoryError:
            backing.rmdir(STAGING, name)


def clear(backing: Backing, before_ns: int) -> int:
    """Remove what a crash left staged: files last written before *before_ns* (the daemon's
    start; a realize under way now is left alone); how many."""
    try:
        entries = backing.listdir(STAGING)
    except FsError:
        return 0
    removed = 0
    for name, st in entries:
        if st.st_mtime_ns < before_ns:
            with contextlib.suppress(FsError):
                backing.unlink(STAGING, name)
                removed += 1
    return removed
