"""The content index: this peer's view of each arena (its Real, what peers told of, tombstones),
and each peer's view as it announced it, as trees of nodes in LMDB.

Layout (schema version 6, see `realizefs.store.schema`):

``nodes``
    key: parent node id (8 bytes, big-endian) + entry name (bytes, at most 255)
    value (`realizefs.store.records`): msgpack array
    ``[id, kind, size, mtime_ns, mode, hash, target, pending, vv, real, seq, origin]``
    where *kind* is ``KIND_FILE``, ``KIND_DIR``, ``KIND_LINK`` or
    ``KIND_DELETED`` (a tombstone: the path was deleted at version *vv*; it
    keeps its node id, so a deleted directory keeps its children's tombstones
    below it); *hash* is the 32-byte BLAKE3 of the file's last settled content
    (nil before the first); *pending* says the file changed since (being
    written, or resting) and *size*/*mtime_ns* are already the new ones;
    *target* is a symlink's target; *vv* the path's version vector (peer id ->
    counter); *real* true for an entry in this peer's Real, false for one known
    only from peers (Unreal); in a peer's view, true where that peer said it
    holds the version in its Real. *seq* is the record's number in its root's
    ``sequence`` (0: none), *origin* the id of the peer that made this version
    (this peer's for its own changes, kept as it came for a peer's; empty when
    not known).
    Each arena's root (``arena:<name>``) holds this peer's view: what
    `children` and `get` list by default is its Real part, as before schema 5.
    Each peer's view of an arena is another root (``view:``, below): the same
    tree, written only by `receive` (and forgotten by `following`), without history,
    counts, chunk sources or sequence.
``parents``
    key: node id (8 bytes) -> value: parent id (8 bytes) + name. The way back
    from a node to its path.
``manifests``
    key: a content hash (32 bytes) -> value: msgpack array of
    ``[offset, length, chunk hash]`` triples. Shared by every file with that
    content; kept when the last such file goes, until the pruner's sweep
    (`realizefs.store.pruning`) finds no record holding it.
``chunks``
    See `realizefs.store.chunks`: chunk hash + source -> where the chunk's
    bytes are. Every write below that changes which file node holds which
    settled content changes these entries in its own transaction (a rename or
    an exchange keeps node ids, so it changes none), so `chunk_sources` never
    lists a file that no longer holds the chunk as indexed.
``sequence``
    key: a root's node id (8 bytes) + sequence number (8 bytes), both
    big-endian -> the node id whose record has that number. Every write that
    changes what peers are told of a record with a vector (its vector, kind,
    *real* flag or path) gives it the root's next number and drops its old
    one, so each told record is listed once, at its last change: a peer
    follows an arena by asking for the records numbered after the last one it
    took (`changes`), and a peer that is new, or whose store changed, by asking
    from 0 (a full index: the same records). Renaming a directory numbers
    everything below it again at its new paths and leaves a tombstone at each
    old path, so every path's record stands alone (as Syncthing's index does;
    the history keeps the rename as one entry for people).
``meta`` keys ``arena:<name>`` -> the arena root's node id; ``next_id`` -> the
    next node id to hand out (8 bytes); ``counts:<root id>`` -> what the arena's
    Real holds, changed by every write in its own transaction (`realizefs.store.records`).
    ``marked:<root id>`` -> empty: this store marked the arena's root.
    ``view:<peer key hex>:<arena>`` -> the root node id of that peer's view of
    the arena; ``sync:<peer key hex>:<arena>`` -> the peer's store id (16
    bytes) + the last sequence number of its records taken (8 bytes,
    big-endian), written in the transaction that applied them;
    ``seq:<root id>`` -> the last sequence number the root handed out;
    ``ack:<peer key hex>:<arena>`` -> the highest number of this peer's
    sequence of the arena that peer acknowledged taking (8 bytes; `acknowledge`);
    ``horizon:<root id>`` -> msgpack map, the merge of the vectors of every
    tombstone pruned from the tree: a change made where no record is counts
    from it (`put`, `rename`), so it dominates the tombstone a peer may still hold.
``history``
    See `realizefs.store.history`: every change recorded with an *op* is
    appended there in the same transaction, with the path's version vector
    incremented for this peer (origin: this peer). What peers accepted from
    others is passed on by the sequence (it keeps its origin), not the history.

Tombstones: a logged delete leaves, at the path and at each path below a
deleted directory, a record of kind ``KIND_DELETED`` with the vector of the
delete (the old one counted once more by this peer); a logged rename leaves
one at the old path with the rename's vector, and one at each old path below
a renamed directory (each with its vector counted once more, as is each
path's record at its new place). A path written again over its
tombstone continues from the tombstone's vector (and keeps its node id, so a
directory made again keeps its old children's tombstones, unlisted), so the
new version dominates the delete. A record leaving without news (an unlogged
delete, a file never hashed) becomes a tombstone with its vector unchanged if
that vector is not empty (it continued from a version peers know), else it is
forgotten. A tombstone is kept until every configured peer acknowledged it
(`realizefs.store.pruning`).

Keys are per directory entry, not per path, so path length is unbounded (LMDB
keys are at most 511 bytes; a name at most 255).

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

import msgpack

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
    ORIGIN,
    SEQ,
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
    "Told",
]

_ID = struct.Struct(">Q")
_SEQ = struct.Struct(">QQ")
HORIZON = b"horizon:"  # + root id: see `Index._horizon`
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
class Told:
    """A record as peers are told of it: its path in the arena and its sequence number there."""

    seq: int
    path: tuple[bytes, ...]
    record: Record


@dataclass(frozen=True, slots=True)
class Accepted:
    """The outcome of one record given to `Index.accept`; *held*: what this peer's view held at
    the path (for a conflict, the concurrent version)."""

    told: Told
    outcome: Outcome
    held: Record | None = None


@dataclass(frozen=True, slots=True)
class Offered:
    """A path of this peer's view for consensus (`Index.survey`): its node and record, and
    the other versions peers' views hold there (peer id, record)."""

    path: tuple[bytes, ...]
    node: int
    record: Record
    offers: tuple[tuple[bytes, Record], ...]
    holders: tuple[bytes, ...] = ()  # the peers whose Real holds this very version (a Real file)


