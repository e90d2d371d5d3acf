"""Where a conflict's losing versions are kept in an arena, and how each copy is named.

A peer whose Real holds a losing version of a path moves it to
``<arena>/.realize-conflicts/<path>/<origin>-<hash><ext>`` (`copy_path`): the
origin peer's id and the content hash, both short, and the file's extension.
The name is the same on every peer, so several peers keeping one version make
one record. The directory is an ordinary one that syncs like any other; the
mount shows it under ``.realize/conflicts/<arena>/`` (`realizefs.vfs.conflicts`),
not in the arena's listing.

Pure functions of names; safe from any thread.
"""

from __future__ import annotations

from collections.abc import Sequence

CONFLICTS = b".realize-conflicts"  # in an arena's root
EXTENSION_MAX = 16  # bytes of a name's extension kept on its copies, dot included


def copy_name(name: bytes, origin: bytes, content: bytes) -> bytes:
    """The name of the copy of the version (*origin*, *content* hash) of a file named *name*."""
    dot = name.rfind(b".")
    ext = name[dot:] if dot > 0 and len(name) - dot <= EXTENSION_MAX else b""
    return f"{origin.hex()[:8] or 'unknown'}-{content.hex()[:12]}".encode() + ext


def copy_path(path: Sequence[bytes], origin: bytes, content: bytes) -> tuple[bytes, ...]:
    """Where the version (*origin*, *content* hash) of *path* is kept when it loses a conflict."""
    return (CONFLICTS, *path, copy_name(path[-1], origin, content))


def kept_at(path: Sequence[bytes]) -> tuple[bytes, ...]:
    """The directory holding the kept versions of *path*."""
    return (CONFLICTS, *path)


def in_conflicts(path: Sequence[bytes]) -> bool:
    """Whether *path* is in the conflicts area (its copies are not themselves kept aside)."""
    return bool(path) and path[0] == CONFLICTS
