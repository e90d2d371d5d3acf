"""Pruning: what the store would keep forever, dropped once no configured peer can need it.

What grows as files are created, edited and deleted, and what is done about it:

- **history entries**, one per change: an arena's oldest entries go once every
  configured peer acknowledged the records their change numbered (the next
  entry's *mark*, `realizefs.store.history`), or anyway once they are more than
  the bound (``consensus.history_bound``) behind the arena's last record
  number. The last `KEEP` entries stay (what ``.realize/history`` shows), so
  does the last one (numbers keep growing). A lone store (no configured peer)
  keeps its history up to the bound: nobody acknowledges it.
- **tombstones** of this peer's view (``nodes`` + ``parents`` + ``sequence``),
  one per deleted path (and per old path of a rename): one goes once every
  configured peer acknowledged its number (each took it: a peer that never did
  would otherwise keep the file and bring it back), it has nothing below it,
  and no peer's view holds a live version there that it does not dominate (a
  conflict consensus has yet to settle). Never by the bound: a peer that far
  behind still finds every tombstone it has not acknowledged in a full index.
  Its vector is merged into the arena's *horizon* (``meta``
  ``horizon:<root>``), which a change at a path without record counts from
  (`realizefs.store.index`), so a path made again dominates the tombstone a
  peer may still hold there. A tombstone made only to hold others below it
  (no vector, no number) goes with the last of them.
- **peers' views' tombstones**: one at a path goes with this peer's own
  tombstone there, if its vector is not newer (ours said more).
- **manifests** of contents no record holds any more (each edit leaves the
  previous version's): `sweep` drops them, what `referenced` read and what the
  index wrote meanwhile (`Index.track_contents`) kept.

Every step is one write transaction of at most *limit* deletions, so a kill
between two leaves a consistent store, and the event loop's own writes wait
at most one step; the cursor of the tombstones' scan (``meta``
``pruned:<root>``: the last number looked at) is written in the same
transaction. Run in a worker thread (`realizefs.sync.pruner`), never on a
request's path. Nothing here is told to peers: they were told before.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from realizefs.consensus import versions
from realizefs.consensus.versions import Order
from realizefs.store import history
from realizefs.store.index import HORIZON, Index
from realizefs.store.records import KIND_DELETED, SEQ, unpack
from realizefs.store.schema import Store

KEEP = 100  # an arena's last history entries kept whatever peers acknowledged

_ID = struct.Struct(">Q")
_SEQ = struct.Struct(">QQ")
_PRUNED = b"pruned:"


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one step dropped."""

    history: int = 0
    tombstones: int = 0
    views: int = 0
    manifests: int = 0
    more: bool = field(default=False, compare=False)  # stopped at its limit: another step may find more

    def __bool__(self) -> bool:
        return bool(self.history or self.tombstones or self.views or self.manifests)