@dataclass(frozen=True, slots=True)
class SyncState:
    """What this peer took of a peer's sequence for an arena."""

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
        self._sequence = store.dbs[b"sequence"]
        self._watchers: list[Callable[[], None]] = []
        self._touched: set[bytes] | None = None  # contents referenced meanwhile (`track_contents`)

    def watch(self, callback: Callable[[], None]) -> None:
        """Call *callback* after each write transaction commits, in the thread that wrote (it
        must be quick and thread-safe: e.g. a trio token's ``run_sync_soon``)."""
        self._watchers.append(callback)

    def _committed(self) -> None:
        for callback in self._watchers:
            callback()

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
        self._committed()

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
        self._committed()

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

    def _put(
        self,
        txn: Any,
        root: int,
        key: bytes,
        node: int,
        record: Record,
        vv: dict[bytes, int],
        old: list[Any] | None,
        tell: bool | None = None,
    ) -> None:
        """Write *node*'s *record* at *key* over *old* (the value there before, or the moved
        node's own): numbered anew in the root's sequence if peers are to be told (*tell*;
        by default when it has a vector and its vector, kind, Real flag or node changed)."""
        seq = 0
        if old is not None and old[0] == node:
            seq = old[SEQ]
        elif old is not None:  # another node in its place
            self._unseq(txn, root, old)
            if txn.get(_ID.pack(old[0]), db=self._parents) == key:
                txn.delete(_ID.pack(old[0]), db=self._parents)
        if tell is None:
            tell = bool(vv) and (
                old is None
                or old[0] != node
                or old[8] != vv
                or old[1] != record.kind
                or bool(old[9]) != record.real
                or (old[5], bool(old[7])) != (record.hash, record.changed)  # settled, or changing
            )
        if tell:
            if seq:
                txn.delete(_SEQ.pack(root, seq), db=self._sequence)
            raw = txn.get(b"seq:" + _ID.pack(root), db=self._meta)
            seq = (_ID.unpack(raw)[0] if raw is not None else 0) + 1
            txn.put(b"seq:" + _ID.pack(root), _ID.pack(seq), db=self._meta)
            txn.put(_SEQ.pack(root, seq), _ID.pack(node), db=self._sequence)
        txn.put(key, pack(node, record, vv, seq), db=self._nodes)
        touched = self._touched  # read once: another thread may end the tracking meanwhile
        if touched is not None and record.hash is not None:
            touched.add(record.hash)

    def _unseq(self, txn: Any, root: int, value: list[Any]) -> None:
        if value[SEQ]:
            txn.delete(_SEQ.pack(root, value[SEQ]), db=self._sequence)

    def _drop(self, txn: Any, root: int, key: bytes, value: list[Any]) -> None:
        """Forget the record *value* at *key*: no record, no way back, no number."""
        txn.delete(key, db=self._nodes)
        txn.delete(_ID.pack(value[0]), db=self._parents)
        self._unseq(txn, root, value)

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

    def entry(self, root: int, path: Sequence[bytes]) -> tuple[int, Record] | None:
        """The node id and record of the live entry at *path* (Real or Unreal), or None."""
        if not path:
            return None
        with self._reading() as txn:
            ancestors, _, value = self._chain(txn, root, path)
            if value is None or value[1] == KIND_DELETED or any(a[1] != KIND_DIR for a in ancestors):
                return None
            return value[0], to_record(value)

    def entries(self, root: int, path: Sequence[bytes]) -> list[tuple[bytes, int, Record]]:
        """(name, node id, record) of each live entry of the directory *path*, Real or Unreal."""
        with self._reading() as txn:
            node = self._walk(txn, root, path)
            if node is None:
                return []
            return [
                (name, value[0], to_record(value))
                for name, value in self._child_items(txn, node)
                if value[1] != KIND_DELETED
            ]

    def at_node(self, root: int, node: int) -> tuple[tuple[bytes, ...], Record] | None:
        """The path and record of the live entry *node* of the tree *root*, wherever it is now;
        None if it is gone, a tombstone, below one, or in another tree."""
        with self._reading() as txn:
            where = txn.get(_ID.pack(node), db=self._parents)
            if where is None:
                return None
            raw = txn.get(where, db=self._nodes)
            value = unpack(raw) if raw is not None else None
            if value is None or value[0] != node or value[1] == KIND_DELETED:
                return None
            names = [bytes(where[8:])]
            parent = _ID.unpack(where[:8])[0]
            while parent != root:  # up to the root, through live directories only
                where = txn.get(_ID.pack(parent), db=self._parents)
                if where is None:
                    return None  # another tree's root
                up = txn.get(where, db=self._nodes)
                if up is None or unpack(up)[1] != KIND_DIR:
                    return None  # below a tombstone (or a file)
                names.append(bytes(where[8:]))
                parent = _ID.unpack(where[:8])[0]
            return tuple(reversed(names)), to_record(value)

    def _children(self, txn: Any, node: int) -> Iterator[tuple[bytes, Record]]:
        for name, value in self._child_items(txn, node):
            yield name, to_record(value)

    def _child_items(self, txn: Any, node: int) -> list[tuple[bytes, list[Any]]]:
        return records.children(txn, self._nodes, node)

    def _write_manifest(
        self, txn: Any, content_hash: bytes, chunks: Sequence[tuple[int, int, bytes]]
    ) -> None:
        chunk_index.write_manifest(txn, self._manifests, content_hash, chunks)
        touched = self._touched
        if touched is not None:
            touched.add(content_hash)

    @contextmanager
    def track_contents(self) -> Iterator[set[bytes]]:
        """Inside the block, the set of every content hash a record was written with or a
        manifest written for (by any thread) since it began: what a sweep of unreferenced
        manifests must keep besides what it read (`realizefs.store.pruning`, whose snapshot
        waits for the write transaction in progress when the block began)."""
        touched: set[bytes] = set()
        self._touched = touched
        try:
            yield touched
        finally:
            self._touched = None

    def manifest(self, content_hash: bytes) -> list[tuple[int, int, bytes]] | None:
        with self._reading() as txn:
            return chunk_index.read_manifest(txn, self._manifests, content_hash)

    def manifest_flat(self, content_hash: bytes) -> list[Any] | None:
        """The manifest of *content_hash* as stored: offset, length, chunk hash, flattened."""
        with self._reading() as txn:
            return chunk_index.read_flat(txn, self._manifests, content_hash)

    def keep_manifest(self, content_hash: bytes, chunks: Sequence[tuple[int, int, bytes]]) -> None:
        """Keep the manifest of a content known from a peer (to read it, and to reuse its chunks).

        No file becomes a chunk source by it: sources are the Real files recorded with it."""
        with self._writing() as txn:
            self._write_manifest(txn, content_hash, chunks)

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
                    self._forget_below(txn, root, old[0])
            vv = dict(old[8]) if old is not None else {}
            if op is not None:
                if old is None:  # over a pruned tombstone, maybe: dominate every one pruned
                    vv = self._horizon(txn, root)
                vv = versions.increment(vv, self.me)
                before = to_record(old).base() if old is not None and old[1] != KIND_DELETED else None
                self._log(txn, root, op, path, None, before, record.version(), vv, when, record.kind)
                record = replace(record, origin=self.me)
            elif old is not None:
                record = replace(record, origin=old[ORIGIN])
            self._put(txn, root, key, node, record, vv, old)
            records.add_counts(txn, self._meta, root, delta)
            if record.hash is not None and chunks is not None:
                self._write_manifest(txn, record.hash, chunks)
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
            self._last_told(txn, root),
        )
        history.append(txn, self._history, root, entry)

    def history(self, root: int, limit: int) -> list[Entry]:
        """The arena's last *limit* history entries, oldest first."""
        with self._reading() as txn:
            return history.recent(txn, self._history, root, limit)

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
            self._put(txn, root, key, value[0], replace(record, real=False), vv, value)
            return tally(record)
        origin = record.origin
        if logged and not (record.kind == KIND_FILE and record.hash is None):
            vv = versions.increment(vv, self.me)
            op = "rmdir" if record.kind == KIND_DIR else "delete"
            self._log(txn, root, op, path, None, record.version(), None, vv, when, record.kind)
            origin = self.me
        if vv or left:
            self._put(txn, root, key, value[0], Record(KIND_DELETED, real=False, origin=origin), vv, value)
        else:  # never known beyond this peer and nothing below: nothing to remember
            self._drop(txn, root, key, value)
        return tally(record)

    def _live_below(self, txn: Any, node: int) -> bool:
        return any(value[1] != KIND_DELETED for _, value in self._child_items(txn, node))

    def _forget_below(self, txn: Any, root: int, node: int, view: bool = False) -> None:
        """Remove every record below *node*, tombstones too, from the tree (no count, no log:
        the caller counted the live ones; a peer's *view* holds no chunk sources)."""
        for name, value in self._child_items(txn, node):
            self._forget_below(txn, root, value[0], view)
            if not view:
                self._hold(txn, chunk_index.held_value(value), None)
            self._drop(txn, root, _ID.pack(node) + name, value)

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
            moved_below = self._vectors_below(txn, value[0])
            replaced_below: dict[tuple[bytes, ...], dict[bytes, int]] = {}
            raw_replaced = txn.get(new_key, db=self._nodes)
            replaced = unpack(raw_replaced) if raw_replaced is not None else None
            replaced_record = to_record(replaced) if replaced is not None else None
            if replaced_record is not None and replaced_record.live:
                base = replaced_record.hash  # its last hashed content, even if changed since
                if not (replaced_record.kind == KIND_FILE and replaced_record.hash is None):
                    before = replaced_record.version()  # else never hashed: not in the history
            record = to_record(value)
            going = False  # what it replaced leaves the history with entries of its own
            if record.kind == KIND_FILE and record.hash is None and not base:
                # a file not in the history yet (an editor's temporary file): no entry; but a
                # directory or link it replaced in the index (one the look at *new* has not yet
                # seen go: a rename reported after the look saw it) leaves with its own entries
                going, logged = logged and before is not None, False
            if replaced is not None and replaced_record is not None:
                # an atomic save: the new version follows the replaced one
                replaced_below = self._vectors_below(txn, replaced[0])
                delta -= self._clear(txn, root, replaced[0], list(new), going, True)[0] + tally_value(
                    replaced
                )
                replaced_vv = dict(replaced[8])
                if going:
                    replaced_below = self._vectors_below(txn, replaced[0])  # with their deletes'
                    replaced_vv = versions.increment(replaced_vv, self.me)
                    op = "rmdir" if replaced_record.kind == KIND_DIR else "delete"
                    self._log(txn, root, op, new, None, before, None, replaced_vv, None, replaced_record.kind)
                self._forget_below(txn, root, replaced[0])
                self._drop(txn, root, new_key, replaced)
                self._hold(txn, chunk_index.held_value(replaced), None)
                vv = versions.merge(vv, replaced_vv)
            if current is not None and record.pending:
                record = replace(record, size=current[0], mtime_ns=current[1])
            horizon = self._horizon(txn, root) if logged else {}
            if replaced is None:  # over a pruned tombstone, maybe: dominate every one pruned
                vv = versions.merge(vv, horizon)
            if logged:
                vv = versions.increment(vv, self.me)
            if base and record.kind == KIND_FILE and not record.hash:
                # the new content is not hashed yet: its next entry will be an edit of
                # (or an overwrite of) the version it replaced, not a create
                record = replace(record, hash=base, changed=True)
            if logged:
                self._log(txn, root, "rename", new, old, before, record.version(), vv, None, record.kind)
                record = replace(record, origin=self.me)
            # the moved node keeps its id and its chunks' sources: only a record with no
            # settled content (pending, or never hashed) is changed above, and stays so
            txn.delete(old_key, db=self._nodes)
            txn.put(_ID.pack(value[0]), new_key, db=self._parents)
            self._put(txn, root, new_key, value[0], record, vv, value, tell=bool(vv))
            self._renumber_below(txn, root, value[0], replaced_below, logged, horizon)
            stone = vv if logged else moved_vv
            if stone or moved_below:
                # told after what was below it, so a peer never sees a directory deleted while
                # it still holds entries
                tomb = self._new_id(txn)
                txn.put(_ID.pack(tomb), old_key, db=self._parents)
                txn.put(old_key, pack(tomb, _STONE, {}), db=self._nodes)
                self._renumber_below(txn, root, tomb, moved_below, logged)
                if stone:
                    gone = Record(KIND_DELETED, real=False, origin=self.me if logged else record.origin)
                    self._put(txn, root, old_key, tomb, gone, stone, unpack(txn.get(old_key, db=self._nodes)))
            records.add_counts(txn, self._meta, root, delta + tally(record))
            return True

    def _vectors_below(self, txn: Any, node: int) -> dict[tuple[bytes, ...], dict[bytes, int]]:
        """The vector of each record with one below *node* (tombstones too), by its path from it."""
        found: dict[tuple[bytes, ...], dict[bytes, int]] = {}
        todo: list[tuple[int, tuple[bytes, ...]]] = [(node, ())]
        while todo:
            parent, rel = todo.pop()
            for name, value in self._child_items(txn, parent):
                if value[8]:
                    found[(*rel, name)] = value[8]
                todo.append((value[0], (*rel, name)))
        return found

    def _renumber_below(
        self,
        txn: Any,
        root: int,
        node: int,
        before: dict[tuple[bytes, ...], dict[bytes, int]],
        logged: bool,
        horizon: dict[bytes, int] | None = None,
    ) -> None:
        """What is below *node* is at new paths, where *before* held records with those vectors
        (by path from *node*; where it held none, the *horizon* of pruned tombstones stands in):
        each live record with a vector is told at its new path, its
        vector merged with the one before there and (*logged*) counted once more by this peer,
        parents first; then each tombstone, and each path of *before* with no record now (made
        a tombstone), the same, deepest first, so a directory's comes after its entries'."""
        seen: dict[tuple[bytes, ...], tuple[bytes, list[Any]]] = {}
        todo: list[tuple[int, tuple[bytes, ...]]] = [(node, ())]
        while todo:
            parent, rel = todo.pop(0)
            for name, value in self._child_items(txn, parent):
                path = (*rel, name)
                key = _ID.pack(parent) + name
                seen[path] = (key, value)
                todo.append((value[0], path))
                if value[1] == KIND_DELETED:
                    continue
                vv = versions.merge(value[8], before.get(path, horizon or {}))
                if vv and logged:
                    vv = versions.increment(vv, self.me)
                if vv:
                    record = to_record(value)
                    record = replace(record, origin=self.me) if logged else record
                    self._put(txn, root, key, value[0], record, vv, value, tell=True)
        dead = {path for path, (_, value) in seen.items() if value[1] == KIND_DELETED and value[8]}
        for path in sorted(dead | before.keys(), key=lambda path: (-len(path), path)):
            key, value = seen.get(path) or self._entomb(txn, node, path)
            if value[1] != KIND_DELETED:
                continue
            vv = versions.merge(value[8], before.get(path, {}))
            if logged:
                vv = versions.increment(vv, self.me)
            self._put(txn, root, key, value[0], replace(_STONE, origin=self.me), vv, value, tell=True)

    def _entomb(self, txn: Any, node: int, path: tuple[bytes, ...]) -> tuple[bytes, list[Any]]:
        """The key and value at *path* below *node*, made (with its missing parents) as a
        tombstone without vector, not told: its caller gives it one."""
        key, value = b"", [node]
        for name in path:
            key = _ID.pack(value[0]) + name
            raw = txn.get(key, db=self._nodes)
            if raw is None:
                child = self._new_id(txn)
                txn.put(_ID.pack(child), key, db=self._parents)
                txn.put(key, pack(child, _STONE, {}), db=self._nodes)
                raw = txn.get(key, db=self._nodes)
            value = unpack(raw)
        return key, value

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
            first_below = self._vectors_below(txn, first[0])
            second_below = self._vectors_below(txn, second[0])
            if logged and any(known):
                moved, replaced = replace(moved, origin=self.me), replace(replaced, origin=self.me)
            self._put(txn, root, other_key, first[0], moved, vv_one, first, tell=bool(vv_one))
            self._put(txn, root, one_key, second[0], replaced, vv_other, second, tell=bool(vv_other))
            txn.put(_ID.pack(first[0]), other_key, db=self._parents)
            txn.put(_ID.pack(second[0]), one_key, db=self._parents)
            self._renumber_below(txn, root, first[0], second_below, logged)
            self._renumber_below(txn, root, second[0], first_below, logged)
            return True  # the same records, swapped: the counts stay

    # ------------------------------------------------------------ peers' changes

    def changes(self, arena: str, after: int, limit: int) -> list[Told]:
        """At most *limit* records of this peer's view of *arena* numbered after *after* in its
        sequence, in order, each with its path as it is now: what a peer following it takes
        next (from 0: a full index). Where a path is Real here and a peer's view holds a
        newer version (noted by `accept`, not applied yet), that version is told instead,
        with its vector and origin, and not as Real here: so it is relayed at once. A file
        whose content is not settled (being written, or never hashed) is left out: it is
        numbered again once hashed."""
        with self._reading() as txn:
            root = self._root_of(txn, b"arena:" + arena.encode())
            if root is None:
                return []
            views = [view for _, view in self._views(txn, arena)]
            out: list[Told] = []
            cursor = txn.cursor(db=self._sequence)
            if not cursor.set_range(_SEQ.pack(root, after + 1)):
                return out
            for key, raw in cursor:
                found, seq = _SEQ.unpack(bytes(key))
                if found != root or len(out) >= limit:
                    break
                node = _ID.unpack(raw)[0]
                where = txn.get(_ID.pack(node), db=self._parents)
                value = unpack(txn.get(where, db=self._nodes)) if where is not None else None
                if value is None or value[0] != node or value[SEQ] != seq:
                    raise StoreError(f"tree {root}'s sequence lists {seq} for node {node}: not its record")
                path = self._locate(txn, node)[1]
                record = to_record(value)
                if record.here:
                    record = self._newest(txn, views, path, record)
                if record.pending:
                    continue  # being written, or not hashed yet: told once its content is settled
                out.append(Told(seq, path, record))
            return out

    def _newest(self, txn: Any, views: list[int], path: Sequence[bytes], record: Record) -> Record:
        """*record*, or the newest version peers' views hold at *path* that dominates it (of
        concurrent ones, the first in the views' key order), as an Unreal record."""
        best = record
        for view in views:
            value = self._chain(txn, view, path)[2]
            if value is not None and versions.compare(value[8], best.vv) is Order.DOMINATES:
                best = replace(to_record(value), real=False)
        return best

    def _root_of(self, txn: Any, key: bytes) -> int | None:
        raw = txn.get(key, db=self._meta)
        return int(_ID.unpack(raw)[0]) if raw is not None else None

    def last_told(self, root: int) -> int:
        """The last number the tree *root*'s sequence handed out (0: none yet)."""
        with self._reading() as txn:
            return self._last_told(txn, root)

    def _horizon(self, txn: Any, root: int) -> dict[bytes, int]:
        """The merge of the vectors of every tombstone pruned from the tree *root*
        (`realizefs.store.pruning`): a change made where no record is counts from it, so it
        dominates a tombstone a peer may still hold there."""
        raw = txn.get(HORIZON + _ID.pack(root), db=self._meta)
        return dict(msgpack.unpackb(raw, strict_map_key=False)) if raw is not None else {}

    def _last_told(self, txn: Any, root: int) -> int:
        raw = txn.get(b"seq:" + _ID.pack(root), db=self._meta)
        return int(_ID.unpack(raw)[0]) if raw is not None else 0

    # ------------------------------------------------------------ acknowledgements

    def acknowledge(self, arena: str, peer: bytes, seq: int) -> int:
        """*peer* took this peer's records of *arena* up to *seq* (what it follows from, or
        said it took): kept if more than known before (never less). What is kept now."""
        with self._writing() as txn:
            raw = txn.get(_ack_key(arena, peer), db=self._meta)
            known = int(_ID.unpack(raw)[0]) if raw is not None else 0
            if seq > known:
                txn.put(_ack_key(arena, peer), _ID.pack(seq), db=self._meta)
            return max(seq, known)

    def acknowledged(self, arena: str, peer: bytes) -> int:
        """How far *peer* acknowledged this peer's records of *arena* (0: not at all)."""
        with self._reading() as txn:
            raw = txn.get(_ack_key(arena, peer), db=self._meta)
            return int(_ID.unpack(raw)[0]) if raw is not None else 0

    def told_after(self, arena: str, after: int) -> tuple[int, int]:
        """How many records of this peer's view of *arena* are numbered after *after* (files
        not hashed yet included: they are told once hashed), and the last number handed out."""
        with self._reading() as txn:
            root = self._root_of(txn, b"arena:" + arena.encode())
            if root is None:
                return 0, 0
            raw = txn.get(b"seq:" + _ID.pack(root), db=self._meta)
            last = int(_ID.unpack(raw)[0]) if raw is not None else 0
            count = 0
            cursor = txn.cursor(db=self._sequence)
            if cursor.set_range(_SEQ.pack(root, after + 1)):
                start = _ID.pack(root)
                for key in cursor.iternext(values=False):
                    if bytes(key[:8]) != start:
                        break
                    count += 1
            return count, last

    def accept(self, root: int, told: Told) -> Accepted:
        """Take a peer's record of a path into this peer's view of the arena *root*, in one
        transaction; raises StoreError if the record is malformed (nothing taken).

        Its vector decides, against what the view holds at the path (tombstones
        included): newer there (or nothing there) and the path becomes that version as
        an Unreal entry or a tombstone (`APPLIED`), numbered in the sequence with its
        vector and origin, so peers following this one take it too (relayed); equal or
        older, nothing (`STALE`: nothing loops); concurrent, nothing either (`CONFLICT`,
        for consensus: never overwritten). A directory that would be deleted or replaced
        while it holds live entries the change did not know of is a conflict too. A path
        that is Real here, or below a Real file, is never changed by `accept`: consensus
        applies the newer version later (`NOTED`; it stays in the sender's view, and is
        passed on once this peer's Real has it). Missing parent directories are made as
        Unreal directories with an empty vector (tombstones, for a tombstone)."""
        with self._writing() as txn:
            return self._accept(txn, root, told)

    def _accept(self, txn: Any, root: int, t: Told) -> Accepted:
        path, r = list(t.path), t.record
        if not path or not all(valid_name(n) for n in path):
            raise StoreError(f"a peer's record names an invalid path: {b'/'.join(path)!r}")
        if r.kind not in (KIND_FILE, KIND_DIR, KIND_LINK, KIND_DELETED) or not r.vv:
            raise StoreError(f"a peer's record of {b'/'.join(path)!r} has kind {r.kind} and vector {r.vv}")
        ancestors, key, value = self._chain(txn, root, path)
        held = to_record(value) if value is not None else None
        order = versions.compare(r.vv, value[8] if value is not None else {})
        if order is Order.CONCURRENT:
            return Accepted(t, Outcome.CONFLICT, held)
        if order is not Order.DOMINATES:
            return Accepted(t, Outcome.STALE, held)
        if any(a[1] != KIND_DIR and to_record(a).here for a in ancestors):
            return Accepted(t, Outcome.NOTED, held)
        if held is not None and value is not None and key is not None and held.here:
            if not self._known(txn, root, path, r.vv):
                # told again (`changes` tells the newer version): relayed before consensus
                # applies it; only the first time, or two Real peers would tell each other forever
                self._put(txn, root, key, value[0], held, held.vv, value, tell=True)
            return Accepted(t, Outcome.NOTED, held)
        if (
            value is not None
            and value[1] == KIND_DIR
            and r.kind != KIND_DIR
            and self._live_below(txn, value[0])
        ):
            return Accepted(t, Outcome.CONFLICT, held)
        self._place(txn, root, path, replace(r, real=False, changed=False), r.vv)
        return Accepted(t, Outcome.APPLIED, held)

    def _known(self, txn: Any, root: int, path: Sequence[bytes], vv: dict[bytes, int]) -> bool:
        """Whether a peer's view of the arena *root* already holds version *vv* or a newer one."""
        arena = self._arena_of(txn, root)
        for _, view in self._views(txn, arena) if arena is not None else []:
            value = self._chain(txn, view, path)[2]
            if value is not None and versions.compare(vv, value[8]) in (Order.EQUAL, Order.DOMINATED):
                return True
        return False

    def _arena_of(self, txn: Any, root: int) -> str | None:
        cursor = txn.cursor(db=self._meta)
        if cursor.set_range(b"arena:"):
            for key, raw in cursor:
                if not bytes(key).startswith(b"arena:"):
                    break
                if _ID.unpack(raw)[0] == root:
                    return bytes(key[6:]).decode()
        return None

    def following(self, arena: str, peer: bytes, store_id: bytes, full: bool = False) -> int:
        """Where to follow *peer*'s sequence of *arena* from: the last number taken, or 0 (its
        view forgotten first) when it is new here or its store is not the one followed. With
        *full* (the peer asks for a full index: this peer fell too far behind), 0 with the view
        kept: the full index refreshes it, and a version it held that this peer's Real has not
        taken yet (a delete consensus is to apply) is not forgotten."""
        with self._writing() as txn:
            state = self._sync(txn, arena, peer)
            if state is not None and state.store_id == store_id:
                if not full:
                    return state.last_seq
            else:
                view = self._root(txn, _view_key(arena, peer))
                self._forget_below(txn, view, view, view=True)
            txn.put(_sync_key(arena, peer), _SYNC.pack(store_id, 0), db=self._meta)
            return 0

    def receive(self, arena: str, peer: bytes, store_id: bytes, told: Sequence[Told]) -> list[Accepted]:
        """Take records of *peer*'s sequence of *arena* (in its order) in one transaction: each
        numbered after the last one taken is written to the peer's view as it is, and given
        to `accept`; the last number is kept. Raises StoreError (nothing taken) if the store
        followed is not *store_id* (call `following` first) or a record is malformed."""
        with self._writing() as txn:
            root = self._root(txn, b"arena:" + arena.encode())
            state = self._sync(txn, arena, peer)
            if state is None or state.store_id != store_id:
                raise StoreError(f"peer {peer.hex()}'s store {store_id.hex()} is not the one followed")
            view = self._root(txn, _view_key(arena, peer))
            last = state.last_seq
            out = []
            for t in told:
                if t.seq <= last:
                    continue  # sent again (a resume from an older point): already taken
                out.append(self._accept(txn, root, t))
                self._place(txn, view, list(t.path), t.record, t.record.vv, view=True)
                last = t.seq
            txn.put(_sync_key(arena, peer), _SYNC.pack(store_id, last), db=self._meta)
            return out

    def _parent(self, txn: Any, root: int, path: Sequence[bytes], live: bool, view: bool) -> int:
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
                made = Record(KIND_DIR if live else KIND_DELETED, real=False)
                txn.put(key, pack(child, made, {}), db=self._nodes)
                node = child
                continue
            value = unpack(raw)
            if live and value[1] != KIND_DIR:
                if not view:
                    self._hold(txn, chunk_index.held_value(value), None)
                    records.add_counts(txn, self._meta, root, -tally_value(value))
                dir_record = Record(KIND_DIR, real=False, origin=value[ORIGIN])
                self._put(txn, root, key, value[0], dir_record, value[8], value, tell=False if view else None)
            node = value[0]
        return node

    def _place(
        self,
        txn: Any,
        root: int,
        path: Sequence[bytes],
        record: Record,
        vv: dict[bytes, int],
        view: bool = False,
    ) -> None:
        """*path* holds *record* with vector *vv* in the tree *root* (a peer's *view*: not counted,
        no chunk sources, not numbered); it keeps its node id, and a directory becoming
        anything else turns what is live below into tombstones."""
        key = _ID.pack(self._parent(txn, root, path, record.live, view)) + path[-1]
        raw = txn.get(key, db=self._nodes)
        old = unpack(raw) if raw is not None else None
        if old is None:
            node = self._new_id(txn)
            txn.put(_ID.pack(node), key, db=self._parents)
        else:
            node = old[0]
            if old[1] == KIND_DIR and record.kind != KIND_DIR:
                self._bury(txn, root, node, view)
        if not view:
            self._hold(txn, chunk_index.held_value(old), chunk_index.held(node, record))
            records.add_counts(txn, self._meta, root, tally(record) - tally_value(old))
        self._put(txn, root, key, node, record, dict(vv), old, tell=False if view else None)

    def _bury(self, txn: Any, root: int, node: int, view: bool) -> None:
        """Everything live below *node* becomes a tombstone with its own vector."""
        for name, value in self._child_items(txn, node):
            if value[1] != KIND_DELETED:
                self._bury(txn, root, value[0], view)
                if not view:
                    self._hold(txn, chunk_index.held_value(value), None)
                    records.add_counts(txn, self._meta, root, -tally_value(value))
                stone = replace(_STONE, origin=value[ORIGIN])
                key = _ID.pack(node) + name
                self._put(txn, root, key, value[0], stone, value[8], value, tell=False if view else None)

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
        real: bool = False,
    ) -> list[bytes]:
        """The peers whose view of *arena* holds *path* live, at vector *vv* and content hash
        *content* (each if given; *real*: in the peer's Real), in key order."""
        with self._reading() as txn:
            found = []
            for peer, view in self._views(txn, arena):
                value = self._chain(txn, view, path)[2] if path else None
                if value is None or value[1] == KIND_DELETED:
                    continue
                record = to_record(value)
                if vv is not None and versions.compare(vv, record.vv) is not Order.EQUAL:
                    continue
                if (content is not None and record.hash != content) or (real and not record.real):
                    continue
                found.append(peer)
            return found

    # ------------------------------------------------------------ consensus

    def survey(self, arena: str) -> list[Offered]:
        """Every path of this peer's view of *arena* that consensus may act on, parents before
        children: each Real entry or tombstone a peer's view holds another version of (newer,
        older or concurrent: `realizefs.consensus.agree` weighs them), each live Unreal
        entry (to realize where the mode says so), with those versions, and each Real file
        another peer holds in its Real too (to unrealize where the mode says so). One read transaction."""
        with self._reading() as txn:
            root = self._root_of(txn, b"arena:" + arena.encode())
            if root is None:
                return []
            views = self._views(txn, arena)
            out: list[Offered] = []
            stack: list[tuple[int, tuple[bytes, ...], list[tuple[bytes, int | None]]]] = [
                (root, (), [(peer, view) for peer, view in views])
            ]
            while stack:
                node, path, below = stack.pop()
                for name, value in self._child_items(txn, node):
                    record = to_record(value)
                    here = (*path, name)
                    found = [(peer, self._child(txn, at, name)) for peer, at in below]
                    offers = tuple(
                        (peer, to_record(v))
                        for peer, v in found
                        if v is not None and versions.normal(v[8]) != versions.normal(value[8])
                    )
                    holders = tuple(
                        peer
                        for peer, v in found
                        if record.here
                        and record.kind == KIND_FILE
                        and v is not None
                        and v[9]
                        and v[5] == value[5]
                        and versions.normal(v[8]) == versions.normal(value[8])
                    )
                    if (
                        ((record.here or not record.live) and offers)
                        or (record.live and not record.real)
                        or holders
                    ):
                        out.append(Offered(here, value[0], record, offers, holders))
                    if value[1] == KIND_DIR:
                        stack.append((value[0], here, [(peer, v[0] if v else None) for peer, v in found]))
            out.sort(key=lambda o: o.path)
            return out

    def _child(self, txn: Any, node: int | None, name: bytes) -> list[Any] | None:
        if node is None:
            return None
        raw = txn.get(_ID.pack(node) + name, db=self._nodes)
        return unpack(raw) if raw is not None else None

    def adopt(
        self,
        root: int,
        path: Sequence[bytes],
        over: dict[bytes, int],
        version: Record,
        chunks: Sequence[tuple[int, int, bytes]] | None = None,
        real: bool = True,
    ) -> bool:
        """The Real now holds *version* (a peer's, applied by consensus: a content placed, a
        directory made, a file deleted) at *path*, where the index held vector *over*: record
        it with its vector and origin, as Real (a tombstone: gone; *chunks*: its content's
        manifest, if the index may not have it yet; not *real*: taken on as an Unreal
        entry, nothing on the disk), numbered so peers learn it; no history
        (not a change of this peer's). False, and nothing written, if the
        index no longer holds *over* there (the indexer saw a change meanwhile: the disk
        has the last word). Directories missing on the way are made (Unreal, empty vectors:
        the indexer records them as it finds them)."""
        with self._writing() as txn:
            value = self._chain(txn, root, path)[2]
            held = versions.normal(value[8]) if value is not None else {}
            if held != versions.normal(over):
                return False
            live = version.kind != KIND_DELETED
            if version.hash is not None and chunks is not None:  # its chunks' sources: this file now
                self._write_manifest(txn, version.hash, chunks)
            self._place(
                txn, root, path, replace(version, real=live and real, changed=False), dict(version.vv)
            )
            newer = None if live else self._newer_offered(txn, root, path, version.vv)
            if newer is not None:  # noted while the path was Real: the path is that version now
                self._place(txn, root, path, replace(newer, real=False, changed=False), dict(newer.vv))
            if version.kind == KIND_DIR and value is not None and value[1] in (KIND_FILE, KIND_LINK):
                self._take_noted_below(txn, root, path)  # a directory where a file was Real here
            return True

    def _take_noted_below(self, txn: Any, root: int, path: Sequence[bytes]) -> None:
        """*path* is a directory here now: what peers' views hold below it and this peer's view
        lacks or holds older (`accept` noted it, and left it in the views, while a file was
        Real at *path* here) taken on as Unreal entries, numbered; concurrent versions are
        left to consensus, which sees them offered there."""
        arena = self._arena_of(txn, root)
        for _, view in self._views(txn, arena) if arena is not None else []:
            top = self._chain(txn, view, path)[2]
            stack = [(top[0], list(path))] if top is not None and top[1] == KIND_DIR else []
            while stack:
                node, at = stack.pop()
                for name, value in self._child_items(txn, node):
                    here = [*at, name]
                    own = self._chain(txn, root, here)[2]
                    if (own is None and value[1] != KIND_DELETED) or (
                        own is not None and versions.compare(value[8], own[8]) is Order.DOMINATES
                    ):
                        record = replace(to_record(value), real=False, changed=False)
                        self._place(txn, root, here, record, dict(value[8]))
                        own = value
                    if value[1] == KIND_DIR and own is not None and own[1] == KIND_DIR:
                        stack.append((value[0], here))

    def _newer_offered(
        self, txn: Any, root: int, path: Sequence[bytes], vv: dict[bytes, int]
    ) -> Record | None:
        """The live version a peer's view holds at *path*, newer than *vv* and than what every
        other view holds there (`accept` noted it and left it in the view while the path was
        Real here: once consensus removed it, nothing else would apply it); None if none."""
        arena = self._arena_of(txn, root)
        found = []
        for _, view in self._views(txn, arena) if arena is not None else []:
            value = self._chain(txn, view, path)[2]
            if value is not None and versions.compare(value[8], vv) is Order.DOMINATES:
                found.append(to_record(value))
        for r in found:
            if r.live and all(versions.compare(r.vv, o.vv) in (Order.DOMINATES, Order.EQUAL) for o in found):
                return r
        return None


def _shown(record: Record, unreal: bool, tombstones: bool) -> bool:
    if not record.live:
        return tombstones
    return record.real or unreal


_STONE = Record(KIND_DELETED, real=False)


def valid_name(name: bytes) -> bool:
    """A name a peer may give an entry: what a directory on disk can hold."""
    return 0 < len(name) <= 255 and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def _view_key(arena: str, peer: bytes) -> bytes:
    return b"view:" + peer.hex().encode() + b":" + arena.encode()


def _sync_key(arena: str, peer: bytes) -> bytes:
    return b"sync:" + peer.hex().encode() + b":" + arena.encode()


def _ack_key(arena: str, peer: bytes) -> bytes:
    return b"ack:" + peer.hex().encode() + b":" + arena.encode()
