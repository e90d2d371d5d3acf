"""The content index: this peer's view of each arena (its Real, what peers told of, tombstones),
and each peer's view as it announced it, as trees of nodes in LMDB.

Layout (schema version 5, see `realizefs.store.schema`):

``nodes``
    key: parent node id (8 bytes, big-endian) + entry name (bytes, at most 255)
    value (`realizefs.store.records`): msgpack array
    ``[id, kind, size, mtime_ns, mode, hash, target, pending, vv, real]``
    where *kind* is ``KIND_FILE``, ``KIND_DIR``, ``KIND_LINK`` or
    ``KIND_DELETED`` (a tombstone: the path was deleted at version *vv*; it
    keeps its node id, so a deleted directory keeps its children's tombstones
    below it); *hash* is the 32-byte BLAKE3 of the file's last settled content
    (nil before the first); *pending* says the file changed since (being
    written, or resting) and *size*/*mtime_ns* are already the new ones;
    *target* is a symlink's target; *vv* the path's version vector (peer id ->
    counter); *real* true for an entry in this peer's Real, false for one known
    only from peers (Unreal; also every entry of a peer's view).
    Each arena's root (``arena:<name>``) holds this peer's view: what
    `children` and `get` list by default is its Real part, as before schema 5.
    Each peer's view of an arena is another root (``view:``, below): the same
    tree, written only by `receive` and `replace_view`, without history or counts.
``parents``
    key: node id (8 bytes) -> value: parent id (8 bytes) + name. The way back
    from a node to its path.
``manifests``
    key: a content hash (32 bytes) -> value: msgpack array of
    ``[offset, length, chunk hash]`` triples. Shared by every file with that
    content; kept when the last such file goes (pruning comes with peers'
    acknowledgements).
``chunks``
    See `realizefs.store.chunks`: chunk hash + source -> where the chunk's
    bytes are. Every write below that changes which file node holds which
    settled content changes these entries in its own transaction (a rename or
    an exchange keeps node ids, so it changes none), so `chunk_sources` never
    lists a file that no longer holds the chunk as indexed.
``meta`` keys ``arena:<name>`` -> the arena root's node id; ``next_id`` -> the
    next node id to hand out (8 bytes); ``counts:<root id>`` -> what the arena's
    Real holds, changed by every write in its own transaction (`realizefs.store.records`).
    ``marked:<root id>`` -> empty: this store marked the arena's root.
    ``view:<peer key hex>:<arena>`` -> the root node id of that peer's view of
    the arena; ``sync:<peer key hex>:<arena>`` -> the peer's store id (16
    bytes) + the last sequence number of its history received (8 bytes,
    big-endian), written in the transaction that applied those entries.
``history``
    See `realizefs.store.history`: every change recorded with an *op* is
    appended there in the same transaction, with the path's version vector
    incremented for this peer (origin: this peer); every change accepted from
    a peer is appended with its vector and origin unchanged.

Tombstones: a logged delete leaves, at the path and at each path below a
deleted directory, a record of kind ``KIND_DELETED`` with the vector of the
delete (the old one counted once more by this peer); a logged rename leaves
one at the old path with the rename's vector. A path written again over its
tombstone continues from the tombstone's vector (and keeps its node id, so a
directory made again keeps its old children's tombstones, unlisted), so the
new version dominates the delete. A record leaving without news (an unlogged
delete, a file never hashed) becomes a tombstone with its vector unchanged if
that vector is not empty (it continued from a version peers know), else it is
forgotten. Tombstones are kept until the history pruning of issue 11.

Keys are per directory entry, not per path, so path length is unbounded (LMDB
keys are at most 511 bytes; a name at most 255) and renaming a directory is
one update, whatever it holds.

Every method is one short transaction and never awaits; `batch` groups a
thread's writes into one transaction (one fsync instead of one per change).
"""

from __future__ import annotations

import enum
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from realizefs.consensus import versions
from realizefs.consensus.versions import Order
from realizefs.errors import StoreError
from realizefs.store import chunks as chunk_index
from realizefs.store import history, records
from realizefs.store.chunks import ChunkSource, RealSource
from realizefs.store.history import Entry
from realizefs.store.records import (
    KIND_DELETED,
    KIND_DIR,
    KIND_FILE,
    KIND_LINK,
    Counts,
    Record,
    pack,
    tally,
    tally_value,
    to_record,
    unpack,
)
from realizefs.store.schema import Store

__all__ = [
    "KIND_DELETED",
    "KIND_DIR",
    "KIND_FILE",
    "KIND_LINK",
    "Accepted",
    "ChunkSource",
    "Counts",
    "Entry",
    "Index",
    "Outcome",
    "RealSource",
    "Record",
    "SyncState",
]

_ID = struct.Struct(">Q")
_SYNC = struct.Struct(">16sQ")
_SET_OPS = {"create": KIND_FILE, "edit": KIND_FILE, "overwrite": KIND_FILE, "mkdir": KIND_DIR}
_SET_OPS |= {"symlink": KIND_LINK, "chmod": 0}
_GONE_OPS = ("delete", "rmdir")


class Outcome(enum.Enum):
    """What `Index.accept` did with a peer's change."""

    APPLIED = "applied"  # newer than what the index held: the path is that version now (Unreal)
    NOTED = "noted"  # newer, but the path (or a file above it) is Real here: left for consensus, passed on
    STALE = "stale"  # equal to or older than what the index holds (or already noted): nothing
    CONFLICT = "conflict"  # concurrent with what the index holds: nothing changed, for consensus


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome of one entry given to `Index.accept`; *held*: the record it was compared
    with (for a conflict, the concurrent one; for a rename, at the path or the old path)."""

    entry: Entry
    outcome: Outcome
    held: Record | None = None


@dataclass(frozen=True, slots=True)
class SyncState:
    """What this peer received of a peer's history for an arena."""

    store_id: bytes
    last_seq: int


