"""Keeps the content index (`realizefs.store.index`) true to each arena's Real.

At start, `reconcile` walks the backing tree against the index: what vanished
is forgotten, what is new or whose size or mtime changed is indexed as
*pending* (no hash) and queued for hashing, and a file whose size and mtime
are unchanged is not read again. Afterwards the watcher's changes arrive
through `changed`: a renamed file or directory is renamed in the index (no
re-hash), anything else touched is looked at again. A rename is a claim
checked against the disk: both of its paths are looked at again afterwards
(a renamed directory is walked). A `RENAME_EXCHANGE` (a move of B to A right
after one of A to B, both paths present) is one exchange in the index and the
history, and both sides are then read again in full rather than trusting sizes
and mtimes, so no side is lost.

A mode change enters the history when it is seen, also while the file's new
content waits to be hashed: the content's own entry (or none, if it is the
same) follows.

A file is hashed once it has rested: no change seen for the configured rest
period and the same size and mtime at two looks that far apart. A file that
disappears is forgotten only once it has stayed away for `DELETE_GRACE` (a
second, or the rest period if shorter), so a delete followed by a new write
(some editors' save) is one edit, and peers hear of a delete at once. A file that
changes while it is read is queued again; a file that cannot be read is
reported (log and `unreadable`) and stays pending, never treated as deleted.
FIFOs, sockets and devices are not indexed. Each name of a file with hard
links is a path of its own: a change seen under one name is looked at under
every other name seen of it (`realizefs.real.links`).

An arena is indexed only while its root holds its marker
(`realizefs.real.marker`), checked before every walk of the whole tree: a
root with no marker whose index is empty, or that this store never marked
(an index older than markers), is marked (first use); one marked before
whose index holds something is not the tree that was indexed (a disk not mounted, a
directory replaced), and nothing of it is looked at or recorded (a warning
says so, and `unmarked`) until the arena is opened again (the daemon does on
SIGHUP) or walked again (lost events) and the marker is back. A change of the
marker itself has the tree walked again. The marker is not indexed.

Failures are retried: a failed walk of a tree is walked again, and a path
whose look or rename failed is looked at again, after a backoff that doubles
up to `MAX_BACKOFF`.

Concurrency: `run` is one task, and everything that touches the disk or
writes the index (renames, looks, walks, hashing) happens in its worker
thread, one round at a time, in event order; `changed` and `expect` only
append to an inbox, so the event loop never waits for a disk or an fsync.
The pending paths and their heap belong to the round in progress.
"""

from __future__ import annotations

import errno
import heapq
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import trio

from realizefs.errors import FsError, NotFound
from realizefs.real import marker, staging
from realizefs.real.backing import Backing, join
from realizefs.real.hashing import ChangedWhileHashingError, Content, hash_fd
from realizefs.real.links import Links
from realizefs.real.watcher import Change
from realizefs.shrink import Shrink
from realizefs.store.history import Entry
from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Counts, Index, Record
from realizefs.store.records import tally

log = logging.getLogger(__name__)

Key = tuple[str, bytes]  # (arena name, path)
BATCH = 256  # paths looked at (and hashed) per round, written in one transaction each way
MAX_BACKOFF = 300.0  # seconds between retries of what keeps failing, at most
CLOSED_QUIET = 1.0  # seconds a file closed by its writer stays unchanged before it is hashed
EXPECT_FOR = 10.0  # seconds an expected change of the daemon's may take to show on the disk
# seconds a deleted file is held before its delete is recorded: an editor's save (delete,
# then write anew) is an edit; not the rest period, so peers hear of deletes at once
DELETE_GRACE = 1.0
# file type and permissions (a chmod right after a realize is the user's), size, mtime_ns, inode
Signature = tuple[int, int, int, int]


_KINDS = {stat.S_IFDIR: KIND_DIR, stat.S_IFLNK: KIND_LINK, stat.S_IFREG: KIND_FILE}  # what is indexed


def signature(st: os.stat_result | None) -> Signature | None:
    """What tells the state the daemon left from a user's change: type and permissions, and
    inode; a file's size and mtime too (a directory's move as entries come and go)."""
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        return (st.st_mode, 0, 0, st.st_ino)
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)


@dataclass
class _Arena:
    name: str
    backing: Backing
    root: int  # the arena root's node id in the index
    walks_wanted: int = 1  # raised when events were lost: the tree must be walked again
    walks_done: int = 0  # the walks_wanted value the last finished walk started under
    failures: int = 0  # walks failed in a row
    retry_at: float = 0.0  # no walk before this (clock) time after a failure
    marked: bool | None = None  # the root held its marker at the last walk (None: not walked yet)

    @property
    def scanned(self) -> bool:
        return self.walks_done >= self.walks_wanted