class Pruning:
    """Prunes *store*'s index (*index* writes it: its content tracking keeps the sweep true)."""

    def __init__(self, store: Store, index: Index) -> None:
        self.env = store.env
        self.index = index
        self._nodes = store.dbs[b"nodes"]
        self._parents = store.dbs[b"parents"]
        self._meta = store.dbs[b"meta"]
        self._sequence = store.dbs[b"sequence"]
        self._history = store.dbs[b"history"]
        self._manifests = store.dbs[b"manifests"]

    def step(self, arena: str, peers: Sequence[bytes], bound: int, limit: int) -> Pruned:
        """Prune at most *limit* history entries and *limit* tombstones of *arena* (with the
        views' tombstones that go with them) in one transaction, for the configured *peers*
        (their ids in vectors) and the *bound*."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"arena:" + arena.encode(), db=self._meta)
            if raw is None:
                return Pruned()
            root = int(_ID.unpack(raw)[0])
            last = _u64(txn.get(b"seq:" + _ID.pack(root), db=self._meta))
            acked = min((_u64(txn.get(_ack_key(arena, p), db=self._meta)) for p in peers), default=last)
            upto = max(acked if peers else 0, last - bound - 1)  # more than *bound* behind
            entries = history.prunable(txn, self._history, root, upto, KEEP, limit)
            for key in entries:
                txn.delete(key, db=self._history)
            stones, views, scanned = self._tombstones(txn, arena, root, acked, limit)
            return Pruned(len(entries), stones, views, more=len(entries) == limit or scanned == limit)

    def _tombstones(self, txn: Any, arena: str, root: int, acked: int, limit: int) -> tuple[int, int, int]:
        """Drop this peer's tombstones numbered from the cursor to *acked*, looking at *limit*
        numbers at most: (own dropped, views' dropped, numbers looked at)."""
        cursor_key = _PRUNED + _ID.pack(root)
        start = _u64(txn.get(cursor_key, db=self._meta))
        if start >= acked:
            return 0, 0, 0
        views = _views(txn, self._meta, arena)
        horizon: dict[bytes, int] = {}
        stones = in_views = looked = 0
        scan = txn.cursor(db=self._sequence)
        found = scan.set_range(_SEQ.pack(root, start + 1))
        last = start
        numbered: list[tuple[int, int]] = []
        while found and looked < limit:
            at, seq = _SEQ.unpack(bytes(scan.key()))
            if at != root or seq > acked:
                break
            numbered.append((seq, int(_ID.unpack(scan.value())[0])))
            looked += 1
            found = scan.next()
        for seq, node in numbered:
            last = seq
            gone, in_view = self._bury(txn, root, node, acked, views, horizon)
            stones += gone
            in_views += in_view
        if horizon:
            raw = txn.get(HORIZON + _ID.pack(root), db=self._meta)
            before = msgpack.unpackb(raw, strict_map_key=False) if raw is not None else {}
            txn.put(HORIZON + _ID.pack(root), msgpack.packb(versions.merge(before, horizon)), db=self._meta)
        if last > start:
            txn.put(cursor_key, _ID.pack(last), db=self._meta)
        return stones, in_views, looked

    def _bury(
        self,
        txn: Any,
        root: int,
        node: int,
        acked: int,
        views: list[int],
        horizon: dict[bytes, int],
    ) -> tuple[int, int]:
        """Drop the tombstone *node* if it may go, then each tombstone above it that may go
        now that it is the last below: (own dropped, views' dropped)."""
        stones = in_views = 0
        while True:
            where = txn.get(_ID.pack(node), db=self._parents)
            if where is None:
                return stones, in_views  # the root
            where = bytes(where)
            raw = txn.get(where, db=self._nodes)
            value = unpack(raw) if raw is not None else None
            if value is None or value[0] != node or value[1] != KIND_DELETED:
                return stones, in_views
            if value[SEQ] > acked or _has_children(txn, self._nodes, node):
                return stones, in_views
            path = _path(txn, self._parents, node)
            held = [_at(txn, self._nodes, view, path) for view in views]
            if any(v is not None and v[1] != KIND_DELETED and _newer(v[8], value[8]) for v in held):
                return stones, in_views  # a concurrent or newer version: for consensus
            for view, v in zip(views, held, strict=True):
                if v is not None and v[1] == KIND_DELETED and not _newer(v[8], value[8]):
                    in_views += self._drop_in_view(txn, view, v[0])
            _drop(txn, self._nodes, self._parents, where, node)
            if value[SEQ]:
                txn.delete(_SEQ.pack(root, value[SEQ]), db=self._sequence)
            horizon.update(versions.merge(horizon, value[8]))
            stones += 1
            node = int(_ID.unpack(where[:8])[0])

    def _drop_in_view(self, txn: Any, view: int, node: int) -> int:
        """Drop a view's tombstone *node* if nothing is below it, then each tombstone above it
        made only to hold others (no vector) with nothing left below; how many. A tombstone
        above with a vector is the peer's delete of that directory, which this peer's Real
        may not have taken yet: it goes with this peer's own tombstone there."""
        dropped = 0
        first = True
        while node != view and not _has_children(txn, self._nodes, node):
            where = txn.get(_ID.pack(node), db=self._parents)
            if where is None:
                break
            where = bytes(where)
            raw = txn.get(where, db=self._nodes)
            value = unpack(raw) if raw is not None else None
            if value is None or value[1] != KIND_DELETED or (value[8] and not first):
                break
            _drop(txn, self._nodes, self._parents, where, node)
            dropped += 1
            first = False
            node = int(_ID.unpack(where[:8])[0])
        return dropped

    # ------------------------------------------------------------ manifests

    def referenced(self) -> set[bytes]:
        """Every content hash a record of any tree (this peer's view, peers' views) holds,
        read in one snapshot; call inside `Index.track_contents`: what a write transaction in
        progress when it began writes is not in the snapshot, so it waits for it first."""
        found: set[bytes] = set()
        with self.env.begin(write=True):
            pass  # the write lock: every transaction begun before the tracking has ended
        with self.env.begin() as txn:
            for _, raw in txn.cursor(db=self._nodes):
                content = unpack(raw)[5]
                if content is not None:
                    found.add(bytes(content))
        return found

    def sweep(
        self, keep: set[bytes], touched: set[bytes], start: bytes, limit: int
    ) -> tuple[int, bytes | None]:
        """Drop the manifests from the hash *start* on that neither *keep* nor *touched* holds,
        looking at at most *limit*, in one transaction: (dropped, where to go on; None: done)."""
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._manifests)
            found = cursor.set_range(start)
            gone: list[bytes] = []
            for _ in range(limit):
                if not found:
                    break
                content = bytes(cursor.key())
                if content not in keep and content not in touched:
                    gone.append(content)
                found = cursor.next()
            going_on = bytes(cursor.key()) if found else None
            for content in gone:
                txn.delete(content, db=self._manifests)
            return len(gone), going_on


