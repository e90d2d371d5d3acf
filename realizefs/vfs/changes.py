"""What the kernel must forget when an arena's tree changes behind its back (its backing
directory, or a peer's change of its Unreal).

Each changed path the kernel may hold (one the namespace gave an inode) is
compared with what the kernel was last told: an entry that is gone, changed
kind or now names another backing object is dropped (the path gets a new
inode; files open through the mount keep the old one), and so is an entry
whose node an operation already found stale; an object whose ctime moved has
its attributes dropped, and a regular file its cached pages too (its content
may have changed with size and mtime put back, as ``cp -p`` and ``rsync -t``
do). Changes made through the mount were already told, so they cost nothing
more.

Pure bookkeeping over the namespace plus one lstat per changed path; the
invalidations themselves are sent by `realizefs.ops.invalidate`.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from realizefs.errors import FsError
from realizefs.real.backing import join
from realizefs.real.conflicts import CONFLICTS
from realizefs.real.watcher import Change
from realizefs.vfs.namespace import Arena, Namespace
from realizefs.vfs.tree import Stat


@dataclass
class Invalidation:
    """Kernel caches to drop: directory entries, attributes, and attributes and pages.

    An entry (parent, name) maps to the inode it led to when that object is gone
    from the name (0: not known): the kernel then marks that inode unlinked, so it
    lets it go (and the namespace its pin, and the disk its space) once unused."""

    entries: dict[tuple[int, bytes], int] = field(default_factory=dict)
    attrs: set[int] = field(default_factory=set)
    data: set[int] = field(default_factory=set)  # regular files: cached pages too

    def __bool__(self) -> bool:
        return bool(self.entries or self.attrs or self.data)

    def update(self, other: Invalidation) -> None:
        self.entries.update(other.entries)
        self.attrs |= other.attrs
        self.data |= other.data


def backing_changed(ns: Namespace, arena_ino: int, changes: Iterable[Change]) -> Invalidation:
    """The invalidations due after *changes* in the backing tree of the arena *arena_ino*."""
    arena = ns.arena(arena_ino)
    out = Invalidation()
    if arena is None:
        return out
    dirs: dict[int, bytes] = {}
    names: set[tuple[int, bytes]] = set()
    for change in changes:
        dir_ino = _known(ns, arena_ino, change.directory)
        if dir_ino is not None:
            dirs[dir_ino] = change.directory
            if change.name:
                names.add((dir_ino, change.name))
    for dir_ino, name in names:
        child = ns.inodes.child(dir_ino, name)
        node = ns.inodes.node(child) if child is not None else None
        if child is None or node is None:
            stale = ns.take_stale(dir_ino, name)
            if stale is not None:
                out.entries[(dir_ino, name)] = stale
            continue  # otherwise the kernel holds nothing there
        st = _lstat(arena, join(dirs[dir_ino], name))
        if st is None or stat.S_IFMT(st.st_mode) != node.kind or not ns.same_object(child, st):
            out.entries[(dir_ino, name)] = child
            ns.forget_entry(dir_ino, name)
        elif ns.told(child) != st.st_ctime_ns:
            (out.data if stat.S_ISREG(st.st_mode) else out.attrs).add(child)
    for dir_ino, rel in dirs.items():
        st = _lstat(arena, rel)
        if st is not None and ns.told(dir_ino) != st.st_ctime_ns:
            out.attrs.add(dir_ino)
    return out


def with_links(ns: Namespace, arena_ino: int, changes: Iterable[Change]) -> list[Change]:
    """*changes*, and the same change at every other name the namespace knows of a changed
    object with hard links: inotify reports a change under the one name it was made
    through (a write through the mount, under the name the node was first looked up by),
    yet each name is a path of its own in the index, whose content changed too."""
    out: list[Change] = []
    for change in changes:
        out.append(change)
        dir_ino = _known(ns, arena_ino, change.directory)
        child = ns.inodes.child(dir_ino, change.name) if dir_ino is not None and change.name else None
        names = ns.inodes.names(child) if child is not None else []
        for parent, name in names:
            if (parent, name) == (dir_ino, change.name):
                continue
            directory = ns.arena_path(arena_ino, parent)
            if directory is not None:
                out.append(Change(change.tree, directory, name, change.mask))
    return out


def peers_changed(ns: Namespace, arena_ino: int, paths: Iterable[tuple[bytes, bytes]]) -> Invalidation:
    """The invalidations due after a peer's changes of (directory, name) paths in this peer's
    view of the arena *arena_ino*: as `backing_changed`, and an object still there has its
    attributes and pages dropped whatever its times say (an Unreal entry's ctime is its mtime,
    which a peer's chmod or a new content with its mtime put back leaves alone)."""
    changes = [Change(arena_ino, directory, name, 0) for directory, name in paths]
    out = backing_changed(ns, arena_ino, changes)
    for change in changes:
        dir_ino = _known(ns, arena_ino, change.directory)
        child = ns.inodes.child(dir_ino, change.name) if dir_ino is not None else None
        if child is not None and (dir_ino, change.name) not in out.entries:
            out.data.add(child)
    return out


def everything(ns: Namespace) -> Invalidation:
    """Every arena entry and attribute the kernel may hold (events were lost)."""
    out = Invalidation()
    for arena in ns.arenas:
        pending = [arena.ino]
        while pending:
            parent = pending.pop()
            out.attrs.add(parent)
            for name, child in ns.inodes.children(parent):
                out.entries[(parent, name)] = 0
                pending.append(child)
    return out


def _known(ns: Namespace, arena_ino: int, rel: bytes) -> int | None:
    """The node the kernel may hold for *rel*: the arena's conflicts area is shown in its view
    (``.realize/conflicts/<arena>``), not in the arena."""
    ino: int | None = arena_ino
    parts = rel.split(b"/") if rel else []
    if parts and parts[0] == CONFLICTS:
        ino = ns.view(arena_ino)
        parts = parts[1:]
    for part in parts:
        ino = ns.inodes.child(ino, part) if ino is not None else None
    return ino


def _lstat(arena: Arena, rel: bytes) -> Stat | None:
    """What the mount shows at *rel* now (the Real, or the Unreal)."""
    try:
        return arena.tree.stat(rel)
    except FsError:
        return None
