"""inotify over every directory of the arenas' Real: what changed in the backing trees.

One inotify instance for all trees, integrated into trio by waiting on its
descriptor. Each directory is watched through a descriptor opened beneath its
arena root (never through a symlink); the watch is added *before* the
directory is listed, so nothing created meanwhile is missed. New directories
(created, or moved in) are watched as they appear; a directory moved within a
tree keeps its watches under its new path; one moved out or deleted drops them
(only the watches it had when it left: a new directory of the same name keeps
its own). A moved directory is watched again from the disk below its new
path (a watch is per inode: watching a path again finds the watch of what is
there, and what was created in it just before the move, reported under a path
that no longer led to it, gets its watch); the old path is checked the same
way, so after a ``RENAME_EXCHANGE`` both sides are watched where they are. A
move whose two halves arrive in two reads is still paired.

`changes()` returns batches of `Change`, or `None` when the kernel's queue
overflowed and events were lost (the watches are then set up anew, and the
caller must assume anything changed). When the watch limit (``fs.inotify.max_user_watches``) is reached
the daemon (as root) doubles it, up to 4 Mi watches, and says so; past that
the tree is reported as incompletely watched and a warning names the sysctl.

Where each watch is, is indexed per tree by path (`_Watches`): finding, moving
or dropping the watches below a directory costs in proportion to that subtree,
not to all the watches (two watches may claim one path for a while: an old
directory moved out, not yet known to be gone, and a new one of the same name).

Concurrency: one task awaits `changes()`; what the events ask for (listing a
new or moved directory to watch what it holds, watching every tree anew after
an overflow) walks directories, so it runs in a worker thread, never on the
event loop that answers the mount. `add_tree` and `remove_tree` walk too and
may be called from any thread; one lock keeps all of them apart.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio
from inotify_simple import Event, INotify
from inotify_simple import flags as F  # noqa: N812

from realizefs.errors import FsError
from realizefs.real.backing import Backing, join

log = logging.getLogger(__name__)

MASK = (
    F.CREATE
    | F.DELETE
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.ATTRIB
    | F.MODIFY
    | F.CLOSE_WRITE
    | F.DELETE_SELF
    | F.ONLYDIR
    | F.EXCL_UNLINK
)


WATCH_LIMIT = Path("/proc/sys/fs/inotify/max_user_watches")
MAX_WATCH_LIMIT = 4 << 20  # each watch costs the kernel about 1 KiB


@dataclass(frozen=True, slots=True)
class Change:
    tree: Hashable
    directory: bytes  # path of the directory holding *name*, relative to the tree's root
    name: bytes  # b"" when the event is about the directory itself
    mask: int
    moved_from: bytes | None = None  # a rename within the tree: the old path (with MOVED_TO)

    @property
    def closed(self) -> bool:
        """A file opened for writing was closed: its writer is done, for now."""
        return bool(self.mask & F.CLOSE_WRITE)


class Watcher:
    def __init__(self) -> None:
        self._inotify = INotify(nonblocking=True)
        self._dirs = _Watches()
        self._trees: dict[Hashable, Backing] = {}
        self.complete: dict[Hashable, bool] = {}
        self._limit_logged = False
        self._moved_out: dict[int, tuple[Hashable, bytes, list[int]]] = {}  # unpaired at the last read
        self._lock = threading.Lock()  # see the module doc

    def close(self) -> None:
        self._inotify.close()

    def add_tree(self, tree: Hashable, backing: Backing) -> bool:
        """Watch every directory of *backing*; whether all of them are watched (walks the tree)."""
        with self._lock:
            self._trees[tree] = backing
            self.complete[tree] = True
            self._watch_below(tree, b"")
            return self.complete[tree]

    def remove_tree(self, tree: Hashable) -> None:
        with self._lock:
            for wd in self._dirs.below(tree, b""):
                self._unwatch(wd)
            self._trees.pop(tree, None)
            self.complete.pop(tree, None)

    def _watch_below(self, tree: Hashable, top: bytes, seen: set[int] | None = None) -> None:
        """Watch every directory from *top* down (*seen*: add the watch of each to it)."""
        backing = self._trees[tree]
        pending = [top]
        while pending:
            rel = pending.pop()
            wd = self._watch(tree, backing, rel)
            if wd is None:
                continue
            if seen is not None:
                seen.add(wd)
            try:
                entries = backing.listdir(rel)
            except FsError:
                continue  # vanished or unreadable: its own events will tell
            pending.extend(join(rel, name) for name, st in entries if stat.S_ISDIR(st.st_mode))

    def _watch(self, tree: Hashable, backing: Backing, rel: bytes) -> int | None:
        """The watch of the directory at *rel*, known under that path from now on (None: none)."""
        try:
            with backing.object_path(rel) as (path, _):
                wd = self._inotify.add_watch(path, MASK)  # the same one if it has one already
        except FsError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                if _raise_watch_limit():
                    return self._watch(tree, backing, rel)
                self.complete[tree] = False
                if not self._limit_logged:
                    self._limit_logged = True
                    log.warning(
                        "inotify watch limit reached (%d watches): raise the sysctl "
                        "fs.inotify.max_user_watches; until then changes made directly in "
                        "%s are seen after at most a second",
                        len(self._dirs),
                        backing.root,
                    )
                return None
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                return None
            raise
        self._dirs.put(int(wd), tree, rel)
        return int(wd)

    def _unwatch(self, wd: int) -> None:
        self._dirs.pop(wd)
        with contextlib.suppress(OSError):  # already gone with its directory
            self._inotify.rm_watch(wd)

    def _below(self, tree: Hashable, top: bytes) -> list[int]:
        return self._dirs.below(tree, top)

    def _moved(self, tree: Hashable, old: bytes, new: bytes, wds: list[int]) -> None:
        """The directory *old* (watched by *wds*) is now *new*, as far as the event says."""
        for wd in wds:
            where = self._dirs.get(wd)
            if where is not None and where[0] == tree and _under(where[1], old):
                self._dirs.put(wd, tree, new + where[1][len(old) :])
        # A directory created inside it just before the move was reported under the old
        # path, which no longer led to it: it could not be watched then. Watch the moved
        # tree from the disk (a watched directory keeps its watch: each is looked up).
        self._watch_below(tree, new)
        if not self._holds(tree, old):  # the disk holds something else there: an exchange
            log.debug("watches of %r do not match the disk: watching it anew", old)
            self._watch_below(tree, old)

    def _holds(self, tree: Hashable, rel: bytes) -> bool:
        """Whether the directory at *rel* (if any) is watched under that path."""
        backing = self._trees.get(tree)
        if backing is None:
            return True
        try:
            with backing.object_path(rel) as (path, _):
                wd = self._inotify.add_watch(path, MASK)  # the watch of that inode, if it has one
        except (FsError, OSError):
            return True  # nothing there, or no directory: nothing to check
        return self._dirs.get(wd) == (tree, rel)

    async def changes(self) -> list[Change] | None:
        """The next batch of changes; None if events were lost."""
        while True:
            await trio.lowlevel.wait_readable(self._inotify.fileno())
            try:
                events = self._inotify.read(timeout=0)
            except BlockingIOError:
                continue
            if events:
                return await trio.to_thread.run_sync(self._interpret_locked, events)

    def _interpret_locked(self, events: list[Event]) -> list[Change] | None:
        with self._lock:
            return self._interpret(events)

    def _interpret(self, events: list[Event]) -> list[Change] | None:
        batch: list[Change] = []
        carried, self._moved_out = self._moved_out, {}  # unpaired at the end of the last read
        moved_from: dict[int, tuple[Hashable, bytes, list[int]]] = {}  # cookie -> (tree, path, watches)
        overflow = False
        for event in events:
            wd, mask, cookie, name = event.wd, event.mask, event.cookie, event.name
            if mask & F.Q_OVERFLOW:
                overflow = True
                continue
            if mask & F.IGNORED:
                self._dirs.pop(wd)
                continue
            where = self._dirs.get(wd)
            if where is None or mask & F.DELETE_SELF:
                continue
            tree, directory = where
            raw = os.fsencode(name)
            path = join(directory, raw) if raw else directory
            is_dir = bool(mask & F.ISDIR) and bool(raw)
            origin = None
            if mask & F.MOVED_FROM:
                moved_from[cookie] = (tree, path, self._below(tree, path) if is_dir else [])
            elif mask & F.MOVED_TO:
                source = moved_from.pop(cookie, None) or carried.pop(cookie, None)
                if source is not None and source[0] == tree:
                    origin = source[1]
                if is_dir and source is not None and origin is not None:
                    self._moved(tree, origin, path, source[2])
                elif is_dir:
                    self._watch_below(tree, path)
            elif is_dir and mask & F.CREATE:
                self._watch_below(tree, path)
            batch.append(Change(tree, directory, raw, mask, origin))
        for tree, path, wds in carried.values():  # not paired in this read either: moved out
            self._forget(tree, path, wds)
        self._moved_out = moved_from  # moved out, or paired in the next read
        if overflow:  # directories may have come and gone unseen: watch everything anew
            log.info("inotify queue overflowed: re-watching every arena")
            self._moved_out = {}
            self._rewatch_all()
            return None
        return batch

    def _rewatch_all(self) -> None:
        """Watch every directory where it is now, keeping the watches that still hold.

        Removing them all first would queue one ``IN_IGNORED`` event per directory:
        with more directories than the queue holds, it overflows again, for ever."""
        seen: set[int] = set()
        for tree in self._trees:
            self._watch_below(tree, b"", seen)
        for wd in [wd for wd in self._dirs if wd not in seen]:
            self._unwatch(wd)  # its directory left the trees, or is gone

    def _forget(self, tree: Hashable, top: bytes, wds: list[int]) -> None:
        """Unwatch what left *top*, unless found since elsewhere (moved into another tree)."""
        for wd in wds:
            where = self._dirs.get(wd)
            if where is not None and where[0] == tree and _under(where[1], top):
                self._unwatch(wd)


class _Watches:
    """Where each watch is (wd -> (tree, path)), and per tree the watches by path.

    Per tree, *wds* gives the watches at each watched path and *kids* the children
    of each path that are watched or lead to a watched path (the chain up to the
    root is registered, so a watched directory under an unwatched one is reached);
    a path neither watched nor leading to one is pruned, so the index stays within
    the watched paths and their ancestors."""

    def __init__(self) -> None:
        self._where: dict[int, tuple[Hashable, bytes]] = {}
        self._trees: dict[Hashable, _Paths] = {}

    def __len__(self) -> int:
        return len(self._where)

    def __iter__(self) -> Iterator[int]:
        return iter(self._where)

    def get(self, wd: int) -> tuple[Hashable, bytes] | None:
        return self._where.get(wd)

    def put(self, wd: int, tree: Hashable, path: bytes) -> None:
        """*wd* watches *path* of *tree* (wherever it was before)."""
        if self._where.get(wd) == (tree, path):
            return
        self.pop(wd)
        self._where[wd] = (tree, path)
        paths = self._trees.get(tree)
        if paths is None:
            paths = self._trees[tree] = _Paths()
        paths.add(wd, path)

    def pop(self, wd: int) -> None:
        where = self._where.pop(wd, None)
        if where is None:
            return
        tree, path = where
        paths = self._trees[tree]
        paths.remove(wd, path)
        if not paths.wds:
            del self._trees[tree]

    def below(self, tree: Hashable, top: bytes) -> list[int]:
        """The watches of *top* and of every path below it."""
        paths = self._trees.get(tree)
        return [] if paths is None else paths.below(top)


class _Paths:
    """One tree's watches by path (see `_Watches`); the common single watch of a path is a bare int."""

    def __init__(self) -> None:
        self.wds: dict[bytes, int | tuple[int, ...]] = {}  # watched path -> its watch(es)
        self.kids: dict[bytes, dict[bytes, None]] = {}  # path -> its children watched or leading to one

    def add(self, wd: int, path: bytes) -> None:
        there = self.wds.get(path)
        self.wds[path] = wd if there is None else (*_tuple(there), wd)
        while path:  # register the chain up to the root, as far as it is not yet
            parent = path.rpartition(b"/")[0]
            kids = self.kids.get(parent)
            if kids is None:
                kids = self.kids[parent] = {}
            elif path in kids:
                return
            kids[path] = None
            path = parent

    def remove(self, wd: int, path: bytes) -> None:
        rest = tuple(w for w in _tuple(self.wds.pop(path, ())) if w != wd)
        if rest:
            self.wds[path] = rest[0] if len(rest) == 1 else rest
            return
        while path not in self.wds and path not in self.kids:  # leads to no watch any more: prune
            if not path:
                return
            parent = path.rpartition(b"/")[0]
            kids = self.kids[parent]
            del kids[path]
            if kids:
                return
            del self.kids[parent]
            path = parent

    def below(self, top: bytes) -> list[int]:
        found: list[int] = []
        pending = [top]
        while pending:
            path = pending.pop()
            found.extend(_tuple(self.wds.get(path, ())))
            pending.extend(self.kids.get(path, ()))
        return found


def _tuple(wds: int | tuple[int, ...]) -> tuple[int, ...]:
    return (wds,) if isinstance(wds, int) else wds


def _raise_watch_limit(path: Path = WATCH_LIMIT, ceiling: int = MAX_WATCH_LIMIT) -> bool:
    """Double fs.inotify.max_user_watches (as root, up to *ceiling*); whether it grew."""
    try:
        current = int(path.read_text())
        if current >= ceiling:
            return False
        path.write_text(f"{min(current * 2, ceiling)}\n")
    except (OSError, ValueError):
        return False
    log.info("raised fs.inotify.max_user_watches from %d to %d", current, min(current * 2, ceiling))
    return True


def _under(rel: bytes, top: bytes) -> bool:
    return not top or rel == top or rel.startswith(top + b"/")