def split(path: bytes) -> list[bytes]:
    """A history path as names."""
    return path.split(b"/") if path else []


class Index:
    def __init__(self, store: Store, me: bytes, clock: Callable[[], int] = time.time_ns) -> None:
        self.me = me  # this peer's id in version vectors
        self.clock = clock
        self._history = store.dbs[b"history"]
        self._local = threading.local()  # a thread's batch transaction, if any
        self.env = store.env
        self._nodes = store.dbs[b"nodes"]
        self._parents = store.dbs[b"parents"]
        self._manifests = store.dbs[b"manifests"]
        self._chunks = store.dbs[b"chunks"]
        self._meta = store.dbs[b"meta"]

    # ------------------------------------------------------------ transactions

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Make this thread's writes inside the block one transaction (one fsync).

        The block must not await: a write transaction holds LMDB's write lock."""
        if getattr(self._local, "txn", None) is not None:
            yield  # already batching
            return
        with self.env.begin(write=True) as txn:
            self._local.txn = txn
            try:
                yield
            finally:
                self._local.txn = None

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            yield txn  # sees the batch's own writes
            return
        with self.env.begin() as txn:
            yield txn

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        txn = getattr(self._local, "txn", None)
        if txn is not None:
            yield txn
            return
        with self.env.begin(write=True) as txn:
            yield txn

    # ------------------------------------------------------------ arenas and paths

    def arena_root(self, arena: str) -> int:
        """The node id of an arena's root, created on first use."""
        with self._writing() as txn:
            return self._root(txn, b"arena:" + arena.encode())

    def _root(self, txn: Any, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        if raw is not None:
            return int(_ID.unpack(raw)[0])
        root = self._new_id(txn)
        txn.put(key, _ID.pack(root), db=self._meta)
        return root

    def marked(self, root: int) -> bool:
        """Whether this store ever marked the arena's root (`realizefs.real.marker`)."""
        with self._reading() as txn:
            return txn.get(b"marked:" + _ID.pack(root), db=self._meta) is not None

    def set_marked(self, root: int) -> None:
        with self._writing() as txn:
            txn.put(b"marked:" + _ID.pack(root), b"", db=self._meta)

    def _new_id(self, txn: Any) -> int:
        raw = txn.get(b"next_id", db=self._meta)
        node = _ID.unpack(raw)[0] if raw is not None else 1
        txn.put(b"next_id", _ID.pack(node + 1), db=self._meta)
        return int(node)

    def _walk(self, txn: Any, root: int, path: Sequence[bytes]) -> int | None:
        """The node id of the directory *path*; None if it is not an indexed directory (live,
        Real or Unreal)."""
        node: int | None = root
        for name in path:
            raw = txn.get(_ID.pack(node) + name, db=self._nodes) if node is not None else None
            value = unpack(raw) if raw is not None else None
            node = value[0] if value is not None and value[1] == KIND_DIR else None
        return node

    def _key(self, txn: Any, root: int, path: Sequence[bytes]) -> bytes | None:
        """The ``nodes`` key of *path*; None if its parent directory is not indexed."""
        parent = self._walk(txn, root, path[:-1])
        return None if parent is None else _ID.pack(parent) + path[-1]

    def _chain(self, txn: Any, root: int, path: Sequence[bytes]) -> tuple[list[list[Any]], bytes | None, Any]:
        """Through any record (tombstones included): the values of *path*'s ancestors found, the
        ``nodes`` key of *path* (None if an ancestor is missing) and its value (None: none)."""
        found: list[list[Any]] = []
        node = root
        for name in path[:-1]:
            raw = txn.get(_ID.pack(node) + name, db=self._nodes)
            if raw is None:
                return found, None, None
            value = unpack(raw)
            found.append(value)
            node = value[0]
        key = _ID.pack(node) + path[-1]
        raw = txn.get(key, db=self._nodes)
        return found, key, unpack(raw) if raw is not None else None

    # ------------------------------------------------------------ reading

    def get(
        self, root: int, path: Sequence[bytes], *, unreal: bool = False, tombstones: bool = False
    ) -> Record | None:
        """The record of *path* (its names from the arena root), or None.

        By default a live entry of this peer's Real only; *unreal*: also one known only
        from peers; *tombstones*: also a tombstone (found below deleted directories too)."""
        if not path:
            return Record(KIND_DIR)
        with self._reading() as txn:
            ancestors, _, value = self._chain(txn, root, path)
            if value is None or not all(a[1] == KIND_DIR or tombstones for a in ancestors):
                return None
            record = to_record(value)
            return record if _shown(record, unreal, tombstones) else None

    def children(
        self, root: int, path: Sequence[bytes], *, unreal: bool = False, tombstones: bool = False
    ) -> dict[bytes, Record]:
        """The entries of a directory: by default its Real ones (see `get` for the flags)."""
        with self._reading() as txn:
            if tombstones:
                value = self._chain(txn, root, path)[2] if path else [root]
                node = value[0] if value is not None else None
            else:
                node = self._walk(txn, root, path)
            if node is None:
                return {}
            return {
                name: record
                for name, record in self._children(txn, node)
                if _shown(record, unreal, tombstones)
            }

    def _children(self, txn: Any, node: int) -> Iterator[tuple[bytes, Record]]:
        for name, value in self._child_items(txn, node):
            yield name, to_record(value)

    def _child_items(self, txn: Any, node: int) -> list[tuple[bytes, list[Any]]]:
        return records.children(txn, self._nodes, node)

    def manifest(self, content_hash: bytes) -> list[tuple[int, int, bytes]] | None:
        with self._reading() as txn:
            return chunk_index.read_manifest(txn, self._manifests, content_hash)

    def chunk_sources(self, chunk_hash: bytes) -> list[ChunkSource]:
        """Where this peer holds *chunk_hash*: each indexed file whose settled content has
        it (first occurrence), with the file's path as indexed now; in node id order.

        Kept exactly in step with the records (same transactions), not checked on read:
        a file that was changed, deleted or replaced since is not listed. The file on
        disk may have been written since the indexer looked: verify the bytes read."""
        with self._reading() as txn:
            found: list[ChunkSource] = []
            for _, node, offset, length in chunk_index.sources(txn, self._chunks, chunk_hash):
                root, path = self._locate(txn, node)
                found.append(RealSource(root, node, path, offset, length))
            return found

    def _locate(self, txn: Any, node: int) -> tuple[int, tuple[bytes, ...]]:
        """(arena root id, names from it) of *node*, by its ``parents`` entries."""
        names: list[bytes] = []
        while True:
            raw = txn.get(_ID.pack(node), db=self._parents)
            if raw is None:
                return node, tuple(reversed(names))  # the arena root has no parent
            node = _ID.unpack(raw[:8])[0]
            names.append(bytes(raw[8:]))

    def counts(self, root: int) -> Counts:
        """What the arena's index holds: kept by every write, so one read."""
        with self._reading() as txn:
            return records.read_counts(txn, self._meta, root)

    def recount(self, root: int) -> Counts:
        """The same as `counts`, by walking the arena's records."""
        with self._reading() as txn:
            return records.recount(txn, self._nodes, root)

    # ------------------------------------------------------------ writing

    def put(
        self,
        root: int,
        path: Sequence[bytes],
        record: Record,
        chunks: Sequence[tuple[int, int, bytes]] | None = None,
        op: str | None = None,
        when: int | None = None,
    ) -> bool:
        """Record *path* (its directories must be indexed); False if its parent is not.

        With an *op*, the change enters the history and the path's version vector
        counts one more change by this peer; without, the vector is kept. Over a
        tombstone or an Unreal entry the vector continues from theirs. *when*: the
        time of the change (ns), if known better than now."""
        if not path:
            return False  # the arena root has no record
        with self._writing() as txn:
            key = self._key(txn, root, path)
            if key is None:
                return False
            raw = txn.get(key, db=self._nodes)
            old = unpack(raw) if raw is not None else None
            delta = tally(record) - tally_value(old)
            if old is not None and (
                old[1] == KIND_DELETED or (old[1] == KIND_DIR) == (record.kind == KIND_DIR)
            ):
                node = old[0]  # a tombstone's node too: a directory made again keeps its old children's
            else:
                node = self._new_id(txn)
                txn.put(_ID.pack(node), key, db=self._parents)
                if old is not None:  # another kind: what was below goes, logged, and is forgotten
                    delta -= self._clear(txn, root, old[0], list(path), op is not None, True)[0]
                    self._forget_below(txn, old[0])
            vv = dict(old[8]) if old is not None else {}
            if op is not None:
                vv = versions.increment(vv, self.me)
                before = to_record(old).base() if old is not None and old[1] != KIND_DELETED else None
                self._log(txn, root, op, path, None, before, record.version(), vv, when, record.kind)
            txn.put(key, pack(node, record, vv), db=self._nodes)
            records.add_counts(txn, self._meta, root, delta)
            if record.hash is not None and chunks is not None:
                chunk_index.write_manifest(txn, self._manifests, record.hash, chunks)
            after = chunk_index.held(node, record)
            self._hold(txn, chunk_index.held_value(old), after, again=chunks is not None)
            return True

    def _hold(
        self, txn: Any, before: tuple[int, bytes] | None, after: tuple[int, bytes] | None, again: bool = False
    ) -> None:
        """A file node's settled content went from *before* to *after* (node, hash; None: none):
        move its chunks' sources along. *again*: write *after*'s even if it is *before*
        (its chunks were just given: a content recorded before its manifest is listed now)."""
        if before is not None and before != after:
            chunk_index.remove_file(txn, self._chunks, self._manifests, *before)
        if after is not None and (before != after or again):
            chunk_index.add_file(txn, self._chunks, self._manifests, *after)

    def _log(
        self,
        txn: Any,
        root: int,
        op: str,
        path: Sequence[bytes],
        old_path: Sequence[bytes] | None,
        old: history.Version | None,
        new: history.Version | None,
        vv: dict[bytes, int],
        when: int | None = None,
        kind: int = 0,
    ) -> None:
        entry = history.Entry(
            0,
            op,
            b"/".join(path),
            b"/".join(old_path) if old_path else None,
            old,
            new,
            vv,
            when if when is not None else self.clock(),
            self.me,
            kind,
        )
        history.append(txn, self._history, root, entry)

    def history(self, root: int, limit: int) -> list[Entry]:
        """The arena's last *limit* history entries, oldest first."""
        with self._reading() as txn:
            return history.recent(txn, self._history, root, limit)

    def history_since(self, root: int, seq: int, limit: int) -> list[Entry]:
        """At most *limit* history entries after sequence number *seq*, oldest first (to send)."""
        with self._reading() as txn:
            return history.since(txn, self._history, root, seq, limit)

    def last_seq(self, root: int) -> int:
        with self._reading() as txn:
            return history.last_seq(txn, self._history, root)

    def delete(
        self,
        root: int,
        path: Sequence[bytes],
        logged: bool = True,
        when: int | None = None,
        *,
        unreal: bool = False,
    ) -> bool:
        """Delete *path* and, for a directory, everything below it; whether it was known.

        Acts on Real entries (a tombstone, or an Unreal entry, is not known) unless
        *unreal*, when it deletes what peers told of too (a local delete through the
        mount). Logged, each file below gets a delete entry and each directory an
        rmdir, deepest first, and each leaves a tombstone with that entry's vector.
        Unreal entries below a Real directory stay (unless *unreal*): the directory
        then stays too, as Unreal, with no entry of its own. See the module's
        docstring for what leaves without news."""
        if not path:
            return False
        with self._writing() as txn:
            key = self._key(txn, root, path)
            raw = txn.get(key, db=self._nodes) if key is not None else None
            if key is None or raw is None:
                return False
            value = unpack(raw)
            if value[1] == KIND_DELETED or not (to_record(value).real or unreal):
                return False
            gone, left = self._clear(txn, root, value[0], list(path), logged, unreal, when)
            gone += self._gone(txn, root, key, value, list(path), logged, unreal, left, when)
            records.add_counts(txn, self._meta, root, -gone)
            return True

    def _clear(
        self,
        txn: Any,
        root: int,
        node: int,
        path: list[bytes],
        logged: bool,
        unreal: bool,
        when: int | None = None,
    ) -> tuple[Counts, int]:
        """Delete everything below *node* (as `delete` does, deepest first): what went from the
        counts, and how many records stay below (tombstones, Unreal entries kept)."""
        gone, left = Counts(), 0
        for name, value in self._child_items(txn, node):
            if value[1] == KIND_DELETED:
                left += 1
                continue
            kept = self._clear(txn, root, value[0], [*path, name], logged, unreal, when)
            gone += kept[0]
            key = _ID.pack(node) + name
            gone += self._gone(txn, root, key, value, [*path, name], logged, unreal, kept[1], when)
            left += 1 if txn.get(key, db=self._nodes) is not None else 0
        return gone, left

    def _gone(
        self,
        txn: Any,
        root: int,
        key: bytes,
        value: list[Any],
        path: list[bytes],
        logged: bool,
        unreal: bool,
        left: int,
        when: int | None,
    ) -> Counts:
        """The live record *value* at *key* goes: a tombstone, or forgotten, or (a directory still
        holding Unreal entries, deleted as Real only) Unreal. What it takes from the counts."""
        record = to_record(value)
        if not (record.real or unreal):
            return Counts()  # an Unreal entry below a Real directory deleted as Real: stays
        self._hold(txn, chunk_index.held_value(value), None)
        vv = dict(value[8])
        if record.kind == KIND_DIR and left and self._live_below(txn, value[0]):
            txn.put(key, pack(value[0], replace(record, real=False), vv), db=self._nodes)
            return tally(record)
        if logged and not (record.kind == KIND_FILE and record.hash is None):
            vv = versions.increment(vv, self.me)
            op = "rmdir" if record.kind == KIND_DIR else "delete"
            self._log(txn, root, op, path, None, record.version(), None, vv, when, record.kind)
        if vv or left:
            txn.put(key, pack(value[0], Record(KIND_DELETED, real=False), vv), db=self._nodes)
        else:  # never known beyond this peer and nothing below: nothing to remember
            txn.delete(key, db=self._nodes)
            txn.delete(_ID.pack(value[0]), db=self._parents)
        return tally(record)

    def _live_below(self, txn: Any, node: int) -> bool:
        return any(value[1] != KIND_DELETED for _, value in self._child_items(txn, node))

    def _forget_below(self, txn: Any, node: int) -> None:
        """Remove every record below *node*, tombstones too, from the tree (no count, no log:
        the caller counted the live ones)."""
        for name, value in self._child_items(txn, node):
            self._forget_below(txn, value[0])
            self._hold(txn, chunk_index.held_value(value), None)
            txn.delete(_ID.pack(node) + name, db=self._nodes)
            txn.delete(_ID.pack(value[0]), db=self._parents)

    def rename(
        self,
        root: int,
        old: Sequence[bytes],
        new: Sequence[bytes],
        logged: bool = True,
        current: tuple[int, int] | None = None,
    ) -> bool:
        """Move *old* (with all below it) to *new*, replacing what was there: one update.

        *old* may be Unreal (a rename through the mount); a tombstone is not known.
        *old* keeps a tombstone with the rename's vector (logged), or with the moved
        record's vector if it was not empty (unlogged). *current*: the (size, mtime)
        the file at *new* has now; taken for a file not hashed since it changed (its
        record has those of its last look)."""
        if not old or not new:
            return False
        shorter = min(len(old), len(new))
        if list(old[:shorter]) == list(new[:shorter]) and len(old) != len(new):
            return False  # into itself, or over its own ancestor: rename(2) refuses both
        with self._writing() as txn:
            old_parent = self._walk(txn, root, old[:-1])
            new_parent = self._walk(txn, root, new[:-1])
            if old_parent is None or new_parent is None:
                return False
            old_key = _ID.pack(old_parent) + old[-1]
            new_key = _ID.pack(new_parent) + new[-1]
            raw = txn.get(old_key, db=self._nodes)
            if raw is None or unpack(raw)[1] == KIND_DELETED:
                return False
            if old_key == new_key:
                return True  # rename(2) onto itself: nothing changes
            value = unpack(raw)
            vv = dict(value[8])
            moved_vv = dict(vv)
            before = None
            base: bytes | None = None
            delta = -tally_value(value)  # the moved record may change below, so it is counted again
            raw_replaced = txn.get(new_key, db=self._nodes)
            if raw_replaced is not None:  # an atomic save: the new version follows the replaced one
                replaced = unpack(raw_replaced)
                delta -= self._clear(txn, root, replaced[0], list(new), False, True)[0] + tally_value(
                    replaced
                )
                self._forget_below(txn, replaced[0])
                txn.delete(_ID.pack(replaced[0]), db=self._parents)
                self._hold(txn, chunk_index.held_value(replaced), None)
                replaced_record = to_record(replaced)
                if replaced_record.live and not (
                    replaced_record.kind == KIND_FILE and replaced_record.hash is None
                ):
                    before = replaced_record.version()  # else never hashed: not in the history
                if replaced_record.live:
                    base = replaced_record.hash  # its last hashed content, even if changed since
                vv = versions.merge(vv, replaced[8])
            record = to_record(value)
            if current is not None and record.pending:
                record = replace(record, size=current[0], mtime_ns=current[1])
            if record.kind == KIND_FILE and record.hash is None and not base:
                logged = False  # a file not in the history yet (an editor's temporary file)
            if logged:
                vv = versions.increment(vv, self.me)
            if base and record.kind == KIND_FILE and not record.hash:
                # the new content is not hashed yet: its next entry will be an edit of
                # (or an overwrite of) the version it replaced, not a create
                record = replace(record, hash=base, changed=True)
            if logged:
                self._log(txn, root, "rename", new, old, before, record.version(), vv, None, record.kind)
            # the moved node keeps its id and its chunks' sources: only a record with no
            # settled content (pending, or never hashed) is changed above, and stays so
            txn.put(new_key, pack(value[0], record, vv), db=self._nodes)
            txn.put(_ID.pack(value[0]), new_key, db=self._parents)
            stone = vv if logged else moved_vv
            if stone:
                self._stone(txn, old_key, stone)
            else:
                txn.delete(old_key, db=self._nodes)
            records.add_counts(txn, self._meta, root, delta + tally(record))
            return True

    def _stone(self, txn: Any, key: bytes, vv: dict[bytes, int]) -> None:
        """A new tombstone with vector *vv* at *key* (whose record, if any, moved away)."""
        node = self._new_id(txn)
        txn.put(_ID.pack(node), key, db=self._parents)
        txn.put(key, pack(node, Record(KIND_DELETED, real=False), vv), db=self._nodes)

    def exchange(self, root: int, one: Sequence[bytes], other: Sequence[bytes], logged: bool = True) -> bool:
        """Swap *one* and *other*, each with all below it (``RENAME_EXCHANGE``): two updates.

        Logged, it is one ``exchange`` entry (*path* *other*, *old_path* *one*;
        *old* what was at *other*, *new* what is there now); both paths get the
        same version vector, both sides' merged and counted once more, so each new
        version dominates the one it replaced (as a rename over a path does). A file
        never hashed is not in the history: with one such side, the entry is a
        ``rename`` of the other side onto its path; with two, there is none."""
        if not one or not other:
            return False
        shorter = min(len(one), len(other))
        if list(one[:shorter]) == list(other[:shorter]):
            return False  # the same path, or one inside the other: renameat2(2) refuses
        with self._writing() as txn:
            one_parent = self._walk(txn, root, one[:-1])
            other_parent = self._walk(txn, root, other[:-1])
            if one_parent is None or other_parent is None:
                return False
            one_key = _ID.pack(one_parent) + one[-1]
            other_key = _ID.pack(other_parent) + other[-1]
            raw_one = txn.get(one_key, db=self._nodes)
            raw_other = txn.get(other_key, db=self._nodes)
            if (
                raw_one is None
                or raw_other is None
                or KIND_DELETED in (unpack(raw_one)[1], unpack(raw_other)[1])
            ):
                return False
            first, second = unpack(raw_one), unpack(raw_other)
            moved, replaced = to_record(first), to_record(second)  # moved to *other*, and from it
            vv_one, vv_other = dict(first[8]), dict(second[8])  # each follows its content
            known = [not (r.kind == KIND_FILE and r.hash is None) for r in (moved, replaced)]
            if logged and any(known):
                vv = versions.increment(versions.merge(vv_one, vv_other), self.me)
                vv_one = vv_other = vv
                if all(known):
                    self._log(
                        txn,
                        root,
                        "exchange",
                        other,
                        one,
                        replaced.version(),
                        moved.version(),
                        vv,
                        None,
                        moved.kind,
                    )
                elif known[0]:
                    self._log(txn, root, "rename", other, one, None, moved.version(), vv, None, moved.kind)
                else:
                    self._log(
                        txn, root, "rename", one, other, None, replaced.version(), vv, None, replaced.kind
                    )
            txn.put(other_key, pack(first[0], moved, vv_one), db=self._nodes)
            txn.put(one_key, pack(second[0], replaced, vv_other), db=self._nodes)
            txn.put(_ID.pack(first[0]), other_key, db=self._parents)
            txn.put(_ID.pack(second[0]), one_key, db=self._parents)
            return True  # the same records, swapped: the counts stay

    # ------------------------------------------------------------ peers' changes

    def accept(self, root: int, entry: Entry) -> Accepted:
        """Take a peer's change of the arena *root* (a history entry as the peer sent it, with
        its origin and vector) into this peer's view, in one transaction.

        Its vector decides, against what the index holds at each path the entry names
        (tombstones included): newer there (or nothing there) and the path becomes that
        version as an Unreal entry, a tombstone, or the rename or exchange of Unreal
        entries; equal or older, nothing (`STALE`); concurrent, nothing either
        (`CONFLICT`, for consensus: never overwritten). A live version below a tombstone
        or a file here is a conflict too. A path that is Real here is never changed by
        `accept`: consensus applies its content later; the newer version is `NOTED`, and
        lives on in the sending peer's view (`receive`). Every change applied or noted is
        appended to this peer's history with the entry's origin and vector, unchanged, so
        it is passed on to other peers (a noted one only once: not again when a view
        already holds that version); a change coming back to a peer that made or relayed
        it is equal or older there, so nothing loops. Missing parent directories are made
        as Unreal directories with an empty vector (the peer's own mkdir dominates it)."""
        with self._writing() as txn:
            return self._accept(txn, root, entry)

    def _accept(self, txn: Any, root: int, e: Entry) -> Accepted:
        path = split(e.path)
        targets = [path]
        if e.op in ("rename", "exchange"):
            targets.append(split(e.old_path or b""))
        if e.op not in history.OPS or not all(targets) or any(not n for t in targets for n in t):
            raise StoreError(f"a malformed history entry: {e.op} {e.path!r} {e.old_path!r}")
        found = [self._chain(txn, root, t) for t in targets]
        held = [to_record(value) if value is not None else None for _, _, value in found]
        orders = [versions.compare(e.vv, value[8] if value is not None else {}) for _, _, value in found]
        if Order.CONCURRENT in orders:
            return Accepted(e, Outcome.CONFLICT, held[orders.index(Order.CONCURRENT)])
        newer = [order is Order.DOMINATES for order in orders]
        if not any(newer) or (e.op == "exchange" and not all(newer)):
            return Accepted(e, Outcome.STALE, held[0])
        blocked = False  # below a Real file here: consensus applies that path's newer version first
        if e.op not in _GONE_OPS and newer[0]:
            for ancestor in found[0][0]:
                if ancestor[1] != KIND_DIR and to_record(ancestor).here:
                    blocked = True  # what is below it here is older than that file
                    break
                elif ancestor[1] != KIND_DIR:  # below a tombstone: concurrent with that delete
                    return Accepted(e, Outcome.CONFLICT, to_record(ancestor))
        if blocked or any(r is not None and r.here for r in held):
            if self._noted(txn, root, e):
                return Accepted(e, Outcome.STALE, held[0])
            self._relay(txn, root, e)
            # the parts that are not Real here follow at once: a rename from an Unreal entry
            # leaves its tombstone; a file renamed onto a path not Real here is listed there
            if e.op == "rename" and newer[1] and held[1] is not None and not held[1].here:
                self._place(txn, root, targets[1], _STONE, e.vv)
            if e.op == "rename" and newer[0] and (held[0] is None or not held[0].here) and e.kind != KIND_DIR:
                self._place(txn, root, path, _record(e.new, e.kind or _guess(e.new)), e.vv)
            return Accepted(e, Outcome.NOTED, held[0])
        value = found[0][2]
        kind = e.kind or _SET_OPS.get(e.op) or KIND_DIR
        replaces = e.op in _GONE_OPS or e.op == "rename" or (e.op in _SET_OPS and kind != KIND_DIR)
        if (
            newer[0]
            and replaces
            and value is not None
            and value[1] == KIND_DIR
            and self._live_below(txn, value[0])
        ):
            # a directory deleted or replaced while it holds entries the change did not know of
            # (its maker deleted first what it knew of): concurrent with those
            return Accepted(e, Outcome.CONFLICT, held[0])
        if e.op == "rename" and not newer[0]:
            self._place(txn, root, targets[1], _STONE, e.vv)  # renamed, then changed again: the old path only
        elif e.op == "rename" and not newer[1]:
            self._place(txn, root, path, _record(e.new, e.kind or _guess(e.new)), e.vv)  # made again since
        else:
            self._apply(txn, root, e)
        self._relay(txn, root, e)
        return Accepted(e, Outcome.APPLIED, held[0])

    def _relay(self, txn: Any, root: int, e: Entry) -> None:
        history.append(txn, self._history, root, e)

    def _noted(self, txn: Any, root: int, e: Entry) -> bool:
        """Whether a peer's view of the arena already holds *e*'s version (or a newer) at its path."""
        arena = self._arena_of(txn, root)
        if arena is None:
            return False
        for _, view in self._views(txn, arena):
            value = self._chain(txn, view, split(e.path))[2]
            if value is not None and versions.compare(e.vv, value[8]) in (Order.EQUAL, Order.DOMINATED):
                return True
        return False

    def _apply(self, txn: Any, root: int, e: Entry) -> None:
        """Make the tree *root* as *e* says, whatever it holds (a view follows its peer)."""
        path = split(e.path)
        if e.op in _GONE_OPS:
            self._place(txn, root, path, _STONE, e.vv)
        elif e.op in _SET_OPS:
            kind = e.kind or _SET_OPS[e.op]
            if not kind:  # a chmod from before kinds were recorded: the path's, or a guess
                value = self._chain(txn, root, path)[2]
                kind = value[1] if value is not None and value[1] != KIND_DELETED else _guess(e.new)
            self._place(txn, root, path, _record(e.new, kind), e.vv)
        elif e.op == "rename":
            self._move(txn, root, split(e.old_path or b""), path, e)
        else:
            self._swap(txn, root, split(e.old_path or b""), path, e)

    def _parent(self, txn: Any, root: int, path: Sequence[bytes], live: bool) -> int:
        """The node of *path*'s parent in the tree *root*, made if missing: Unreal directories
        with empty vectors (tombstones, for a tombstone); with *live*, an ancestor that is not
        a directory becomes an Unreal one (its node, vector and what is below kept)."""
        node = root
        for name in path[:-1]:
            key = _ID.pack(node) + name
            raw = txn.get(key, db=self._nodes)
            if raw is None:
                child = self._new_id(txn)
                txn.put(_ID.pack(child), key, db=self._parents)
                txn.put(
                    key,
                    pack(child, Record(KIND_DIR if live else KIND_DELETED, real=False), {}),
                    db=self._nodes,
                )
                node = child
                continue
            value = unpack(raw)
            if live and value[1] != KIND_DIR:
                self._hold(txn, chunk_index.held_value(value), None)
                records.add_counts(txn, self._meta, root, -tally_value(value))
                txn.put(key, pack(value[0], Record(KIND_DIR, real=False), value[8]), db=self._nodes)
            node = value[0]
        return node

    def _place(
        self, txn: Any, root: int, path: Sequence[bytes], record: Record, vv: dict[bytes, int]
    ) -> None:
        """*path* holds *record* with vector *vv* in the tree *root*; it keeps its node id, and a
        directory becoming anything else turns what is live below into tombstones."""
        key = _ID.pack(self._parent(txn, root, path, record.live)) + path[-1]
        raw = txn.get(key, db=self._nodes)
        old = unpack(raw) if raw is not None else None
        if old is None:
            node = self._new_id(txn)
            txn.put(_ID.pack(node), key, db=self._parents)
        else:
            node = old[0]
            if old[1] == KIND_DIR and record.kind != KIND_DIR:
                self._bury(txn, root, node)
        self._hold(txn, chunk_index.held_value(old), chunk_index.held(node, record))
        records.add_counts(txn, self._meta, root, tally(record) - tally_value(old))
        txn.put(key, pack(node, record, dict(vv)), db=self._nodes)

    def _bury(self, txn: Any, root: int, node: int) -> None:
        """Everything live below *node* becomes a tombstone with its own vector."""
        for name, value in self._child_items(txn, node):
            if value[1] != KIND_DELETED:
                self._bury(txn, root, value[0])
                self._hold(txn, chunk_index.held_value(value), None)
                records.add_counts(txn, self._meta, root, -tally_value(value))
                txn.put(_ID.pack(node) + name, pack(value[0], _STONE, value[8]), db=self._nodes)

    def _move(self, txn: Any, root: int, old: list[bytes], new: list[bytes], e: Entry) -> None:
        """A peer's rename of *old* (with what is below) to *new*; *old* keeps a tombstone."""
        _, old_key, value = self._chain(txn, root, old)
        if old_key is None or value is None or value[1] == KIND_DELETED or new[: len(old)] == old:
            self._place(txn, root, new, _record(e.new, e.kind or _guess(e.new)), e.vv)
            self._place(txn, root, old, _STONE, e.vv)
            return
        self._hold(txn, chunk_index.held_value(value), None)
        records.add_counts(txn, self._meta, root, -tally_value(value))
        txn.delete(old_key, db=self._nodes)
        self._stone(txn, old_key, e.vv)
        new_key = _ID.pack(self._parent(txn, root, new, True)) + new[-1]
        raw = txn.get(new_key, db=self._nodes)
        if raw is not None:
            replaced = unpack(raw)
            self._bury(txn, root, replaced[0])
            self._forget_below(txn, replaced[0])
            self._hold(txn, chunk_index.held_value(replaced), None)
            records.add_counts(txn, self._meta, root, -tally_value(replaced))
            txn.delete(_ID.pack(replaced[0]), db=self._parents)
        txn.put(new_key, pack(value[0], _record(e.new, value[1]), e.vv), db=self._nodes)
        txn.put(_ID.pack(value[0]), new_key, db=self._parents)

    def _swap(self, txn: Any, root: int, one: list[bytes], other: list[bytes], e: Entry) -> None:
        """A peer's exchange: what was at *one* is at *other* (version *e.new*), and back."""
        (_, one_key, first), (_, other_key, second) = (
            self._chain(txn, root, one),
            self._chain(txn, root, other),
        )
        if one_key is None or other_key is None or first is None or second is None:
            self._place(txn, root, other, _record(e.new, e.kind or _guess(e.new)), e.vv)
            self._place(txn, root, one, _record(e.old, _guess(e.old)), e.vv)
            return
        txn.put(other_key, pack(first[0], _record(e.new, first[1]), e.vv), db=self._nodes)
        txn.put(one_key, pack(second[0], _record(e.old, second[1]), e.vv), db=self._nodes)
        txn.put(_ID.pack(first[0]), other_key, db=self._parents)
        txn.put(_ID.pack(second[0]), one_key, db=self._parents)

    def _arena_of(self, txn: Any, root: int) -> str | None:
        cursor = txn.cursor(db=self._meta)
        if cursor.set_range(b"arena:"):
            for key, raw in cursor:
                if not bytes(key).startswith(b"arena:"):
                    break
                if _ID.unpack(raw)[0] == root:
                    return bytes(key[6:]).decode()
        return None

    # ------------------------------------------------------------ peers' views

    def receive(self, arena: str, peer: bytes, store_id: bytes, entries: Sequence[Entry]) -> list[Accepted]:
        """Take entries of *peer*'s history of *arena* (its sequence numbers, in order) in one
        transaction: each newer than the last one received is applied to the peer's view
        as it is, and given to `accept`; the last sequence number is kept with the peer's
        *store_id*. Raises StoreError if the peer's store id changed: `replace_view` then."""
        with self._writing() as txn:
            root = self._root(txn, b"arena:" + arena.encode())
            state = self._sync(txn, arena, peer)
            if state is not None and state.store_id != store_id:
                raise StoreError(f"peer {peer.hex()}'s store changed: its view of {arena} needs replacing")
            return self._take(txn, root, arena, peer, store_id, state.last_seq if state else 0, entries)

    def replace_view(
        self, arena: str, peer: bytes, store_id: bytes, last_seq: int, entries: Sequence[Entry]
    ) -> list[Accepted]:
        """Replace *peer*'s view of *arena* by its full index (`snapshot`: *entries*, parents
        first, as of its history's *last_seq*) in one transaction, each entry also given to
        `accept`; then resume after *last_seq*."""
        with self._writing() as txn:
            root = self._root(txn, b"arena:" + arena.encode())
            self._forget_below(txn, self._root(txn, _view_key(arena, peer)))
            out = self._take(txn, root, arena, peer, store_id, None, entries)
            txn.put(_sync_key(arena, peer), _SYNC.pack(store_id, last_seq), db=self._meta)
            return out

    def _take(
        self,
        txn: Any,
        root: int,
        arena: str,
        peer: bytes,
        store_id: bytes,
        last: int | None,
        entries: Sequence[Entry],
    ) -> list[Accepted]:
        """Apply *entries* to the peer's view and `accept` them; *last*: the last sequence number
        taken before (entries up to it are skipped, the new last is kept), None for a full index."""
        view = self._root(txn, _view_key(arena, peer))
        out = []
        for e in entries:
            if last is not None and e.seq <= last:
                continue  # sent again (a resume from an older point): already taken
            out.append(self._accept(txn, root, e))  # before the view: `_noted` looks at the others' views
            self._apply(txn, view, e)
            if last is not None:
                last = e.seq
        if last is not None:
            txn.put(_sync_key(arena, peer), _SYNC.pack(store_id, last), db=self._meta)
        return out

    def snapshot(self, root: int) -> tuple[int, list[Entry]]:
        """This peer's view of the arena as entries for a peer's `replace_view`, parents first,
        with the history's last sequence number they stand for: every path with a vector
        (what the history told; a file never hashed is not told), a tombstone as a delete.
        A file changed since its last hash is told as that hash (its vector's version)."""
        with self._reading() as txn:
            last = history.last_seq(txn, self._history, root)
            out: list[Entry] = []
            todo: list[tuple[int, list[bytes]]] = [(root, [])]
            while todo:
                node, path = todo.pop()
                for name, value in reversed(self._child_items(txn, node)):
                    record = to_record(value)
                    if record.vv:
                        op = "delete" if not record.live else _TOLD[record.kind]
                        version = None if not record.live else record.base()
                        kind = record.kind if record.live else 0
                        joined = b"/".join([*path, name])
                        out.append(
                            Entry(0, op, joined, None, None, version, record.vv, record.mtime_ns, b"", kind)
                        )
                    todo.append((value[0], [*path, name]))
            return last, out

    def view_root(self, arena: str, peer: bytes) -> int | None:
        """The root of *peer*'s view of *arena* (read it with `get` and `children`, ``unreal=True``)."""
        with self._reading() as txn:
            raw = txn.get(_view_key(arena, peer), db=self._meta)
            return int(_ID.unpack(raw)[0]) if raw is not None else None

    def sync_state(self, arena: str, peer: bytes) -> SyncState | None:
        with self._reading() as txn:
            return self._sync(txn, arena, peer)

    def _sync(self, txn: Any, arena: str, peer: bytes) -> SyncState | None:
        raw = txn.get(_sync_key(arena, peer), db=self._meta)
        return SyncState(*_SYNC.unpack(raw)) if raw is not None else None

    def _views(self, txn: Any, arena: str) -> list[tuple[bytes, int]]:
        """(peer, view root) of every peer's view of *arena*."""
        found = []
        cursor = txn.cursor(db=self._meta)
        suffix = b":" + arena.encode()
        if cursor.set_range(b"view:"):
            for raw_key, raw in cursor:
                key = bytes(raw_key)
                if not key.startswith(b"view:"):
                    break
                peer, _, name = key[5:].partition(b":")
                if b":" + name == suffix:
                    found.append((bytes.fromhex(peer.decode()), int(_ID.unpack(raw)[0])))
        return found

    def holders(
        self,
        arena: str,
        path: Sequence[bytes],
        vv: dict[bytes, int] | None = None,
        content: bytes | None = None,
    ) -> list[bytes]:
        """The peers whose view of *arena* holds *path* live, at vector *vv* and content hash
        *content* (each if given), in key order."""
        with self._reading() as txn:
            found = []
            for peer, view in self._views(txn, arena):
                value = self._chain(txn, view, path)[2] if path else None
                if value is None or value[1] == KIND_DELETED:
                    continue
                record = to_record(value)
                if vv is not None and versions.compare(vv, record.vv) is not Order.EQUAL:
                    continue
                if content is not None and record.hash != content:
                    continue
                found.append(peer)
            return found


def _shown(record: Record, unreal: bool, tombstones: bool) -> bool:
    if not record.live:
        return tombstones
    return record.real or unreal


_STONE = Record(KIND_DELETED, real=False)
_TOLD = {KIND_FILE: "create", KIND_DIR: "mkdir", KIND_LINK: "symlink"}


def _record(v: history.Version | None, kind: int) -> Record:
    """A peer's version of a path, as an Unreal record."""
    if v is None:
        return Record(kind, real=False)
    return Record(kind, v.size, v.mtime_ns, v.mode, v.hash, v.target, real=False)


def _guess(v: history.Version | None) -> int:
    """The kind of a version whose entry does not say (migrated from schema 4)."""
    if v is not None and v.target is not None:
        return KIND_LINK
    return KIND_FILE if v is not None and v.hash is not None else KIND_DIR


def _view_key(arena: str, peer: bytes) -> bytes:
    return b"view:" + peer.hex().encode() + b":" + arena.encode()


def _sync_key(arena: str, peer: bytes) -> bytes:
    return b"sync:" + peer.hex().encode() + b":" + arena.encode()
