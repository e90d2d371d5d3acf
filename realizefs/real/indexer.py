"""Keeps the content index (`realizefs.store.index`) true to each arena's Real.

At start, `reconcile` walks the backing tree against the index: what vanished
is forgotten, what is new or whose size or mtime changed is indexed as
*pending* (no hash) and queued for hashing, and a file whose size and mtime
are unchanged is not read again. Afterwards the watcher's changes arrive
through `changed`: a renamed file or directory is renamed in the index (no
re-hash), anything else touched is looked at again.

A file is hashed once it has rested: no change seen for the configured rest
period and the same size and mtime at two looks that far apart. A file that
disappears is forgotten only once it has stayed away for a rest period, so a
delete followed by a new write (some editors' save) is one edit. A file that
changes while it is read is queued again; a file that cannot be read is
reported (log and `unreadable`) and stays pending, never treated as deleted.
FIFOs, sockets and devices are not indexed.

Concurrency: `run` is one task; walking and hashing happen in worker threads,
each index update is one short LMDB transaction (safe from any thread).
"""

from __future__ import annotations

import heapq
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import trio

from realizefs.errors import FsError, NotFound
from realizefs.real.backing import Backing, join
from realizefs.real.hashing import ChangedWhileHashingError, Content, hash_fd
from realizefs.real.watcher import Change
from realizefs.store.history import Entry
from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Counts, Index, Record

log = logging.getLogger(__name__)

Key = tuple[str, bytes]  # (arena name, path)
BATCH = 256  # paths looked at (and hashed) per round, written in one transaction each way
Signature = tuple[int, int, int, int]  # file type, size, mtime_ns, inode