@dataclass
class _Pending:
    due: float
    seen: tuple[int, int] | None = None  # (size, mtime) at the last look
    gone: bool = False  # missing at the last look: deleted once missing for `DELETE_GRACE`
    gone_at: int = 0  # when it was first seen missing (wall clock, ns): the delete's time
    quiet: bool = False  # the daemon's own change: indexed, but no history entry
    force: bool = False  # read again even if size and mtime look unchanged (an exchange)
    closed: bool = False  # a writer closed it since it was last hashed (see `_look_soon`)
    looked: float = -math.inf  # when it was last looked at (monotonic)


@dataclass(frozen=True, slots=True)
class _Event:
    """What `changed` and `expect` leave for the indexer's round, in order."""

    arena: str
    path: bytes
    moved_from: bytes | None = None
    expected: Signature | None = None  # with *expect*: the state the daemon left
    expect: bool = False
    closed: bool = False  # a writer closed the file


@dataclass(frozen=True)
class _Hashing:
    arena: _Arena
    rel: bytes
    st: os.stat_result
    quiet: bool
    base: tuple[bytes, int] | None = None  # the last hashed content (hash, size), if smaller


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
        hasher: Callable[[int, int | None], Content] = hash_fd,
        wall: Callable[[], int] = time.time_ns,
        store_id: bytes = b"",
    ) -> None:
        self.index = index
        self.store_id = store_id  # written into the markers this indexer makes
        self.rest = rest
        self.clock = clock  # called from the event loop only (trio's clock in tests)
        self.wall = wall  # the time files' mtimes are compared with, in ns
        self._started_ns = wall()  # staged files older than this were left by a crash
        self.hasher = hasher
        self.stats = Stats()
        self._arenas: dict[str, _Arena] = {}
        self._pending: dict[Key, _Pending] = {}
        self._shrink = Shrink()  # of _pending (see realizefs.shrink)
        self._due: list[tuple[float, Key]] = []  # heap of (due, path); see _next_due
        self._expected: dict[Key, tuple[Signature | None, float]] = {}  # state left, when told
        self._inbox: list[_Event] = []  # appended on the event loop, taken by `run`
        self._failures: dict[Key, int] = {}  # looks failed in a row, for the backoff
        # per arena, what the index still counts of files found gone, waiting out their rest
        # (replaced whole by each round, read by `counts` on the event loop)
        self._gone: dict[str, Counts] = {}
        self._gone_keys: set[Key] = set()  # the paths that were missing at their last look
        self._links = Links()  # other names of files with hard links: a change of one is theirs too
        self._now = 0.0  # the clock and the wall clock at the start of the round in progress
        self._wall_ns = 0
        self._wake = trio.Event()

    # ------------------------------------------------------------ arenas

    def set_arenas(self, backings: Mapping[str, Backing]) -> None:
        """Index exactly these arenas; a new one (or a new root) is walked first."""
        for name, a in list(self._arenas.items()):
            if backings.get(name) is not a.backing:
                del self._arenas[name]  # its pending paths are dropped when they come due
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
        """What the arena holds: the index's counts without the files already found gone."""
        a = self._arenas.get(arena)
        if a is None:
            return Counts()
        return self.index.counts(a.root) - self._gone.get(arena, Counts())

    def gone(self, arena: str) -> int:
        """How many files were found deleted and wait out `DELETE_GRACE` before they are forgotten."""
        return self._gone.get(arena, Counts()).files

    def scanned(self, arena: str) -> bool:
        a = self._arenas.get(arena)
        return a is not None and a.scanned and a.marked is True

    def unmarked(self, arena: str) -> bool:
        """Whether the arena is not indexed because its root lacks its marker."""
        a = self._arenas.get(arena)
        return a is not None and a.marked is False

    # ------------------------------------------------------------ the startup walk

    async def reconcile(self, arena: str) -> None:
        """Walk the arena's tree against the index; a failed walk is tried again later."""
        a = self._arenas[arena]
        started = time.monotonic()
        generation = a.walks_wanted  # a rescan asked for during this walk needs another
        now = self.clock()
        try:
            queued = await trio.to_thread.run_sync(self._walk_marked, a)
        except Exception:
            a.failures += 1
            a.retry_at = now + self._backoff(a.failures)
            log.exception(
                "%s: the walk of the tree failed; walking it again in %.0fs", arena, a.retry_at - now
            )
            return
        a.failures = 0
        a.walks_done = generation
        was, a.marked = a.marked, queued is not None
        if queued is None:
            if was is not False:
                log.warning(
                    "%s: NOT INDEXED: the root %s has no %s marker although this arena was indexed: "
                    "its disk is not mounted, or the directory was replaced; nothing of it is "
                    "recorded until the marker is back (then reload with SIGHUP, or restart)",
                    arena,
                    a.backing.root,
                    marker.MARKER.decode(),
                )
            return
        if was is False:
            log.info("%s: the root's marker is back; indexing again", arena)
        for rel in queued:
            self._queue(arena, rel, now)
        self._wake.set()
        log.info(
            "%s: index reconciled with the Real in %.1fs, %d files to hash",
            arena,
            time.monotonic() - started,
            len(queued),
        )

    def _walk_marked(self, a: _Arena) -> list[bytes] | None:
        """Walk the whole tree if the root is marked (marking it on first use); None if not."""
        if not marker.present(a.backing):
            if self.index.marked(a.root) and self.index.counts(a.root) != Counts():
                return None  # indexed and marked before, not marked now: not the tree indexed
            marker.make(a.backing, a.name, self.store_id)
            log.info("%s: marked the arena root (%s)", a.name, marker.MARKER.decode())
        if not self.index.marked(a.root):
            self.index.set_marked(a.root)
        if a.walks_done == 0 and (left := staging.clear(a.backing, self._started_ns)):
            log.info("%s: removed %d files a realize left unfinished", a.name, left)
        return self._walk(a, b"")

    def _walk(self, a: _Arena, top: bytes, force: bool = False) -> list[bytes]:
        """Bring the index of *top*'s subtree in line with the disk (worker thread).

        Returns the files whose content must be hashed (*force*: all of them)."""
        queued: list[bytes] = []
        todo = [top]
        while todo:
            rel = todo.pop()
            try:
                entries = a.backing.listdir(rel)
            except FsError as exc:
                if not _gone(exc):
                    log.warning("%s/%s: cannot list: %s", a.name, _show(rel), exc)
                continue
            on_disk = dict(entries)
            if not rel:
                on_disk.pop(marker.MARKER, None)  # not indexed: it is this daemon's, not the user's
                on_disk.pop(staging.STAGING, None)
            with self.index.batch():  # a directory at a time: the write lock is not held long
                indexed = self.index.children(a.root, parts(rel))
                for name in indexed.keys() - on_disk.keys():
                    self.index.delete(a.root, [*parts(rel), name])
                for name, st in on_disk.items():
                    path = join(rel, name)
                    self._links.saw((a.name, path), st)
                    outcome = self._record(a, path, st, indexed.get(name), force=force)
                    if outcome == "dir":
                        todo.append(path)
                    elif outcome == "hash":
                        queued.append(path)
        return queued

    def _record(
        self,
        a: _Arena,
        rel: bytes,
        st: os.stat_result,
        old: Record | None,
        quiet: bool = False,
        force: bool = False,
    ) -> str:
        """Index what *rel* is now: "dir" (look inside), "hash" (queue it) or "".

        *quiet*: the daemon's own change, recorded without history. *force*: a
        file is read again even if its size and mtime are the recorded ones."""

        def op(name: str) -> str | None:
            return None if quiet else name

        path = parts(rel)
        mode = stat.S_IMODE(st.st_mode)
        if not path:
            return ""  # the arena root: always there, never a record of its own
        if old is not None and old.kind != _KINDS.get(stat.S_IFMT(st.st_mode)):
            # another kind now: the old one's going is history (an rmdir with a delete per
            # file inside, or a delete), before the new one's entry, even a pending file's
            self.index.delete(a.root, path, logged=not quiet)
            old = None
        if stat.S_ISDIR(st.st_mode):
            # its mtime as first seen: what peers list it with (not kept up with its entries)
            if old is None or old.kind != KIND_DIR:
                self.index.put(
                    a.root, path, Record(KIND_DIR, mtime_ns=st.st_mtime_ns, mode=mode), op=op("mkdir")
                )
            elif old.mode != mode:
                self.index.put(a.root, path, replace(old, mode=mode), op=op("chmod"), when=st.st_ctime_ns)
            return "dir"
        if stat.S_ISLNK(st.st_mode):
            try:
                target = a.backing.readlink(rel)
            except FsError:
                return ""
            record = Record(KIND_LINK, len(target), st.st_mtime_ns, mode, target=target)
            if old is None or old.kind != KIND_LINK or old.target != target:
                self.index.put(a.root, path, record, op=op("symlink"), when=st.st_ctime_ns)
            return ""
        if not stat.S_ISREG(st.st_mode):
            return ""  # not indexed (and whatever was there is forgotten above)
        now = (st.st_size, st.st_mtime_ns)
        same = not force and old is not None and old.kind == KIND_FILE and (old.size, old.mtime_ns) == now
        # a mode change of a file in the history is recorded now, whatever its content
        # turns out to be (the same content is no entry, and would take the mode with it)
        mode_op = op("chmod") if old is not None and old.kind == KIND_FILE and old.mode != mode else None
        if old is not None and old.hash is None:
            mode_op = None  # never hashed: its create will carry the mode
        if same and old is not None:
            if old.mode != mode:
                self.index.put(a.root, path, replace(old, mode=mode), op=mode_op, when=st.st_ctime_ns)
            return "" if not old.pending else "hash"
        # pending: no content entry until the new content has a hash
        last = old.hash if old is not None and old.kind == KIND_FILE else None
        record = Record(KIND_FILE, *now, mode, last, changed=last is not None)
        self.index.put(a.root, path, record, op=mode_op, when=st.st_ctime_ns)
        return "hash"

    # ------------------------------------------------------------ changes

    def expect(self, arena: str, rel: bytes, st: os.stat_result | None) -> None:
        """The daemon itself just left *rel* in state *st* (None: removed it).

        Realizing, unrealizing and applying a peer's change are not local edits:
        when the watcher reports *rel* and it is still in exactly that state (its
        type and permissions, inode, and a file's size and mtime), the index
        follows without a history entry, and a file is hashed once quiet for
        `CLOSED_QUIET`. If the user changed it meanwhile (a ``chmod`` right after
        a realize too), that change is recorded as usual. Told before the change
        is made: a look that finds the path as it was (nothing there yet, or
        still there) keeps the expectation, for up to `EXPECT_FOR` seconds."""
        self._inbox.append(_Event(arena, rel, expected=signature(st), expect=True))
        self._wake.set()

    def _expect(self, key: Key, wanted: Signature | None, now: float) -> None:
        """Note an expectation, and forget those older than `EXPECT_FOR` (the oldest come first:
        each is put at the end; not a scan of them all per expectation, which a pass placing
        thousands of files made quadratic)."""
        self._expected.pop(key, None)
        self._expected[key] = (wanted, now)
        while (oldest := next(iter(self._expected))) != key and now - self._expected[oldest][1] >= EXPECT_FOR:
            del self._expected[oldest]

    def _own(self, key: Key, st: os.stat_result | None) -> bool:
        """Whether the state of *key* is the one the daemon left (the expectation is used up)."""
        if key not in self._expected:
            return False
        wanted, since = self._expected[key]
        seen = signature(st)
        if seen != wanted and (seen is None) != (wanted is None) and self._now - since < EXPECT_FOR:
            return False  # not made yet (the daemon tells before it acts): still expected
        del self._expected[key]
        return seen == wanted

    def changed(self, arena: str, changes: Iterable[Change]) -> None:
        """Watcher changes in an arena's tree, handed to the indexer's round in order."""
        a = self._arenas.get(arena)
        if a is None or a.marked is False:
            return  # an unmarked arena is not indexed: a walk catches up once it is marked
        for change in changes:
            path = join(change.directory, change.name) if change.name else change.directory
            if marker.MARKER in (path, change.moved_from):
                a.walks_wanted += 1  # the marker changed: the walk checks it is still there
            if staging.reserved(path):
                continue  # the daemon's own files, never indexed
            moved_from = change.moved_from
            if moved_from is not None and staging.reserved(moved_from):
                moved_from = None  # renamed out of the staging directory: a new file where it lands
            self._inbox.append(_Event(arena, path, moved_from, closed=change.closed))
        self._wake.set()

    def rescan_all(self) -> None:
        """Events were lost: walk every arena again."""
        for a in self._arenas.values():
            a.walks_wanted += 1
            a.retry_at = 0.0
        self._wake.set()

    def _queue(self, arena: str, rel: bytes, due: float, force: bool = False) -> None:
        key = (arena, rel)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(due)
            heapq.heappush(self._due, (due, key))
        elif due > pending.due:  # already waiting: the look after the rest sees whether it changed
            self._later(key, pending, due)
        pending.force = pending.force or force

    def _later(self, key: Key, pending: _Pending, due: float) -> None:
        pending.due = due
        heapq.heappush(self._due, (due, key))  # the older heap entry is skipped when popped

    def _retry(self, key: Key, now: float) -> None:
        """Look at *key* again after a backoff (its look, rename or walk failed)."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        due = now + self._backoff(failures)
        pending = self._pending.get(key)
        if pending is None:
            self._queue(key[0], key[1], due)
        else:
            self._later(key, pending, due)

    def _backoff(self, failures: int) -> float:
        return float(min(max(self.rest, 1.0) * 2 ** min(failures - 1, 16), MAX_BACKOFF))

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
        """How many paths (and changes) are waiting to be looked at or hashed."""
        return len(self._pending) + len(self._inbox)

    # ------------------------------------------------------------ the task

    async def run(self) -> None:
        while True:
            self._wake = trio.Event()  # before looking at the state: no wake-up is lost
            for a in list(self._arenas.values()):
                if not a.scanned and a.retry_at <= self.clock():
                    await self.reconcile(a.name)
            events, self._inbox = self._inbox, []
            self._now, self._wall_ns = self.clock(), self.wall()
            if events or (self._due and self._due[0][0] <= self._now):
                await trio.to_thread.run_sync(self._round, events)
                if self._shrink.due(len(self._pending)):  # no round runs: safe to swap
                    self._pending = dict(self._pending)
                continue
            waits = [self._due[0][0]] if self._due else []
            waits += [a.retry_at for a in self._arenas.values() if not a.scanned]
            with trio.move_on_after(max(min(waits) - self._now, 0.0) if waits else 3600.0):
                await self._wake.wait()

    def _round(self, events: list[_Event]) -> None:
        """Apply *events* in order, then look at (and hash) what is due (worker thread).

        Nothing is dropped: whatever fails is looked at again after a backoff."""
        keys: list[Key] = []
        try:
            self._apply(events)
            keys = self._next_due(self._now)
            self._process(keys)
        except Exception:  # indexing trouble must never take the daemon down, nor lose a change
            log.exception("an indexing round (%d changes, %d paths) failed", len(events), len(keys))
            for event in events:
                self._retry((event.arena, event.path), self._now)
                if event.moved_from is not None:
                    self._retry((event.arena, event.moved_from), self._now)
            for key in keys:
                self._retry(key, self._now)
        self._gone = self._count_gone()

    def _count_gone(self) -> dict[str, Counts]:
        """What the index counts of the files seen gone that wait out their rest (worker thread)."""
        gone: dict[str, Counts] = {}
        for key in list(self._gone_keys):
            arena, rel = key
            a = self._arenas.get(arena)
            pending = self._pending.get(key)
            if pending is None or not pending.gone or a is None:
                self._gone_keys.discard(key)
                continue
            record = self.index.get(a.root, parts(rel))
            if record is not None and record.kind == KIND_FILE:
                gone[arena] = gone.get(arena, Counts()) + tally(record)
        return gone

    def _apply(self, events: list[_Event]) -> None:
        """Renames become index renames (exchanges, exchanges), in order, in one transaction;
        the rest is queued."""
        now = self._now
        with self.index.batch():
            i = 0
            while i < len(events):
                event = events[i]
                i += 1
                a = self._arenas.get(event.arena)
                if a is None or not a.marked or marker.MARKER in (event.path, event.moved_from):
                    continue  # not indexed (the marker: its change has the tree walked again)
                try:
                    if event.expect:  # (the watcher's event of the change is what looks at it)
                        self._expect((event.arena, event.path), event.expected, now)
                    elif event.moved_from is None:
                        self._queue(event.arena, event.path, now)  # looked at now; hashed once rested
                        if event.closed or (event.arena, event.path) in self._expected:
                            # closed by its writer, or placed by the daemon (a realized file):
                            # hashed once quiet, and told to peers then, not after a rest period
                            self._look_soon((event.arena, event.path))
                        self._seen_gone((event.arena, event.path))
                    elif (partner := self._exchanged(events, i - 1)) is not None:
                        for skipped in events[i:partner]:  # the second move's first half
                            self._queue(skipped.arena, skipped.path, now)
                        i = partner + 1
                        self._exchange(event, event.moved_from)
                    else:
                        self._rename(event, event.moved_from)
                except Exception:  # a failed rename leaves both paths to be looked at again
                    log.exception("%s/%s: indexing a change failed", event.arena, _show(event.path))
                    for rel in (event.path, event.moved_from):
                        if rel is not None:
                            self._retry((event.arena, rel), now)

    def _look_soon(self, key: Key) -> None:
        """A writer closed *key*: look at it soon rather than after a rest period.

        The look records its size and mtime (else the index keeps what the last
        look saw, a new file's 0 bytes, for a whole rest period), and the file
        is hashed once it has stayed unchanged for `CLOSED_QUIET` since (not at
        once: a logger that opens, appends and closes many times a second
        would be read whole at each close). At most one such look per
        `CLOSED_QUIET`, however often it is closed."""
        pending = self._pending.get(key)
        if pending is None:
            return
        pending.closed = True
        due = max(self._now, pending.looked + self._quiet)
        if due < pending.due:
            self._later(key, pending, due)

    @property
    def _quiet(self) -> float:
        return min(CLOSED_QUIET, self.rest)

    @property
    def _grace(self) -> float:
        return min(DELETE_GRACE, self.rest)

    def _seen_gone(self, key: Key) -> None:
        """A file waiting for its rest that is missing now waits as a gone one (not counted).

        Only its going is taken early: a look before its time would cut its rest short."""
        pending = self._pending.get(key)
        a = self._arenas.get(key[0])
        if pending is None or pending.gone or pending.due <= self._now or a is None or key in self._expected:
            return
        record = self.index.get(a.root, parts(key[1]))
        if record is None or record.kind != KIND_FILE or self._stat(a, key[1]) is not None:
            return
        pending.gone = True
        pending.gone_at = self._wall_ns
        self._gone_keys.add(key)
        self._later(key, pending, self._now + self._grace)

    def _exchanged(self, events: list[_Event], i: int) -> int | None:
        """Whether the move *events[i]* (A to B) is half of a RENAME_EXCHANGE: the index of
        the other half (B to A), or None.

        The watcher reports an exchange as two moves, each a moved-from and a
        moved-to: the move B to A follows, after its own moved-from half (B).
        Renaming A to B and back leaves no B; an exchange leaves both."""
        first = events[i]
        j = i + 1
        if j < len(events) and events[j].moved_from is None and not events[j].expect:
            j += 1  # the moved-from half of B to A, reported under B
        if j >= len(events):
            return None
        second = events[j]
        a = self._arenas.get(first.arena)
        exchanged = (
            a is not None
            and not second.expect
            and second.arena == first.arena
            and (second.path, second.moved_from) == (first.moved_from, first.path)
            and all(e.path == first.path for e in events[i + 1 : j])
            and self._stat(a, first.path) is not None
            and self._stat(a, second.path) is not None
        )
        return j if exchanged else None

    def _exchange(self, event: _Event, old: bytes) -> None:
        """Exchange *old* and *event.path* in the index, then look at both again.

        Moves are paired by the watcher's events, not by what the disk holds: a
        rename of file A over file B and back, then a new B, looks the same. The
        look has the last word, and a look trusts size and mtime, so two files
        whose sizes and mtimes are the same are read again in full (a directory
        can only have replaced an empty one: what is below tells)."""
        a = self._arenas.get(event.arena)
        if a is None:
            return
        new = event.path
        log.debug("%s: %s and %s exchanged", event.arena, _show(old), _show(new))
        own = [self._own((event.arena, rel), self._stat(a, rel)) for rel in (new, old)]
        swapped = self.index.exchange(a.root, parts(old), parts(new), logged=not any(own))
        x, y = (self.index.get(a.root, parts(rel)) for rel in (old, new))
        alike = (
            x is not None
            and y is not None
            and x.kind == y.kind == KIND_FILE
            and (x.size, x.mtime_ns) == (y.size, y.mtime_ns)
        )
        force = not swapped or alike
        moving = {
            key: self._pending.pop(key)
            for key in list(self._pending)
            if key[0] == event.arena and (_under(key[1], old) or _under(key[1], new))
        }
        for (arena, rel), pending in moving.items():
            top, other = (old, new) if _under(rel, old) else (new, old)
            key = (arena, other + rel[len(top) :])
            self._pending[key] = pending
            heapq.heappush(self._due, (pending.due, key))
        self._queue(event.arena, old, self._now, force=force)
        self._queue(event.arena, new, self._now, force=force)

    def _rename(self, event: _Event, old: bytes) -> None:
        """Rename in the index, then look at both paths again: the disk has the last word."""
        a = self._arenas.get(event.arena)
        if a is None:
            return
        new = event.path
        st = self._stat(a, new)
        own = self._own((event.arena, new), st)
        if own:  # the daemon moved a file where a peer renamed it, and records that itself
            self._queue(event.arena, old, self._now)  # (quiet if it expected the old path gone)
            self._queue(event.arena, new, self._now)
            self._pending[(event.arena, new)].quiet = True
            return
        record = self.index.get(a.root, parts(old))
        current = (st.st_size, st.st_mtime_ns) if st is not None and stat.S_ISREG(st.st_mode) else None
        if record is None and current is not None and st is not None:
            # made and renamed before it was looked at (an editor's atomic save, quickly): it is
            # recorded as it is first, so the rename says the same whatever the timing
            self._record(a, old, st, None, quiet=own)
        self.index.rename(a.root, parts(old), parts(new), logged=not own, current=current)
        if record is not None and record.kind == KIND_DIR:  # what was waiting below moves too
            prefix = old + b"/"
            for key in [k for k in self._pending if k[0] == event.arena and k[1].startswith(prefix)]:
                self._move_pending(key, (event.arena, new + key[1][len(old) :]))
        self._move_pending((event.arena, old), (event.arena, new))
        self._queue(event.arena, old, self._now)  # something may be there again
        self._queue(event.arena, new, self._now)  # a directory is walked: it may hold more

    def _move_pending(self, old: Key, new: Key) -> None:
        moved = self._pending.pop(old, None)
        if moved is not None and new not in self._pending:
            self._pending[new] = moved
            heapq.heappush(self._due, (moved.due, new))

    def _process(self, keys: list[Key]) -> None:
        """Look at *keys*, then hash what has rested: a few transactions for the lot."""
        now = self._now
        to_hash: list[_Hashing] = []
        new_dirs: list[tuple[_Arena, bytes, bool]] = []
        with self.index.batch():
            for key in keys:
                try:
                    action = self._look(key)
                except Exception:  # one path's trouble stops neither the others nor the daemon
                    log.exception("%s/%s: indexing failed", key[0], _show(key[1]))
                    self._retry(key, now)
                    continue
                self._failures.pop(key, None)
                if isinstance(action, _Hashing):
                    to_hash.append(action)
                elif action is not None:
                    new_dirs.append(action)
        for a, rel, force in new_dirs:  # a directory may arrive with content inside (moved in, unpacked)
            try:
                queued = self._walk(a, rel, force)
            except Exception:
                log.exception("%s/%s: the walk failed", a.name, _show(rel))
                self._retry((a.name, rel), now)
                continue
            for path in queued:
                # found in a directory made or moved in: its files may have been written and
                # closed before the directory was watched (no close event comes), so they are
                # looked at now and hashed once quiet, as a closed file is
                self._queue(a.name, path, now)
                self._look_soon((a.name, path))
        if to_hash:
            results = self._hash_all(to_hash)
            with self.index.batch():
                for job, result in zip(to_hash, results, strict=True):
                    try:
                        self._settle(job, result)
                    except Exception:
                        log.exception("%s/%s: indexing failed", job.arena.name, _show(job.rel))
                        self._retry((job.arena.name, job.rel), now)

    def _look(self, key: Key) -> _Hashing | tuple[_Arena, bytes, bool] | None:
        """Index *key* as it is now; what is left to do: hash it, walk it, or nothing."""
        arena, rel = key
        a = self._arenas.get(arena)
        pending = self._pending.get(key)
        if a is None or pending is None or not a.marked:
            self._pending.pop(key, None)  # an unmarked arena's changes wait for its next walk
            return None
        st = self._stat(a, rel)
        pending.quiet = pending.quiet or self._own(key, st)
        linked = self._links.saw(key, st)
        if st is None:
            record = self.index.get(a.root, parts(rel))
            if pending.quiet:
                self.index.delete(a.root, parts(rel), logged=False)
                self._pending.pop(key, None)
                return None
            if record is not None and record.kind == KIND_FILE and not pending.gone:
                # a file deleted and written again within the grace (an editor's save) is
                # an edit of that file, not a delete and a create
                pending.gone = True
                pending.gone_at = self._wall_ns
                self._gone_keys.add(key)
                self._later(key, pending, self._now + self._grace)
                return None
            self.index.delete(a.root, parts(rel), when=pending.gone_at or None)
            self._pending.pop(key, None)
            return None
        pending.gone = False
        old = self.index.get(a.root, parts(rel))
        if linked and (old is None or (old.size, old.mtime_ns) != (st.st_size, st.st_mtime_ns)):
            for other in linked:  # the same content under its other names: each its own path
                self._queue(*other, self._now)
        outcome = self._record(a, rel, st, old, quiet=pending.quiet, force=pending.force)
        if outcome != "hash":
            self._pending.pop(key, None)
            return (a, rel, pending.force) if outcome == "dir" else None
        pending.force = False  # recorded as changed: it will be read
        seen = (st.st_size, st.st_mtime_ns)
        unchanged_for = self._wall_ns - st.st_mtime_ns
        rested = unchanged_for >= self.rest * 1e9
        pending.looked = self._now
        # Closed by its writer: hashed once unchanged for a moment (its mtime says so, or two
        # looks that far apart saw the same), not after a whole rest period.
        quiet = pending.closed and unchanged_for >= self._quiet * 1e9
        if not rested and not quiet and pending.seen != seen:  # written to lately: look again later
            pending.seen = seen
            self._later(key, pending, self._now + (self._quiet if pending.closed else self.rest))
            return None
        self._pending.pop(key, None)
        return _Hashing(a, rel, st, pending.quiet, self._base(old, st))

    def _base(self, old: Record | None, st: os.stat_result) -> tuple[bytes, int] | None:
        """The last hashed content of a file now larger (hash, size): it may have been appended to."""
        if old is None or old.kind != KIND_FILE or old.hash is None:
            return None
        manifest = self.index.manifest(old.hash)
        size = manifest[-1][0] + manifest[-1][1] if manifest else 0
        return (old.hash, size) if 0 < size < st.st_size else None

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
                results.append(self.hasher(fd, job.base[1] if job.base is not None else None))
            except (ChangedWhileHashingError, OSError) as exc:
                results.append(exc)
            finally:
                os.close(fd)
        return results

    def _settle(self, job: _Hashing, result: Content | Exception) -> None:
        a, rel = job.arena, job.rel
        if isinstance(result, ChangedWhileHashingError):
            self._queue(a.name, rel, self._now + self.rest)
            return
        if isinstance(result, (FsError, OSError)) and _gone(
            result
        ):  # went away (or was renamed) since the look
            self._queue(a.name, rel, self._now)
            return
        if isinstance(result, Exception):
            self._unreadable(a, rel, result)
            return
        self.stats.unreadable.discard((a.name, rel))
        record = Record(KIND_FILE, result.size, result.mtime_ns, stat.S_IMODE(job.st.st_mode), result.hash)
        chunks = [(c.offset, c.length, c.hash) for c in result.chunks]
        old = self.index.get(a.root, parts(rel))
        op = None if job.quiet else self._content_op(old, result, job.base)
        # the content's time: the inode's last change when it was read (no user can set it,
        # unlike the mtime), which is its last write unless a chmod or utime came after
        when = result.ctime_ns or None
        if self.index.put(a.root, parts(rel), record, chunks, op=op, when=when):
            self.stats.hashed += 1
            self.stats.bytes_hashed += result.size

    def _content_op(self, old: Record | None, content: Content, base: tuple[bytes, int] | None) -> str | None:
        """create; edit (the version before with more after it, or sharing a chunk with it)
        or overwrite; None: the same."""
        if old is None or old.kind != KIND_FILE or old.hash is None:
            return "create"
        if old.hash == content.hash:
            return None  # touched, or written back unchanged
        if base is not None and base[0] == old.hash and content.prefix_hash == old.hash:
            return "edit"  # appended to (a small file is one chunk: it shares none)
        before = {chunk[2] for chunk in self.index.manifest(old.hash) or ()}
        return "edit" if any(c.hash in before for c in content.chunks) else "overwrite"

    def _unreadable(self, a: _Arena, rel: bytes, exc: Exception) -> None:
        key = (a.name, rel)
        if key not in self.stats.unreadable:
            log.warning("%s/%s: cannot read to index it: %s", a.name, _show(rel), exc)
        self.stats.unreadable.add(key)


def _gone(exc: FsError | OSError) -> bool:
    """Whether *exc* says the path is no longer what it was (removed, or an ancestor
    or the path itself replaced by another kind): its own event will tell what is there."""
    return isinstance(exc, NotFound) or exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP)


def _under(rel: bytes, top: bytes) -> bool:
    return rel == top or rel.startswith(top + b"/")


def _show(rel: bytes) -> str:
    return rel.decode("utf-8", "backslashreplace")
