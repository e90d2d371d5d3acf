"""The namespace behind the mount: arenas, virtual directories and open handles.

Maps inodes (see `inodes`) to either a virtual node (the root, the parents of
arena names with a ``/``, ``.realize/`` and its files) or a path inside an
arena, which it serves from the arena's `Tree` (`realizefs.vfs.tree`; today the
Real, `realizefs.vfs.realtree`) and nothing else. Operations take and return
inodes, names and `Attr`; they raise `FsError`. Open files of both kinds are
read and written through the namespace (`read`, `write`), which hands the call
to the `Handle` the open made.

The marker in each arena's root (`realizefs.real.marker`), its staging
directory (`realizefs.real.staging`) and its conflicts area
(`realizefs.real.conflicts`) are not shown: a lookup does not find them, a
listing leaves them out, and no name can be made, removed or renamed onto or
from them through the mount (``EPERM``). The conflicts area is shown instead
as ``.realize/conflicts/<arena>/``, a *view*: a second root over the same
tree, whose names are found and listed only for a reader who may see the
paths they stand for (`realizefs.vfs.visibility`; the kernel keeps no entry
there, so every lookup is checked), and where only deleting is allowed
(`realizefs.vfs.conflicts`). ``user.realize.version`` written resolves a
conflict (`set_version`).

Node identity: an arena inode is the tree's object it was looked up as
(`realizefs.vfs.inodes`). While the kernel holds a reference to a node, the
node holds a `Pin` of its object (on the Real an ``O_PATH`` descriptor, up to
`max_pins` of them): it is opened and stat'ed through that pin, so it stays that
object when the name is renamed over or removed in the backing tree, exactly
as an inode on the disk does, and an open racing a rename gets the old file
or the new one, never an error. Without a pin (over the budget), every
operation that reaches a node by its path checks that the path still leads
to that object; when it does not, the node is detached as an orphan and the
call fails with ``ESTALE``, on which the kernel looks the name up again and
retries. Either way a node is never opened onto another object, so no page
of one file lands in another's inode.

Kernel caching: attributes and entries of arena paths may be cached by the
kernel for `ATTR_TTL` seconds, which bounds how long a change made directly in
the backing directory can go unseen. Virtual files are never cached. An
open file keeps the kernel's page cache (``keep_cache``) only while the
backing file's (size, mtime, ctime) are what they were at the last open of,
or write to, it through the mount: the ctime moves with every change of content and no
user can set it back, unlike the mtime (``cp -p``, ``rsync -t``).

Concurrency: every method runs on the event loop thread and does short
blocking calls into the tree; the async ones (`read`, `write`, `fsync`,
`allocate`, `fsyncdir`) await the handle, which may run the work in a worker
thread (see `realizefs.vfs.tree`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from realizefs.config import ArenaConfig
from realizefs.errors import AccessDenied, FsError, InvalidValue, NoData, NotFound, NotPermitted, Stale
from realizefs.real import xattrs
from realizefs.real.backing import RENAME_EXCHANGE, Backing, Owner, join, split
from realizefs.real.conflicts import CONFLICTS
from realizefs.real.marker import MARKER
from realizefs.real.staging import STAGING
from realizefs.shrink import Shrink
from realizefs.vfs import attributes, conflicts
from realizefs.vfs.attrs import Attr, FsStats
from realizefs.vfs.inodes import ROOT_INODE, Ident, InodeTable
from realizefs.vfs.merged import fixed_inode, unreal_device
from realizefs.vfs.realtree import RealTree
from realizefs.vfs.tree import Changes, File, Pin, Stat, Tree
from realizefs.vfs.virtual import ROOT, Reader, Snapshots, VirtualDir, VirtualFile, VirtualOpen
from realizefs.vfs.visibility import Visibility

log = logging.getLogger(__name__)

# How long the kernel may cache attributes and entries of arena paths. Changes
# made directly in a backing directory are pushed to the kernel as soon as the
# watcher sees them, so the timeout is only a safety net (for hard links
# changed from outside an arena, say); where not every directory could be
# watched it falls back to a second.
WATCHED_TTL = 30.0
ATTR_TTL = 1.0
# Virtual directories and arena roots change only on reload, which invalidates them.
VIRTUAL_TTL = 3600.0
# Pins (see the module doc) held at most: one descriptor each. The daemon sets this from
# its descriptor limit; the kernel's own inode cache bounds how many are wanted.
MAX_PINS = 1 << 16
PINS_GIVEN_BACK = 1024  # descriptors freed for other uses when the process runs out
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)
CONTROL_DIR = b".realize"
CONFLICTS_DIR = b"conflicts"  # in .realize/: each arena's conflicts area (see the module doc)
_OWN = (MARKER, STAGING, CONFLICTS)  # names in an arena's root that are the daemon's, not shown
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC
# The kernel orders appends and handles O_DIRECT alignment itself: the backing
# descriptor is written at the offsets the kernel gives.
_NOT_PASSED = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_APPEND | os.O_DIRECT


@dataclass
class Arena:
    config: ArenaConfig
    backing: Backing  # the Real, for those who watch and index it
    tree: Tree  # what the mount shows: the only way the namespace reaches the arena
    ino: int

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class FileHandle:
    ino: int
    io: File | VirtualOpen  # a tree's open file, or a virtual one


@dataclass
class DirHandle:
    ino: int
    # the listing: an arena entry's attributes as listed, numbered when handed to the kernel
    entries: list[tuple[bytes, Attr | Stat]] = field(default_factory=list)
    listed: bool = False
    reader: Reader = ROOT  # who opened it: in a conflicts view, what they may see is listed


Stamp = tuple[int, int, int]  # size, mtime_ns, ctime_ns


def ident(st: Stat) -> Ident:
    """The identity of a tree's object."""
    return st.st_dev, st.st_ino


