"""The content index: what each arena's Real holds, as a tree of nodes in LMDB.

Layout (schema version 4, see `realizefs.store.schema`):

``nodes``
    key: parent node id (8 bytes, big-endian) + entry name (bytes, at most 255)
    value (`realizefs.store.records`): msgpack array
    ``[id, kind, size, mtime_ns, mode, hash, target, pending, vv]``
    where *kind* is ``KIND_FILE``, ``KIND_DIR`` or ``KIND_LINK``; *hash* is the
    32-byte BLAKE3 of the file's last settled content (nil before the first);
    *pending* says the file changed since (being written, or resting) and
    *size*/*mtime_ns* are already the new ones; *target* is a symlink's target;
    *vv* the path's version vector (peer id -> counter).
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
    next node id to hand out (8 bytes); ``counts:<root id>`` -> what the arena
    holds, changed by every write in its own transaction (`realizefs.store.records`).
    ``marked:<root id>`` -> empty: this store marked the arena's root.
``history``
    See `realizefs.store.history`: every change recorded with an *op* is
    appended there in the same transaction, with the path's version vector
    incremented for this peer.

Keys are per directory entry, not per path, so path length is unbounded (LMDB
keys are at most 511 bytes; a name at most 255) and renaming a directory is
one update, whatever it holds.

Every method is one short transaction and never awaits; `batch` groups a
thread's writes into one transaction (one fsync instead of one per change).
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from realizefs.store import chunks as chunk_index
from realizefs.store import history, records
from realizefs.store.chunks import ChunkSource, RealSource
from realizefs.store.records import (
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

__all__ = ["KIND_DIR", "KIND_FILE", "KIND_LINK", "ChunkSource", "Counts", "Index", "RealSource", "Record"]

_ID = struct.Struct(">Q")


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
        key = b"arena:" + arena.encode()
        with self._writing() as txn:
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
        """The node id of the directory *path*; None if it is not an indexed directory."""
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

    # ------------------------------------------------------------ reading

    def get(self, root: int, path: Sequence[bytes]) -> Record | None:
        """The record of *path* (its names from the arena root), or None."""
        if not path:
            return Record(KIND_DIR)
        with self._reading() as txn:
            key = self._key(txn, root, path)
            raw = txn.get(key, db=self._nodes) if key is not None else None
            return to_record(unpack(raw)) if raw is not None else None

    def children(self, root: int, path: Sequence[bytes]) -> dict[bytes, Record]:
        """The entries of a directory."""
        with self._reading() as txn:
            node = self._walk(txn, root, path)
            return dict(self._children(txn, node)) if node is not None else {}

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
        counts one more change by this peer; without, the vector is kept. *when*:
        the time of the change (ns), if known better than now."""
        if not path:
            return False  # the arena root has no record
        with self._writing() as txn:
            key = self._key(txn, root, path)
            if key is None:
                return False
            raw = txn.get(key, db=self._nodes)
            old = unpack(raw) if raw is not None else None
            delta = tally(record) - tally_value(old)
            if old is not None and old[1] == KIND_DIR and record.kind != KIND_DIR:
                delta -= self._drop_below(txn, old[0], root, list(path))
            if old is not None and (old[1] == KIND_DIR) == (record.kind == KIND_DIR):
                node = old[0]
            else:
                node = self._new_id(txn)
                txn.put(_ID.pack(node), key, db=self._parents)
            vv = dict(old[8]) if old is not None else {}
            if op is not None:
                vv[self.me] = vv.get(self.me, 0) + 1
                before = to_record(old).base() if old is not None else None
                self._log(txn, root, op, path, None, before, record.version(), vv, when)
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
        )
        history.append(txn, self._history, root, entry)

    def history(self, root: int, limit: int) -> list[history.Entry]:
        with self._reading() as txn:
            return history.recent(txn, self._history, root, limit)

    def delete(self, root: int, path: Sequence[bytes], logged: bool = True, when: int | None = None) -> bool:
        """Forget *path* and, for a directory, everything below it; whether it was known.

        Logged, each file below gets a delete entry and each directory an rmdir,
        deepest first."""
        if not path:
            return False
        with self._writing() as txn:
            key = self._key(txn, root, path)
            raw = txn.get(key, db=self._nodes) if key is not None else None
            if key is None or raw is None:
                return False
            value = unpack(raw)
            gone = self._drop_below(txn, value[0], root if logged else None, list(path)) + tally_value(value)
            if logged:
                self._log_gone(txn, root, list(path), value, when)
            self._hold(txn, chunk_index.held_value(value), None)
            txn.delete(key, db=self._nodes)
            txn.delete(_ID.pack(value[0]), db=self._parents)
            records.add_counts(txn, self._meta, root, -gone)
            return True

    def _log_gone(
        self, txn: Any, root: int, path: list[bytes], value: list[Any], when: int | None = None
    ) -> None:
        record = to_record(value)
        if record.kind == KIND_FILE and record.hash is None:
            return  # never settled, so never in the history: its going is no news either
        vv = dict(value[8])
        vv[self.me] = vv.get(self.me, 0) + 1
        op = "rmdir" if record.kind == KIND_DIR else "delete"
        self._log(txn, root, op, path, None, record.version(), None, vv, when)

    def rename(
        self,
        root: int,
        old: Sequence[bytes],
        new: Sequence[bytes],
        logged: bool = True,
        current: tuple[int, int] | None = None,
    ) -> bool:
        """Move *old* (with all below it) to *new*, replacing what was there: one update.

        *current*: the (size, mtime) the file at *new* has now; taken for a file
        not hashed since it changed (its record has those of its last look)."""
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
            if old_key == new_key:
                return txn.get(old_key, db=self._nodes) is not None  # rename(2) onto itself: nothing changes
            raw = txn.get(old_key, db=self._nodes)
            if raw is None:
                return False
            value = unpack(raw)
            vv = dict(value[8])
            before = None
            base: bytes | None = None
            delta = -tally_value(value)  # the moved record may change below, so it is counted again
            raw_replaced = txn.get(new_key, db=self._nodes)
            if raw_replaced is not None:  # an atomic save: the new version follows the replaced one
                replaced = unpack(raw_replaced)
                delta -= self._drop_below(txn, replaced[0], None, list(new)) + tally_value(replaced)
                txn.delete(_ID.pack(replaced[0]), db=self._parents)
                self._hold(txn, chunk_index.held_value(replaced), None)
                replaced_record = to_record(replaced)
                if not (replaced_record.kind == KIND_FILE and replaced_record.hash is None):
                    before = replaced_record.version()  # else never hashed: not in the history
                base = replaced_record.hash  # its last hashed content, even if changed since
                for peer, count in replaced[8].items():
                    vv[peer] = max(vv.get(peer, 0), count)
            record = to_record(value)
            if current is not None and record.pending:
                record = replace(record, size=current[0], mtime_ns=current[1])
            if record.kind == KIND_FILE and record.hash is None and not base:
                logged = False  # a file not in the history yet (an editor's temporary file)
            if logged:
                vv[self.me] = vv.get(self.me, 0) + 1
            if base and record.kind == KIND_FILE and not record.hash:
                # the new content is not hashed yet: its next entry will be an edit of
                # (or an overwrite of) the version it replaced, not a create
                record = replace(record, hash=base, changed=True)
            if logged:
                self._log(txn, root, "rename", new, old, before, record.version(), vv)
            # the moved node keeps its id and its chunks' sources: only a record with no
            # settled content (pending, or never hashed) is changed above, and stays so
            txn.delete(old_key, db=self._nodes)
            txn.put(new_key, pack(value[0], record, vv), db=self._nodes)
            txn.put(_ID.pack(value[0]), new_key, db=self._parents)
            records.add_counts(txn, self._meta, root, delta + tally(record))
            return True

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
            if raw_one is None or raw_other is None:
                return False
            first, second = unpack(raw_one), unpack(raw_other)
            moved, replaced = to_record(first), to_record(second)  # moved to *other*, and from it
            vv_one, vv_other = dict(first[8]), dict(second[8])  # each follows its content
            known = [not (r.kind == KIND_FILE and r.hash is None) for r in (moved, replaced)]
            if logged and any(known):
                vv = dict(vv_one)
                for peer, count in vv_other.items():
                    vv[peer] = max(vv.get(peer, 0), count)
                vv[self.me] = vv.get(self.me, 0) + 1
                vv_one = vv_other = vv
                if all(known):
                    self._log(txn, root, "exchange", other, one, replaced.version(), moved.version(), vv)
                elif known[0]:
                    self._log(txn, root, "rename", other, one, None, moved.version(), vv)
                else:
                    self._log(txn, root, "rename", one, other, None, replaced.version(), vv)
            txn.put(other_key, pack(first[0], moved, vv_one), db=self._nodes)
            txn.put(one_key, pack(second[0], replaced, vv_other), db=self._nodes)
            txn.put(_ID.pack(first[0]), other_key, db=self._parents)
            txn.put(_ID.pack(second[0]), one_key, db=self._parents)
            return True  # the same records, swapped: the counts stay

    def _drop_below(self, txn: Any, node: int, root: int | None, path: list[bytes]) -> Counts:
        """Forget everything below the directory *node*, and how much that was; with a *root*,
        log each as gone."""
        gone = Counts()
        for name, value in self._child_items(txn, node):
            if value[1] == KIND_DIR:
                gone += self._drop_below(txn, value[0], root, [*path, name])
            if root is not None:
                self._log_gone(txn, root, [*path, name], value)
            self._hold(txn, chunk_index.held_value(value), None)
            txn.delete(_ID.pack(node) + name, db=self._nodes)
            txn.delete(_ID.pack(value[0]), db=self._parents)
            gone += tally_value(value)
        return gone