def _u64(raw: bytes | None) -> int:
    return int(_ID.unpack(raw)[0]) if raw is not None else 0


def _ack_key(arena: str, peer: bytes) -> bytes:
    return b"ack:" + peer.hex().encode() + b":" + arena.encode()


def _newer(a: dict[bytes, int], b: dict[bytes, int]) -> bool:
    """Whether *a* says something *b* does not (newer or concurrent)."""
    return versions.compare(a, b) in (Order.DOMINATES, Order.CONCURRENT)


def _has_children(txn: Any, nodes: Any, node: int) -> bool:
    cursor = txn.cursor(db=nodes)
    prefix = _ID.pack(node)
    return bool(cursor.set_range(prefix)) and bytes(cursor.key()).startswith(prefix)


def _drop(txn: Any, nodes: Any, parents: Any, key: bytes, node: int) -> None:
    txn.delete(key, db=nodes)
    txn.delete(_ID.pack(node), db=parents)


def _path(txn: Any, parents: Any, node: int) -> list[bytes]:
    names: list[bytes] = []
    while True:
        raw = txn.get(_ID.pack(node), db=parents)
        if raw is None:
            return names[::-1]
        names.append(bytes(raw[8:]))
        node = int(_ID.unpack(raw[:8])[0])


def _at(txn: Any, nodes: Any, root: int, path: Sequence[bytes]) -> list[Any] | None:
    """The value at *path* in the tree *root*, through any kind of record; None if none."""
    value: list[Any] | None = None
    node = root
    for name in path:
        raw = txn.get(_ID.pack(node) + name, db=nodes)
        if raw is None:
            return None
        value = unpack(raw)
        node = value[0]
    return value


def _views(txn: Any, meta: Any, arena: str) -> list[int]:
    """The root of every peer's view of *arena*."""
    found = []
    cursor = txn.cursor(db=meta)
    suffix = b":" + arena.encode()
    if cursor.set_range(b"view:"):
        for raw_key, raw in cursor:
            key = bytes(raw_key)
            if not key.startswith(b"view:"):
                break
            if key[5:].partition(b":")[2] == suffix[1:]:
                found.append(int(_ID.unpack(raw)[0]))
    return found