def _stamp(st: Stat) -> Stamp:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Namespace:
    def __init__(
        self,
        arenas: Iterable[ArenaConfig],
        control: Iterable[VirtualFile],
        content_hash: Callable[[str, bytes], bytes | None] = lambda arena, rel: None,
        max_pins: int = MAX_PINS,
        tree: Callable[[ArenaConfig, Backing], Tree] = lambda config, backing: RealTree(backing),
    ) -> None:
        self.inodes = InodeTable(
            on_drop=self._dropped, alive=lambda ino: ino in self._pins or ino in self._open
        )
        self.max_pins = max_pins
        self._tree = tree  # the tree an arena's mount shows, over its Real
        self._pins: dict[int, Pin] = {}  # inode -> pin of its object
        self._shrink = Shrink()
        self._content_hash = content_hash  # the indexed hash of a rested Real file
        self.ttl = ATTR_TTL  # raised to WATCHED_TTL once every arena is watched
        self._told: dict[int, int] = {}  # inode -> ctime of what the kernel was last given
        # entries that led to a node found stale before the kernel was told: see `take_stale`
        self._stale_entries: dict[tuple[int, bytes], int] = {}
        self._virtual_dirs: dict[int, VirtualDir] = {ROOT_INODE: VirtualDir()}
        self._virtual_files: dict[int, VirtualFile] = {}
        self._snapshots = Snapshots()
        self._arenas: dict[int, Arena] = {}
        self._views: dict[int, Arena] = {}  # .realize/conflicts/<arena> -> the arena it shows
        # paths of an arena changed by the namespace itself, not by a request of the kernel's
        # (resolving a conflict): the kernel's caches drop them (set by the daemon)
        self.changed: Callable[[str, list[tuple[bytes, ...]]], None] = lambda arena, paths: None
        self._handles: dict[int, FileHandle | DirHandle] = {}
        self._next_fh = 1
        self._open: dict[int, list[File]] = {}  # inode -> its files open through the mount
        self._stamps: dict[int, Stamp] = {}
        self._born_ns = time.time_ns()
        control_ino = self._add_virtual_dir(ROOT_INODE, CONTROL_DIR)
        self._conflicts_ino = self._add_virtual_dir(control_ino, CONFLICTS_DIR)
        for vfile in control:
            ino = self.inodes.add(control_ino, vfile.name, stat.S_IFREG, keep=True)
            self._virtual_files[ino] = vfile
            self._virtual_dirs[control_ino].children[vfile.name] = ino
        self.set_arenas(arenas)

    # ------------------------------------------------------------ arenas

    @property
    def arenas(self) -> list[Arena]:
        return list(self._arenas.values())

    def set_arenas(
        self, configs: Iterable[ArenaConfig], reopen: Collection[str] = ()
    ) -> list[tuple[int, bytes]]:
        """Serve exactly *configs*; the (parent inode, name) entries the kernel must forget.

        The arenas named in *reopen* have their root opened again, as if it had
        changed (a disk mounted there since is then the one served)."""
        wanted = {c.name: c for c in configs}
        removed: list[tuple[int, bytes]] = []
        for ino, arena in list(self._arenas.items()):
            config = wanted.get(arena.name)
            if config is not None and config.root == arena.config.root and arena.name not in reopen:
                arena.config = config  # a new default mode: nothing else changes
            else:
                del self._arenas[ino]
                arena.backing.close()
                removed.append(self._unlink_virtual_path(ROOT_INODE, arena.name))
                removed.append(self._unlink_virtual_path(self._conflicts_ino, arena.name))
                self._views = {i: a for i, a in self._views.items() if a is not arena}
        present = {a.name for a in self._arenas.values()}
        for name, config in wanted.items():
            if name in present:
                continue
            backing = Backing(config.root)
            *parents, last = name.encode().split(b"/")
            parent = ROOT_INODE
            for part in parents:
                parent = self._add_virtual_dir(parent, part)
            ino = self.inodes.add(parent, last, stat.S_IFDIR, keep=True)
            self._virtual_dirs[parent].children[last] = ino
            self._arenas[ino] = arena = Arena(config, backing, self._tree(config, backing), ino)
            parent = self._conflicts_ino
            for part in parents:
                parent = self._add_virtual_dir(parent, part)
            shown = self.inodes.add(parent, last, stat.S_IFDIR, keep=True)
            self._virtual_dirs[parent].children[last] = shown
            self._views[shown] = arena
        return removed

    def _add_virtual_dir(self, parent: int, name: bytes) -> int:
        existing = self._virtual_dirs[parent].children.get(name)
        if existing is not None:
            return existing
        ino = self.inodes.add(parent, name, stat.S_IFDIR, keep=True)
        self._virtual_dirs[parent].children[name] = ino
        self._virtual_dirs[ino] = VirtualDir()
        return ino

    def _unlink_virtual_path(self, top: int, arena_name: str) -> tuple[int, bytes]:
        """Remove an arena's entry in *top* (the root, or .realize/conflicts) and its emptied
        virtual parents; the topmost entry removed."""
        parts = arena_name.encode().split(b"/")
        chain = [top]
        for part in parts[:-1]:
            chain.append(self._virtual_dirs[chain[-1]].children[part])
        for depth in range(len(parts) - 1, -1, -1):
            parent = chain[depth]
            children = self._virtual_dirs[parent].children
            ino = children.pop(parts[depth])
            self.inodes.detach(parent, parts[depth])
            self._virtual_dirs.pop(ino, None)
            if children or parent == top:
                return parent, parts[depth]
        raise AssertionError("unreachable: the root always stops the walk")

    def close(self) -> None:
        for files in self._open.values():
            for file in files:
                file.close()
        self._open.clear()
        self._handles.clear()
        for pin in self._pins.values():
            pin.close()
        self._pins.clear()
        for arena in self._arenas.values():
            arena.backing.close()

    # ------------------------------------------------------------ resolving

    def _locate(self, ino: int) -> tuple[Arena, bytes]:
        """The arena and relative path of an arena inode; FsError otherwise."""
        names: list[bytes] = []
        cur = ino
        while (arena := self._arenas.get(cur)) is None:
            arena = self._views.get(cur)
            if arena is not None:  # .realize/conflicts/<arena>: its conflicts area
                names.append(CONFLICTS)
                break
            if cur in self._virtual_dirs:
                raise NotPermitted()
            node = self.inodes.node(cur)
            if node is None or node.parent == 0 or cur in self._virtual_files:
                raise Stale()  # unlinked, replaced or forgotten: the kernel looks the name up again
            names.append(node.name)
            cur = node.parent
        names.reverse()
        return arena, b"/".join(names)

    def is_virtual(self, ino: int) -> bool:
        return ino in self._virtual_dirs or ino in self._virtual_files

    def in_view(self, ino: int) -> bool:
        """Whether *ino* is a directory of a conflicts view (``.realize/conflicts/<arena>`` or
        below), whose names are shown to those who may see the paths they are of."""
        if ino in self._views:
            return True
        if self.is_virtual(ino):
            return False
        try:
            return conflicts.in_area(self._locate(ino)[1])
        except FsError:
            return False

    def _may_see(self, arena: Arena, rel: bytes, kind: int, reader: Reader) -> bool:
        """Whether *reader* may see the name *rel* of the conflicts area: a directory if they
        may see the path it is of, a kept version if they may see the path it is a version of."""
        if reader.uid == 0:
            return True
        of = rel[len(CONFLICTS) + 1 :] if kind == stat.S_IFDIR else split(rel)[0][len(CONFLICTS) + 1 :]
        return Visibility(arena.backing, reader).may_see(of)

    def is_virtual_file(self, ino: int) -> bool:
        return ino in self._virtual_files

    def _virtual_attr(self, ino: int, size: int = 0) -> Attr:
        vfile = self._virtual_files.get(ino)
        if vfile is not None:
            mode, nlink = vfile.mode, 1
        else:
            mode, nlink = 0o40555 if ino != ROOT_INODE else 0o40755, 2
        t = self._born_ns
        attr_ttl = 0.0 if vfile else VIRTUAL_TTL  # a status file's size changes with each rendering
        return Attr(ino, mode, nlink, 0, 0, size, t, t, t, timeout=attr_ttl, entry_timeout=VIRTUAL_TTL)

    async def virtual_file_attr(self, ino: int, reader: Reader) -> Attr:
        """Attributes of a virtual file with the size of the snapshot *reader* would read (see `virtual`)."""
        return self._virtual_attr(ino, await self._snapshots.size(ino, self._virtual_files[ino], reader))

    def _attr(self, ino: int, st: Stat, entry_ttl: float | None = None) -> Attr:
        self._told[ino] = st.st_ctime_ns
        if entry_ttl is None:
            entry_ttl = VIRTUAL_TTL if ino in self._arenas else self.ttl
        return Attr.from_stat(ino, st, self.ttl, entry_ttl)

    def _here(self, ino: int) -> tuple[Arena, bytes, Stat]:
        """Arena, path and attributes of the object *ino* names; `Stale` if the path leads elsewhere."""
        arena, rel = self._locate(ino)
        try:
            st = arena.tree.stat(rel)
        except NotFound:
            raise self._stale(ino) from None
        self._check(ino, st)
        return arena, rel, st

    def _check(self, ino: int, st: Stat) -> None:
        """Raise `Stale` if *st* is not the object *ino* was looked up as."""
        if not self.same_object(ino, st):
            raise self._stale(ino)

    def same_object(self, ino: int, st: Stat) -> bool:
        """Whether *st* is the object *ino* was looked up as (unknown: yes). An Unreal
        directory made Real in its place (to hold a new file, or a mode) is the same
        directory: the node takes the Real one's identity, so a shell or a handle in it
        carries on."""
        node = self.inodes.node(ino)
        if node is None or node.ident is None or node.ident == ident(st):
            return True
        realized = unreal_device(node.ident[0]) and not unreal_device(st.st_dev)
        if realized and node.kind == stat.S_IFDIR and stat.S_ISDIR(st.st_mode):
            node.ident = ident(st)
            return True
        return False

    def _stale(self, ino: int) -> Stale:
        """*ino*'s path leads to another object, or none: make it an orphan (see the module doc)."""
        node = self.inodes.node(ino)
        if node is not None and node.parent:
            self._stale_entries[(node.parent, node.name)] = ino
            self.inodes.detach(node.parent, node.name)
            self._settle(ino)
        return Stale()

    def _settle(self, ino: int) -> None:
        """Let go of the pin of an inode the kernel no longer references."""
        node = self.inodes.node(ino)
        if node is None or node.lookups <= 0:
            pin = self._pins.pop(ino, None)
            if pin is not None:
                pin.close()

    def _dropped(self, ino: int) -> None:
        """The inode table dropped *ino*: nothing is kept about it."""
        self._told.pop(ino, None)
        self._stamps.pop(ino, None)
        pin = self._pins.pop(ino, None)
        if pin is not None:
            pin.close()
        if self._shrink.due(len(self._told)):  # the tables of a namespace that shrank a lot
            self._told, self._stamps, self._pins = dict(self._told), dict(self._stamps), dict(self._pins)

    def _pin(self, arena: Arena, rel: bytes, listed: Stat | None = None) -> tuple[Pin | None, Stat]:
        """A pin of the object at *rel* (*listed* so by a listing, if given) if the budget
        allows (else None), and its attributes."""
        if len(self._pins) < self.max_pins:
            try:
                return arena.tree.pin(rel) if listed is None else arena.tree.pin_listed(rel, listed)
            except FsError as exc:
                if exc.errno not in _NO_DESCRIPTORS:
                    raise
                self._out_of_descriptors()
        return None, arena.tree.stat(rel)

    def _out_of_descriptors(self) -> None:
        """The process ran out of descriptors (its limit was lowered, say): pin fewer from now on.

        The oldest pins are let go at once (those nodes are reached by path, checked),
        so the calls that need a descriptor now, and the opens to come, get one."""
        self.max_pins = max(0, len(self._pins) - PINS_GIVEN_BACK)
        for ino in list(self._pins)[: len(self._pins) - self.max_pins]:
            self._pins.pop(ino).close()
        log.info("out of file descriptors: at most %d inodes are pinned from now on", self.max_pins)

    def _referenced(self, ino: int, pin: Pin | None) -> None:
        """The kernel took a reference to *ino*; keep *pin* (of the same object) while it holds one."""
        self.inodes.looked_up(ino)
        if pin is None:
            return
        if ino in self._pins or len(self._pins) >= self.max_pins:
            pin.close()
        else:
            self._pins[ino] = pin

    # ------------------------------------------------------------ lookups

    def lookup(self, parent: int, name: bytes, reader: Reader = ROOT) -> Attr:
        """Attributes of *name* in *parent*; counts one kernel reference on success. In a
        conflicts view, only a name *reader* may see is found, and the kernel keeps no entry
        (the next lookup, maybe another reader's, asks again)."""
        vdir = self._virtual_dirs.get(parent)
        if vdir is not None:
            ino = vdir.children.get(name)
            if ino is None:
                raise NotFound()
            self.inodes.looked_up(ino)
            return self.getattr(ino)
        arena, rel = self._locate(parent)
        if not rel and name in _OWN:
            raise NotFound()  # the arena's marker and staging directory are the daemon's: not shown
        try:
            pin, st = self._pin(arena, join(rel, name))
        except NotFound:
            self._detach(parent, name)
            raise
        viewed = conflicts.in_area(rel)
        if viewed and not self._may_see(arena, join(rel, name), stat.S_IFMT(st.st_mode), reader):
            if pin is not None:
                pin.close()
            raise NotFound()
        ino = self._add(parent, name, st)
        self._referenced(ino, pin)
        return self._attr(ino, st, 0.0 if viewed else None)

    def _add(self, parent: int, name: bytes, st: Stat) -> int:
        """The node of *name* in *parent*, which holds the object *st* describes."""
        self._stale_entries.pop((parent, name), None)
        old = self.inodes.child(parent, name)
        if old is not None:
            self.same_object(old, st)  # a directory made Real keeps its node
        ino = self.inodes.add(parent, name, stat.S_IFMT(st.st_mode), ident(st), number=fixed_inode(st))
        if old is not None and old != ino:
            self._settle(old)
        return ino

    def _detach(self, parent: int, name: bytes) -> None:
        gone = self.inodes.detach(parent, name)
        if gone is not None:
            self._settle(gone)

    def forget(self, ino: int, count: int) -> None:
        self.inodes.forget(ino, count)
        self._settle(ino)

    def listed(self, fh: int, index: int, ino: int) -> None:
        """readdirplus gave the kernel entry *index* (inode *ino*) of the listing *fh*: one reference."""
        handle = self._handles.get(fh)
        node = self.inodes.node(ino)
        pin = None
        if isinstance(handle, DirHandle) and node is not None and not self.is_virtual(handle.ino):
            name, what = handle.entries[index]
            try:
                arena, rel = self._locate(handle.ino)
                pin, st = self._pin(arena, join(rel, name), None if isinstance(what, Attr) else what)
            except FsError:
                pass  # gone since the listing: the kernel finds out at its next call
            else:
                if pin is not None and not self.same_object(ino, st):
                    pin.close()  # replaced since the listing: leave the node to its path check
                    pin = None
        self._referenced(ino, pin)

    def getattr(self, ino: int) -> Attr:
        if self.is_virtual(ino) or ino in self._views:
            return self._virtual_attr(ino)
        files = self._open.get(ino)
        if files and not self._read_as_unreal(ino, st := files[0].stat()):
            return self._attr(ino, st)  # answers for open files that were unlinked or renamed away too
        pin = self._pins.get(ino)
        if pin is not None:
            return self._attr(ino, pin.stat())
        _, _, st = self._here(ino)
        return self._attr(ino, st)

    def readlink(self, ino: int) -> bytes:
        arena, rel, _ = self._here(ino)
        return arena.tree.readlink(rel)

    # ------------------------------------------------------------ changing attributes

    async def setattr(
        self,
        ino: int,
        fh: int | None,
        *,
        size: int | None = None,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Attr:
        vfile = self._virtual_files.get(ino)
        if vfile is not None:
            if size == 0 and vfile.command is not None and mode is uid is gid is None:
                return self._virtual_attr(ino)  # O_TRUNC before a command is written
            raise NotPermitted()
        if ino in self._virtual_dirs or self.in_view(ino):
            raise NotPermitted()
        changes = Changes(size, mode, uid, gid, atime_ns, mtime_ns)
        file = self._file_for(ino, fh)
        if file is not None:
            st = await file.setattr(changes)
        else:
            arena, rel, _ = self._here(ino)
            st = await arena.tree.setattr(rel, changes)
        if size is None:
            self._made_real(ino, st)
        return self._attr(ino, st)

    def _read_as_unreal(self, ino: int, st: Stat) -> bool:
        """Whether *st*, of a handle open on *ino*, is the Unreal version of what the node now
        knows as Real (`_made_real` under a handle opened before): the Real file answers."""
        node = self.inodes.node(ino)
        known = node.ident if node is not None else None
        return known is not None and not unreal_device(known[0]) and unreal_device(st.st_dev)

    def _made_real(self, ino: int, st: Stat) -> None:
        """After a change of attributes alone: an Unreal object it made Real in its place (its
        very version placed, then changed) is the same object, as a file is after a ``chmod``:
        the node takes the Real one's identity and pin. (A truncate makes another version:
        another object, as a peer's is, so no page of it lands in a reader's of the old.)"""
        node = self.inodes.node(ino)
        if node is None or node.ident is None or not unreal_device(node.ident[0]) or unreal_device(st.st_dev):
            return
        node.ident = ident(st)
        pin = self._pins.pop(ino, None)
        if pin is None:
            return
        pin.close()
        with contextlib.suppress(FsError):  # an orphan: its open files answer for it
            real = self._pin_new(*self._locate(ino), st)
            if real is not None:
                self._pins[ino] = real

    def _file_for(self, ino: int, fh: int | None) -> File | None:
        handle = self._handles.get(fh) if fh is not None else None
        if isinstance(handle, FileHandle) and not isinstance(handle.io, VirtualOpen):
            return handle.io
        node = self.inodes.node(ino)
        files = self._open.get(ino)
        if files and node is not None and node.parent == 0:  # orphan: only its open files remain
            return files[0]
        return None

    # ------------------------------------------------------------ creating and removing

    def _arena_dir(self, parent: int, name: bytes, removing: bool = False) -> tuple[Arena, bytes]:
        """The arena and directory where *name* is made, removed or renamed. In a conflicts
        view names are only removed (*removing*)."""
        if parent in self._virtual_dirs:
            raise NotPermitted("only arenas hold files")
        arena, rel = self._locate(parent)
        if not rel and name in _OWN:
            raise NotPermitted(f"{name.decode()} in the arena's root is realizefs's own")
        if conflicts.in_area(rel) and not removing:
            raise NotPermitted("the conflicts view only lets what it shows be deleted")
        return arena, rel

    def _wrote(self, ino: int, file: File) -> None:
        """After a write through the mount: the kernel knows, no invalidation needed, pages still good."""
        st = file.stat()
        self._told[ino] = st.st_ctime_ns
        if ino in self._stamps:
            self._stamps[ino] = _stamp(st)

    def _created(self, parent: int, name: bytes, st: Stat, pin: Pin | None) -> Attr:
        """The new object *st* at *name* in *parent*, referenced by the kernel; *pin*: of it, or None."""
        ino = self._add(parent, name, st)
        self._referenced(ino, pin)
        return self._attr(ino, st)

    def _pin_new(self, arena: Arena, rel: bytes, st: Stat) -> Pin | None:
        """A pin of the object just made at *rel*, if it is still there (and the budget allows)."""
        try:
            pin, now = self._pin(arena, rel)
        except FsError:
            return None
        if pin is not None and ident(now) != ident(st):
            pin.close()
            return None
        return pin

    def _make(self, parent: int, name: bytes, make: Callable[[Tree, bytes], Stat]) -> Attr:
        arena, rel = self._arena_dir(parent, name)
        st = make(arena.tree, rel)
        return self._created(parent, name, st, self._pin_new(arena, join(rel, name), st))

    def mkdir(self, parent: int, name: bytes, mode: int, owner: Owner) -> Attr:
        return self._make(parent, name, lambda tree, rel: tree.mkdir(rel, name, mode, owner))

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, owner: Owner) -> Attr:
        """A FIFO, socket, device or empty regular file (devices only for callers who may make them)."""
        return self._make(parent, name, lambda tree, rel: tree.mknod(rel, name, mode, rdev, owner))

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        """A hard link to the object *ino* named *new_name* in *new_parent*: one more name of its node.

        The object linked is the node's own (through its pin, else its path, checked), so a
        name renamed over meanwhile links the object the kernel asked about, never another."""
        if self.is_virtual(ino):
            raise NotPermitted("realizefs's own files cannot be linked")
        if self.in_view(ino):
            raise FsError("out of a conflicts view", errno=errno.EXDEV)
        arena, rel = self._arena_dir(new_parent, new_name)
        source_arena, source_rel = self._locate(ino)
        if source_arena is not arena:
            raise FsError("across arenas", errno=errno.EXDEV)
        pin = self._pins.get(ino)
        taken: Pin | None = None
        if pin is None:
            taken = pin = arena.tree.pin(source_rel)[0]
        try:
            if taken is not None:
                self._check(ino, pin.stat())
            st = arena.tree.link(pin, rel, new_name)
        finally:
            if taken is not None:
                taken.close()
        linked = self._add(new_parent, new_name, st)
        self._referenced(linked, None)
        return self._attr(linked, st)

    def symlink(self, parent: int, name: bytes, target: bytes, owner: Owner) -> Attr:
        return self._make(parent, name, lambda tree, rel: tree.symlink(rel, name, target, owner))

    def create(self, parent: int, name: bytes, mode: int, flags: int, owner: Owner) -> tuple[int, Attr]:
        arena, rel = self._arena_dir(parent, name)
        file, st = arena.tree.create(rel, name, flags, mode, owner)
        pin = None
        if len(self._pins) < self.max_pins:
            try:
                pin = file.pin()  # the very object created
            except FsError as exc:
                if exc.errno not in _NO_DESCRIPTORS:
                    file.close()
                    raise
                self._out_of_descriptors()
        attr = self._created(parent, name, st, pin)
        return self._opened(attr.ino, file), attr

    def unlink(self, parent: int, name: bytes) -> None:
        arena, rel = self._arena_dir(parent, name, removing=True)
        arena.tree.unlink(rel, name)
        self._detach(parent, name)
        self._pruned(arena, rel)

    def rmdir(self, parent: int, name: bytes) -> None:
        if self._virtual_dirs.get(parent, VirtualDir()).children.get(name):
            raise NotPermitted("arenas are removed in the config")
        arena, rel = self._arena_dir(parent, name, removing=True)
        arena.tree.rmdir(rel, name)
        self._detach(parent, name)
        self._pruned(arena, rel)

    def _pruned(self, arena: Arena, rel: bytes) -> None:
        """After a delete in a conflicts view: its directories left empty go too (a path with
        no version kept is no longer in conflict), and the kernel forgets them."""
        if conflicts.in_area(rel):
            gone = conflicts.prune(arena.tree, rel)
            if gone:
                self.changed(arena.name, [tuple(path.split(b"/")) for path in gone])

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        if self.in_view(old_parent) or self.in_view(new_parent):  # mv copies, then deletes
            raise FsError("into or out of a conflicts view", errno=errno.EXDEV)
        arena_a, rel_a = self._arena_dir(old_parent, old_name)
        arena_b, rel_b = self._arena_dir(new_parent, new_name)
        if arena_a is not arena_b:
            raise FsError("across arenas", errno=18)  # EXDEV: mv copies, as across filesystems
        arena_a.tree.rename(join(rel_a, old_name), join(rel_b, new_name), flags)
        if flags & RENAME_EXCHANGE:
            self.inodes.exchange(old_parent, old_name, new_parent, new_name)
        else:
            replaced = self.inodes.child(new_parent, new_name)
            self.inodes.move(old_parent, old_name, new_parent, new_name)
            if replaced is not None:
                self._settle(replaced)

    # ------------------------------------------------------------ files

    def _opened(self, ino: int, file: File) -> int:
        fh = self._new_fh(FileHandle(ino, file))
        self._open.setdefault(ino, []).append(file)
        self.inodes.opened(ino)
        return fh

    def _new_fh(self, handle: FileHandle | DirHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _open_node(self, ino: int, flags: int) -> tuple[File, Stat]:
        """Open the object *ino* is (through its pin, else by its path, checked); its attributes."""
        pin = self._pins.get(ino)
        if pin is not None:
            file = pin.open(flags)
        else:
            arena, rel = self._locate(ino)
            try:
                file = arena.tree.open(rel, flags)
            except NotFound:
                raise self._stale(ino) from None
        try:
            st = file.stat()
            self._check(ino, st)
        except BaseException:
            file.close()
            raise
        return file, st

    def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open an arena's file: (handle, whether the kernel may keep its cached pages)."""
        if flags & _WRITE_FLAGS and self.in_view(ino):
            raise NotPermitted("the conflicts view is read-only (but for deleting)")
        file, st = self._open_node(ino, flags & ~_NOT_PASSED)
        stamp = _stamp(st)
        keep = self._stamps.get(ino) == stamp
        self._stamps[ino] = stamp
        return self._opened(ino, file), keep

    async def open_virtual(self, ino: int, flags: int, reader: Reader) -> int:
        """Open a virtual file with the snapshot *reader* is shown (see `virtual`)."""
        vfile = self._virtual_files[ino]
        if flags & _WRITE_FLAGS and vfile.command is None:
            raise AccessDenied("read-only")
        handle = VirtualOpen(vfile, self._snapshots, f"{CONTROL_DIR.decode()}/{vfile.name.decode()}")
        fh = self._new_fh(FileHandle(ino, handle))
        if flags & os.O_ACCMODE != os.O_WRONLY:
            try:
                await handle.load(fh, ino, reader)
            except BaseException:
                self._handles.pop(fh, None)
                raise
        return fh

    def _file(self, fh: int) -> FileHandle:
        handle = self._handles.get(fh)
        if not isinstance(handle, FileHandle):
            raise FsError("bad file handle", errno=9)
        return handle

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        return await self._file(fh).io.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._file(fh)
        written = await handle.io.write(offset, data)
        if not isinstance(handle.io, VirtualOpen):
            self._wrote(handle.ino, handle.io)
        return written

    async def allocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """``fallocate(2)`` on an open file; like a write, the kernel knows what changed."""
        handle = self._file(fh)
        await handle.io.allocate(mode, offset, length)
        if not isinstance(handle.io, VirtualOpen):
            self._wrote(handle.ino, handle.io)

    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._file(fh).io.fsync(datasync)

    def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if not isinstance(handle, FileHandle):
            return
        # No new stamp here: the kernel sends the release after close(2) has returned,
        # so a change made in the backing tree meanwhile would pass for one it has seen.
        handle.io.close()
        if isinstance(handle.io, VirtualOpen):
            return
        files = self._open.get(handle.ino, [])
        files.remove(handle.io)
        if not files:
            self._open.pop(handle.ino, None)
        self.inodes.closed(handle.ino)
        self._settle(handle.ino)

    # ------------------------------------------------------------ directories

    def opendir(self, ino: int, reader: Reader = ROOT) -> int:
        """A directory handle; it is listed at its first read from the start, and again at each
        rewind (in a conflicts view, with the names *reader* may see)."""
        if not self.is_virtual(ino) and ino not in self._views:
            self._here(ino)  # still the directory the kernel holds
        return self._new_fh(DirHandle(ino, reader=reader))

    def list_dir(self, fh: int, start: int) -> int:
        """How many entries the listing of *fh* has, listing it anew when read from its start.

        A snapshot: offsets (an entry's index plus one) stay valid until the next rewind,
        which, as ``rewinddir(3)`` requires, shows the directory as it is then."""
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise FsError("bad directory handle", errno=9)
        if start == 0 or not handle.listed:
            try:
                handle.entries = self._listing(handle.ino, handle.reader)
            except Stale:  # gone or replaced since it was opened: it reads as a deleted directory, empty
                handle.entries = []
            handle.listed = True
        return len(handle.entries)

    def _listing(self, ino: int, reader: Reader) -> list[tuple[bytes, Attr | Stat]]:
        entries: list[tuple[bytes, Attr | Stat]] = [(b".", self.getattr(ino))]
        node = self.inodes.node(ino)
        parent = node.parent if node is not None and node.parent else ROOT_INODE
        entries.append((b"..", self.getattr(parent) if parent in self._virtual_dirs else self._dotdot(ino)))
        vdir = self._virtual_dirs.get(ino)
        if vdir is not None:
            entries.extend((name, self.getattr(child)) for name, child in sorted(vdir.children.items()))
        elif ino in self._views:  # the conflicts area, if there is one yet
            arena = self._views[ino]
            with contextlib.suppress(NotFound):
                listed = arena.tree.listdir(CONFLICTS)
                entries.extend(
                    e for e in listed if self._may_see(arena, join(CONFLICTS, e[0]), _kind(e[1]), reader)
                )
        else:
            arena, rel, _ = self._here(ino)
            listed = arena.tree.listdir(rel)
            if conflicts.in_area(rel):
                entries.extend(
                    e for e in listed if self._may_see(arena, join(rel, e[0]), _kind(e[1]), reader)
                )
            else:
                entries.extend(e for e in listed if rel or e[0] not in _OWN)
        return entries

    def dir_entry(self, fh: int, index: int) -> tuple[bytes, Attr]:
        """Entry *index* of the listing of *fh*, numbered now (a listing numbers only what it hands out)."""
        handle = self._handles[fh]
        assert isinstance(handle, DirHandle)
        name, what = handle.entries[index]
        if isinstance(what, Attr):
            return name, what
        viewed = self.in_view(handle.ino)
        return name, self._attr(self._add(handle.ino, name, what), what, 0.0 if viewed else None)

    def _dotdot(self, ino: int) -> Attr:
        node = self.inodes.node(ino)
        parent = node.parent if node is not None and node.parent else ROOT_INODE
        try:
            return self.getattr(parent)
        except FsError:
            return self.getattr(ino)

    def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Flush the listed directory to its disk (virtual ones have nothing to flush)."""
        handle = self._handles.get(fh)
        if not isinstance(handle, DirHandle) or self.is_virtual(handle.ino):
            return
        directory, _ = self._open_node(handle.ino, os.O_RDONLY | os.O_DIRECTORY)
        try:
            await directory.fsync(datasync)
        finally:
            directory.close()

    def statfs(self) -> FsStats:
        """The backing filesystems' numbers, summed over distinct filesystems."""
        seen: dict[int, os.statvfs_result] = {}
        for arena in self._arenas.values():
            seen.setdefault(arena.tree.stat(b"").st_dev, arena.tree.statvfs())
        if not seen:
            return FsStats(4096, 4096, 0, 0, 0, 0, 0, 0, 255)
        frsize = min(v.f_frsize for v in seen.values())

        def total(attr: str) -> int:
            return sum(getattr(v, attr) * v.f_frsize // frsize for v in seen.values())

        def count(attr: str) -> int:
            return sum(int(getattr(v, attr)) for v in seen.values())

        first = next(iter(seen.values()))
        return FsStats(
            bsize=first.f_bsize,
            frsize=frsize,
            blocks=total("f_blocks"),
            bfree=total("f_bfree"),
            bavail=total("f_bavail"),
            files=count("f_files"),
            ffree=count("f_ffree"),
            favail=count("f_favail"),
            namemax=min(v.f_namemax for v in seen.values()),
        )

    # ------------------------------------------------------------ extended attributes

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if self.is_virtual(ino) or ino in self._views or not attributes.kept(name):
            raise NoData()  # (the kernel asks for security.* at each ls -l and write: not looked up)
        pin = self._pins.get(ino) if xattrs.is_acl(name) else None
        if pin is not None:  # the kernel asks for the ACL after each readdirplus: one syscall
            return pin.acl(name)
        arena, rel, _ = self._here(ino)
        return attributes.get(arena.tree, rel, name, arena.config.mode, self._hash_of(arena, rel))

    def listxattr(self, ino: int) -> list[bytes]:
        if self.is_virtual(ino) or ino in self._views:
            return []
        arena, rel, st = self._here(ino)
        return attributes.names(arena.tree, rel, stat.S_IFMT(st.st_mode))

    async def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        """Set an attribute; one stored on the object (``user.*``, an ACL) makes an Unreal object
        Real first, as a change of its attributes does (`setattr`)."""
        if self.is_virtual(ino) or self.in_view(ino):
            raise NotPermitted("realizefs's own files and directories have no attributes to set")
        arena, rel, st = self._here(ino)
        if name == attributes.VERSION:
            raise NotPermitted("resolving a conflict is asynchronous: see set_version")
        if attributes.stored(name) and unreal_device(st.st_dev):
            self._made_real(ino, await arena.tree.make_real(rel))
        attributes.put(arena.tree, rel, name, value, _where(arena, rel), self._hash_of(arena, rel))

    async def set_version(self, ino: int, value: bytes) -> None:
        """``user.realize.version`` written: the version *value* names made current at the
        path in conflict (`realizefs.vfs.conflicts.resolve`); `InvalidValue` if it names none."""
        if self.is_virtual(ino) or self.in_view(ino):
            raise InvalidValue("not a path in conflict")
        arena, rel, _ = self._here(ino)
        chosen, changed = await conflicts.resolve(arena.tree, rel, value)
        log.info(
            "%s: conflict resolved: %s (%s) made current",
            _where(arena, rel),
            chosen.hash.hex()[:12],
            chosen.where.decode(errors="replace"),
        )
        for path in changed:
            self._replaced(arena, path)
        self.changed(arena.name, [tuple(path.split(b"/")) for path in changed])

    def _replaced(self, arena: Arena, rel: bytes) -> None:
        """The object the node at *rel* was is gone from its path (a change the kernel did not
        ask for): the node is made an orphan and lets go of its pin, so the kernel's next
        open or stat of it finds it stale and looks the name up again (the invalidation that
        follows drops its entry)."""
        parts = rel.split(b"/")
        ino: int | None = arena.ino
        if parts[0] == CONFLICTS:
            ino, parts = self.view(arena.ino), parts[1:]
        for part in parts:
            ino = self.inodes.child(ino, part) if ino is not None else None
        if ino is None:
            return
        pin = self._pins.pop(ino, None)
        if pin is not None:
            pin.close()
        self._stale(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        if self.is_virtual(ino) or self.in_view(ino):
            raise NotPermitted()
        arena, rel, _ = self._here(ino)
        attributes.remove(arena.tree, rel, name, _where(arena, rel))

    def _hash_of(self, arena: Arena, rel: bytes) -> Callable[[], bytes | None]:
        return lambda: self._content_hash(arena.name, rel)

    # ------------------------------------------------------------ for realizefs.vfs.changes

    def arena(self, ino: int) -> Arena | None:
        """The arena whose root is *ino*."""
        return self._arenas.get(ino)

    def view(self, arena_ino: int) -> int | None:
        """The conflicts view (``.realize/conflicts/<arena>``) of the arena whose root is *arena_ino*."""
        arena = self._arenas.get(arena_ino)
        return next((ino for ino, shown in self._views.items() if shown is arena), None)

    def arena_path(self, arena_ino: int, ino: int) -> bytes | None:
        """The path of the directory *ino* in the arena whose root is *arena_ino*; None elsewhere."""
        try:
            arena, rel = self._locate(ino)
        except FsError:
            return None
        return rel if arena.ino == arena_ino else None

    def told(self, ino: int) -> int | None:
        """The ctime of what the kernel was last given for *ino*."""
        return self._told.get(ino)

    def forget_entry(self, parent: int, name: bytes) -> None:
        """The backing object at *name* went away or was replaced behind our back."""
        self._stale_entries.pop((parent, name), None)
        self._detach(parent, name)

    def take_stale(self, parent: int, name: bytes) -> int | None:
        """The node *name* led the kernel to, if found stale since (the kernel must forget it)."""
        return self._stale_entries.pop((parent, name), None)


def _kind(st: Stat | Attr) -> int:
    return stat.S_IFMT(st.st_mode) if not isinstance(st, Attr) else st.kind


def _where(arena: Arena, rel: bytes) -> str:
    return f"{arena.name}/{rel.decode('utf-8', 'backslashreplace')}"