def signature(st: os.stat_result | None) -> Signature | None:
    return None if st is None else (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class _Arena:
    name: str
    backing: Backing
    root: int  # the arena root's node id in the index
    walks_wanted: int = 1  # raised when events were lost: the tree must be walked again
    walks_done: int = 0  # the walks_wanted value the last finished walk started under

    @property
    def scanned(self) -> bool:
        return self.walks_done >= self.walks_wanted


@dataclass
class _Pending:
    due: float
    seen: tuple[int, int] | None = None  # (size, mtime) at the last look
    gone: bool = False  # missing at the last look: deleted once missing for a rest period
    quiet: bool = False  # the daemon's own change: indexed, but no history entry


@dataclass(frozen=True)
class _Hashing:
    arena: _Arena
    rel: bytes
    st: os.stat_result
    quiet: bool


@dataclass
class Stats:
    hashed: int = 0
    bytes_hashed: int = 0
    unreadable: set[Key] = field(default_factory=set)


def parts(rel: bytes) -> list[bytes]:
    return rel.split(b"/") if rel else []


class Indexer:
    def __init__(
        self,
        index: Index,
        rest: float,
        clock: Callable[[], float] = time.monotonic,
        hasher: Callable[[int], Content] = hash_fd,
    ) -> None:
        self.index = index
        self.rest = rest
        self.clock = clock
        self.hasher = hasher
        self.stats = Stats()
        self._arenas: dict[str, _Arena] = {}
        self._pending: dict[Key, _Pending] = {}
        self._due: list[tuple[float, Key]] = []  # heap of (due, path); see _next_due
        self._expected: dict[Key, Signature | None] = {}
        self._wake = trio.Event()

    # ------------------------------------------------------------ arenas

    def set_arenas(self, backings: Mapping[str, Backing]) -> None:
        """Index exactly these arenas; a new one (or a new root) is walked first."""
        for name, a in list(self._arenas.items()):
            if backings.get(name) is not a.backing:
                del self._arenas[name]
                self._pending = {k: v for k, v in self._pending.items() if k[0] != name}
        for name, backing in backings.items():
            if name not in self._arenas:
                self._arenas[name] = _Arena(name, backing, self.index.arena_root(name))
        self._wake.set()

    # ------------------------------------------------------------ questions

    def hash_of(self, arena: str, rel: bytes) -> bytes | None:
        """The content hash of an indexed, rested file; None while pending or unknown."""
        a = self._arenas.get(arena)
        record = self.index.get(a.root, parts(rel)) if a is not None else None
        return record.settled_hash if record is not None and record.kind == KIND_FILE else None

    def history(self, arena: str, limit: int) -> list[Entry]:
        """The arena's most recent history entries, oldest first."""
        a = self._arenas.get(arena)
        return self.index.history(a.root, limit) if a is not None else []

    def counts(self, arena: str) -> Counts:
        a = self._arenas.get(arena)
        return self.index.counts(a.root) if a is not None else Counts()

    def scanned(self, arena: str) -> bool:
        a = self._arenas.get(arena)
        return a is not None and a.scanned

    # ------------------------------------------------------------ the startup walk

    async def reconcile(self, arena: str) -> None:
        a = self._arenas[arena]
        started = time.monotonic()
        generation = a.walks_wanted  # a rescan asked for during this walk needs another
        try:
            queued = await trio.to_thread.run_sync(self._walk, a, b"")
        finally:
            a.walks_done = generation
        for rel in queued:
            self._queue(arena, rel, self.clock())
        log.info(
            "%s: index reconciled with the Real in %.1fs, %d files to hash",
            arena,
            time.monotonic() - started,
            len(queued),
        )

    def _walk(self, a: _Arena, top: bytes) -> list[bytes]:
        """Bring the index of *top*'s subtree in line with the disk (worker thread).

        Returns the files whose content must be hashed."""
        queued: list[bytes] = []
        todo = [top]
        while todo:
            rel = todo.pop()
            try:
                entries = a.backing.listdir(rel)
            except FsError as exc:
                if not isinstance(exc, NotFound):
                    log.warning("%s/%s: cannot list: %s", a.name, _show(rel), exc)
                continue
            on_disk = dict(entries)
            with self.index.batch():  # a directory at a time: the write lock is not held long
                indexed = self.index.children(a.root, parts(rel))
                for name in indexed.keys() - on_disk.keys():
                    self.index.delete(a.root, [*parts(rel), name])
                for name, st in on_disk.items():
                    path = join(rel, name)
                    outcome = self._record(a, path, st, indexed.get(name))
                    if outcome == "dir":
                        todo.append(path)
                    elif outcome == "hash":
                        queued.append(path)
        return queued

    def _record(
        self, a: _Arena, rel: bytes, st: os.stat_result, old: Record | None, quiet: bool = False
    ) -> str:
        """Index what *rel* is now: "dir" (look inside), "hash" (queue it) or "".

        *quiet*: the daemon's own change, recorded without history."""

        def op(name: str) -> str | None:
            return None if quiet else name

        path = parts(rel)
        mode = stat.S_IMODE(st.st_mode)
        if not path:
            return ""  # the arena root: always there, never a record of its own
        if stat.S_ISDIR(st.st_mode):
            if old is None or old.kind != KIND_DIR:
                self.index.put(a.root, path, Record(KIND_DIR, mode=mode), op=op("mkdir"))
            elif old.mode != mode:
                self.index.put(a.root, path, Record(KIND_DIR, mode=mode), op=op("mode"))
            return "dir"
        if stat.S_ISLNK(st.st_mode):
            try:
                target = a.backing.readlink(rel)
            except FsError:
                return ""
            record = Record(KIND_LINK, len(target), st.st_mtime_ns, mode, target=target)
            if old is None or old.kind != KIND_LINK or old.target != target:
                self.index.put(a.root, path, record, op=op("symlink"))
            return ""
        if not stat.S_ISREG(st.st_mode):
            if old is not None:
                self.index.delete(a.root, path, logged=not quiet)
            return ""
        now = (st.st_size, st.st_mtime_ns)
        same = old is not None and old.kind == KIND_FILE and (old.size, old.mtime_ns) == now
        if same and old is not None and not old.pending:
            if old.mode != mode:
                self.index.put(a.root, path, replace(old, mode=mode), op=op("mode"))
            return ""
        if not same:  # pending: no history until the new content has a hash
            last = old.hash if old is not None and old.kind == KIND_FILE else None
            self.index.put(a.root, path, Record(KIND_FILE, *now, mode, last, changed=last is not None))
        return "hash"

    # ------------------------------------------------------------ changes

    def expect(self, arena: str, rel: bytes, st: os.stat_result | None) -> None:
        """The daemon itself just left *rel* in state *st* (None: removed it).

        Realizing, unrealizing and applying a peer's change are not local edits:
        when the watcher reports *rel* and it is still in exactly that state, the
        index follows without a history entry. If the user changed it meanwhile,
        that change is recorded as usual."""
        self._expected[(arena, rel)] = signature(st)
        self._queue(arena, rel, self.clock())

    def _own(self, key: Key, st: os.stat_result | None) -> bool:
        """Whether the state of *key* is the one the daemon left (the expectation is used up)."""
        if key not in self._expected:
            return False
        return self._expected.pop(key) == signature(st)

    def changed(self, arena: str, changes: Iterable[Change]) -> None:
        """Watcher changes in an arena's tree: renames now, the rest once rested."""
        a = self._arenas.get(arena)
        if a is None:
            return
        now = self.clock()
        for change in changes:
            path = join(change.directory, change.name) if change.name else change.directory
            if change.moved_from is not None:
                own = self._own((arena, path), self._stat(a, path))
                self.index.rename(a.root, parts(change.moved_from), parts(path), logged=not own)
                moved = self._pending.pop((arena, change.moved_from), None)
                if moved is not None:
                    self._pending[(arena, path)] = moved
                    heapq.heappush(self._due, (moved.due, (arena, path)))
            self._queue(arena, path, now)  # looked at now; hashed once it has rested

    def rescan_all(self) -> None:
        """Events were lost: walk every arena again."""
        for a in self._arenas.values():
            a.walks_wanted += 1
        self._wake.set()

    def _queue(self, arena: str, rel: bytes, due: float) -> None:
        key = (arena, rel)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(due)
            heapq.heappush(self._due, (due, key))
        elif due > pending.due:  # already waiting: the look after the rest sees whether it changed
            self._later(key, pending, due)
        self._wake.set()

    def _later(self, key: Key, pending: _Pending, due: float) -> None:
        pending.due = due
        heapq.heappush(self._due, (due, key))  # the older heap entry is skipped when popped

    def _next_due(self, now: float) -> list[Key]:
        """Up to BATCH paths whose time has come (stale heap entries dropped)."""
        keys: list[Key] = []
        while self._due and len(keys) < BATCH:
            due, key = self._due[0]
            pending = self._pending.get(key)
            if pending is None or pending.due != due or key in keys:
                heapq.heappop(self._due)
                continue
            if due > now:
                break
            heapq.heappop(self._due)
            keys.append(key)
        return keys

    @property
    def busy(self) -> int:
        """How many paths are waiting to be looked at or hashed."""
        return len(self._pending)

    # ------------------------------------------------------------ the task

    async def run(self) -> None:
        while True:
            self._wake = trio.Event()  # before looking at the state: no wake-up is lost
            for a in list(self._arenas.values()):
                if not a.scanned:
                    try:
                        await self.reconcile(a.name)
                    except Exception:
                        log.exception("%s: the walk of the tree failed", a.name)
            now = self.clock()
            due = self._next_due(now)
            if due:
                try:
                    await self._process(due)
                except Exception:  # indexing trouble must never take the daemon down
                    log.exception("indexing %d paths failed", len(due))
                    for key in due:
                        self._pending.pop(key, None)
                continue
            nearest = self._due[0][0] if self._due else None
            with trio.move_on_after(nearest - now if nearest is not None else 3600.0):
                await self._wake.wait()

    async def _process(self, keys: list[Key]) -> None:
        """Look at *keys*, then hash what has rested: a few transactions for the lot."""
        to_hash: list[_Hashing] = []
        new_dirs: list[tuple[_Arena, bytes]] = []
        with self.index.batch():
            for key in keys:
                try:
                    action = self._look(key)
                except Exception:  # one path's trouble stops neither the others nor the daemon
                    log.exception("%s/%s: indexing failed", key[0], _show(key[1]))
                    self._pending.pop(key, None)
                    continue
                if isinstance(action, _Hashing):
                    to_hash.append(action)
                elif action is not None:
                    new_dirs.append(action)
        for a, rel in new_dirs:  # a directory may arrive with content inside (moved in, unpacked)
            later = self.clock() + self.rest
            for path in await trio.to_thread.run_sync(self._walk, a, rel):
                self._queue(a.name, path, later)
        if to_hash:
            results = await trio.to_thread.run_sync(self._hash_all, to_hash)
            with self.index.batch():
                for job, result in zip(to_hash, results, strict=True):
                    self._settle(job, result)

    def _look(self, key: Key) -> _Hashing | tuple[_Arena, bytes] | None:
        """Index *key* as it is now; what is left to do: hash it, walk it, or nothing."""
        arena, rel = key
        a = self._arenas.get(arena)
        pending = self._pending.get(key)
        if a is None or pending is None:
            return None
        st = self._stat(a, rel)
        pending.quiet = pending.quiet or self._own(key, st)
        if st is None:
            record = self.index.get(a.root, parts(rel))
            if pending.quiet:
                self.index.delete(a.root, parts(rel), logged=False)
                self._pending.pop(key, None)
                return None
            if record is not None and record.kind == KIND_FILE and not pending.gone:
                # a file deleted and written again within the rest period (an editor's
                # save) is an edit of that file, not a delete and a create
                pending.gone = True
                self._later(key, pending, self.clock() + self.rest)
                return None
            self.index.delete(a.root, parts(rel))
            self._pending.pop(key, None)
            return None
        pending.gone = False
        old = self.index.get(a.root, parts(rel))
        outcome = self._record(a, rel, st, old, quiet=pending.quiet)
        if outcome != "hash":
            self._pending.pop(key, None)
            return (a, rel) if outcome == "dir" else None
        seen = (st.st_size, st.st_mtime_ns)
        rested = time.time_ns() - st.st_mtime_ns >= self.rest * 1e9
        if not rested and pending.seen != seen:  # written to lately: look again after a rest
            pending.seen = seen
            self._later(key, pending, self.clock() + self.rest)
            return None
        self._pending.pop(key, None)
        return _Hashing(a, rel, st, pending.quiet)

    @staticmethod
    def _stat(a: _Arena, rel: bytes) -> os.stat_result | None:
        try:
            return a.backing.stat(rel)
        except FsError:
            return None

    def _hash_all(self, jobs: list[_Hashing]) -> list[Content | Exception]:
        """Read and hash each file (worker thread); a failure is returned, not raised."""
        results: list[Content | Exception] = []
        for job in jobs:
            try:
                fd = job.arena.backing.open(job.rel, os.O_RDONLY | os.O_NONBLOCK)
            except FsError as exc:
                results.append(exc)
                continue
            try:
                results.append(self.hasher(fd))
            except (ChangedWhileHashingError, OSError) as exc:
                results.append(exc)
            finally:
                os.close(fd)
        return results

    def _settle(self, job: _Hashing, result: Content | Exception) -> None:
        a, rel = job.arena, job.rel
        if isinstance(result, ChangedWhileHashingError):
            self._queue(a.name, rel, self.clock() + self.rest)
            return
        if isinstance(result, NotFound):  # went away (or was renamed) since the look
            self._queue(a.name, rel, self.clock())
            return
        if isinstance(result, Exception):
            self._unreadable(a, rel, result)
            return
        self.stats.unreadable.discard((a.name, rel))
        record = Record(KIND_FILE, result.size, result.mtime_ns, stat.S_IMODE(job.st.st_mode), result.hash)
        chunks = [(c.offset, c.length, c.hash) for c in result.chunks]
        old = self.index.get(a.root, parts(rel))
        op = None if job.quiet else self._content_op(old, result)
        if self.index.put(a.root, parts(rel), record, chunks, op=op):
            self.stats.hashed += 1
            self.stats.bytes_hashed += result.size

    def _content_op(self, old: Record | None, content: Content) -> str | None:
        """create; edit (shares content with the version before) or overwrite; None: same."""
        if old is None or old.kind != KIND_FILE or old.hash is None:
            return "create"
        if old.hash == content.hash:
            return None  # touched, or written back unchanged
        before = {chunk[2] for chunk in self.index.manifest(old.hash) or ()}
        return "edit" if any(c.hash in before for c in content.chunks) else "overwrite"

    def _unreadable(self, a: _Arena, rel: bytes, exc: Exception) -> None:
        key = (a.name, rel)
        if key not in self.stats.unreadable:
            log.warning("%s/%s: cannot read to index it: %s", a.name, _show(rel), exc)
        self.stats.unreadable.add(key)


def _show(rel: bytes) -> str:
    return rel.decode("utf-8", "backslashreplace")
