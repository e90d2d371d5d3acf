"""Conflicts as the mount shows them: the kept versions of a path, and resolving them.

Consensus keeps each losing version of a path in the arena's conflicts area
(`realizefs.real.conflicts`: ``.realize-conflicts/<path>/<origin>-<hash><ext>``,
an ordinary directory that syncs like any other); the namespace shows that
area as ``.realize/conflicts/<arena>/``. A path is *in conflict* while its
directory there holds a file (`copies`). Here:

- `versions`: the path's current version (as the index holds it), then each
  kept one, by name: hash, size, mtime, the peer that made it; `describe`
  renders them as ``user.realize.versions`` shows them, one line each.
- `pick`: the version a value written to ``user.realize.version`` names: its
  hash, or a prefix of it that no other version's hash shares (hex; case and
  surrounding white space ignored). Anything else is `InvalidValue`.
- `resolve`: makes the chosen version current. A kept version is renamed over
  the path (a local rename: the index merges the vectors of both and counts
  one more for this peer, so the result dominates every version and every
  peer takes it); an Unreal copy over a Real file is made Real first. Then
  every other copy is deleted and the emptied directories of the area
  removed (ordinary deletes: they reach every peer). Choosing the current
  version only deletes the copies: its vector already dominates theirs
  (consensus merged them when it kept the loser aside).
- `conflicted`: every path in conflict in a tree.

Concurrency: the event loop; short blocking calls into the tree, and `resolve`
awaits the tree's ``setattr`` (fetching an Unreal copy).
"""

from __future__ import annotations

import errno
import stat
import string
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass

from realizefs.errors import FsError, InvalidValue, NotEmpty, NotFound
from realizefs.real.backing import join, split
from realizefs.real.conflicts import CONFLICTS
from realizefs.vfs.tree import Changes, Stat, Tree

CURRENT = b"current"  # where the current version is, in `describe`


@dataclass(frozen=True)
class Version:
    """One version of a path in conflict."""

    hash: bytes
    size: int
    mtime_ns: int
    peer: str  # the name of the peer that made it ("" if not known)
    where: bytes  # the copy's name in the conflicts area; `CURRENT`: at the path

    @property
    def current(self) -> bool:
        return self.where == CURRENT


def area(rel: bytes) -> bytes:
    """The directory of the conflicts area holding the kept versions of *rel*."""
    return join(CONFLICTS, rel)


def in_area(rel: bytes) -> bool:
    return rel == CONFLICTS or rel.startswith(CONFLICTS + b"/")


def copies(tree: Tree, rel: bytes) -> list[tuple[bytes, Stat]]:
    """The kept versions of *rel* (name, attributes), by name; none: not in conflict."""
    if not rel or in_area(rel):
        return []
    try:
        listed = tree.listdir(area(rel))
    except FsError:  # no such directory (or not one)
        return []
    return sorted((name, st) for name, st in listed if stat.S_ISREG(st.st_mode))


def versions(tree: Tree, rel: bytes, kept: Sequence[tuple[bytes, Stat]] | None = None) -> list[Version]:
    """The current version of *rel* (if the index holds a hashed one), then each kept one."""
    out = []
    now = tree.held(rel)
    if now is not None and now.hash is not None:
        out.append(Version(now.hash, now.size, now.mtime_ns, now.origin, CURRENT))
    for name, _ in copies(tree, rel) if kept is None else kept:
        held = tree.held(join(area(rel), name))
        if held is not None and held.hash is not None:  # (a copy not hashed yet: not listed)
            out.append(Version(held.hash, held.size, held.mtime_ns, held.origin, name))
    return out


def describe(found: Sequence[Version]) -> bytes:
    """``user.realize.versions``: ``<hash> <size> <mtime> <peer> <where>`` per line (mtime in
    UTC with nanoseconds; peer ``-`` if not known; where ``current`` or the copy's name)."""
    lines = []
    for v in found:
        seconds, ns = divmod(v.mtime_ns, 10**9)
        mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ns:09d}Z"
        head = f"{v.hash.hex()} {v.size} {mtime} {v.peer or '-'} ".encode()
        lines.append(head + v.where + b"\n")
    return b"".join(lines)


def pick(found: Sequence[Version], value: bytes) -> Version:
    """The version *value* names (see the module doc); the current one if several say the same."""
    text = value.decode("ascii", "replace").strip().lower()
    if not text or any(c not in string.hexdigits for c in text):
        raise InvalidValue("expected the hash of a version (user.realize.versions lists them)")
    hashes = {v.hash for v in found if v.hash.hex().startswith(text)}
    if not hashes:
        raise InvalidValue("no version of this path has that hash")
    if len(hashes) > 1:
        raise InvalidValue("more than one version's hash begins so")
    (chosen,) = hashes
    return next(v for v in found if v.hash == chosen)  # the current one comes first


async def resolve(tree: Tree, rel: bytes, value: bytes) -> tuple[Version, list[bytes]]:
    """Make the version *value* names current at *rel* (see the module doc): that version, and
    the paths changed (for the kernel's caches)."""
    kept = copies(tree, rel)
    if not kept:
        raise InvalidValue("not in conflict")
    chosen = pick(versions(tree, rel, kept), value)
    where = area(rel)
    changed = []
    if not chosen.current:
        source = join(where, chosen.where)
        try:
            tree.rename(source, rel, 0)
        except FsError as exc:
            if exc.errno != errno.EXDEV:
                raise
            await tree.setattr(source, Changes())  # an Unreal copy over a Real file: made Real first
            tree.rename(source, rel, 0)
        changed += [rel, source]
    for name, _ in kept:
        if name != chosen.where:
            with suppress(NotFound):  # deleted meanwhile
                tree.unlink(where, name)
            changed.append(join(where, name))
    changed += prune(tree, where)
    return chosen, changed


def prune(tree: Tree, rel: bytes) -> list[bytes]:
    """Remove the directory *rel* of the conflicts area, and those above it (not the area
    itself), while they are empty; the paths removed."""
    removed = []
    while rel != CONFLICTS and in_area(rel):
        try:
            if tree.listdir(rel):
                break
            tree.rmdir(*split(rel))
        except (NotFound, NotEmpty):
            break
        removed.append(rel)
        rel = split(rel)[0]
    return removed


def conflicted(tree: Tree) -> list[bytes]:
    """Every path in conflict in *tree* (whose directory in the conflicts area holds a file)."""
    found = []
    todo = [CONFLICTS]
    while todo:
        rel = todo.pop()
        try:
            listed = tree.listdir(rel)
        except FsError:
            continue
        if rel != CONFLICTS and any(stat.S_ISREG(st.st_mode) for _, st in listed):
            found.append(rel[len(CONFLICTS) + 1 :])
        todo.extend(join(rel, name) for name, st in listed if stat.S_ISDIR(st.st_mode))
    return sorted(found)
