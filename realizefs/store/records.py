"""The value format of the ``nodes`` database, and each arena's counts kept beside it in ``meta``.

A ``nodes`` value is the msgpack array
``[id, kind, size, mtime_ns, mode, hash, target, pending, vv, real, seq, origin]``
(see `realizefs.store.index` for the keys and what each field means).

``meta`` key ``counts:`` + the arena root's node id (8 bytes, big-endian)
    -> five 8-byte big-endian unsigned ints: files, bytes (of the files),
    directories, symlinks, files pending (not hashed since they changed).
    Everything Real below the arena root is counted (entries known only from
    peers and tombstones are not); the root itself is not. An
    absent key means all zero (an arena with nothing indexed yet). The index
    adds each write's change to it in the write's own transaction, so reading
    it is one ``get``; `recount` walks the tree (the migration to schema 3
    uses it, tests compare the kept counts with it).

Plain functions over an open LMDB transaction; they take no locks of their own.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from realizefs.store import history

KIND_FILE, KIND_DIR, KIND_LINK = 1, 2, 3
KIND_DELETED = 4  # a tombstone: the path was deleted at version *vv*
_ID = struct.Struct(">Q")
_COUNTS = struct.Struct(">5Q")
COUNTS_PREFIX = b"counts:"


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    hash: bytes | None = None
    target: bytes | None = None
    changed: bool = False  # content changed since *hash* (stored as "pending")
    vv: dict[bytes, int] = field(default_factory=dict, compare=False)
    real: bool = True  # in this peer's Real; False: known only from peers (Unreal)
    origin: bytes = field(default=b"", compare=False)  # the peer that made this version (b"": unknown)

    @property
    def live(self) -> bool:
        """Not a tombstone."""
        return self.kind != KIND_DELETED

    @property
    def here(self) -> bool:
        """A live entry in this peer's Real."""
        return self.real and self.kind != KIND_DELETED

    @property
    def pending(self) -> bool:
        """A file whose current content is not hashed yet."""
        return self.kind == KIND_FILE and (self.hash is None or self.changed)

    @property
    def settled_hash(self) -> bytes | None:
        return None if self.pending else self.hash

    def version(self) -> history.Version:
        """As the history tells it: no hash while the content is not hashed yet."""
        return history.Version(self.settled_hash, self.size, self.mtime_ns, self.mode, self.target)

    def base(self) -> history.Version:
        """The version a new content replaces: the last one hashed."""
        return history.Version(self.hash, self.size, self.mtime_ns, self.mode, self.target)


@dataclass(frozen=True, slots=True)
class Counts:
    files: int = 0
    bytes: int = 0
    directories: int = 0
    links: int = 0
    pending: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.files + other.files,
            self.bytes + other.bytes,
            self.directories + other.directories,
            self.links + other.links,
            self.pending + other.pending,
        )

    def __neg__(self) -> Counts:
        return Counts(-self.files, -self.bytes, -self.directories, -self.links, -self.pending)

    def __sub__(self, other: Counts) -> Counts:
        return self + -other


SEQ, ORIGIN = 10, 11  # positions in a value


def pack(node: int, r: Record, vv: dict[bytes, int], seq: int = 0) -> bytes:
    value = [node, r.kind, r.size, r.mtime_ns, r.mode, r.hash, r.target, r.changed, vv, r.real, seq, r.origin]
    return msgpack.packb(value)  # type: ignore[no-any-return]


def unpack(raw: bytes) -> list[Any]:
    return msgpack.unpackb(raw, strict_map_key=False)  # type: ignore[no-any-return]


_OLDER = [True, 0, b""]  # *real*, *seq*, *origin* of a value written before schema 5


def to_record(value: list[Any]) -> Record:
    """The record of a ``nodes`` value (one written before schema 5, as the migrations read
    them, has none of the last three fields: Real, unnumbered, origin unknown)."""
    if len(value) < 12:
        value = [*value, *_OLDER[len(value) - 9 :]]
    _, kind, size, mtime_ns, mode, content_hash, target, changed, vv, real, _, origin = value
    return Record(kind, size, mtime_ns, mode, content_hash, target, changed, vv, real, origin)


def tally(r: Record | None) -> Counts:
    """What one record (None: no record) adds to its arena's counts: Real entries only."""
    if r is None or not r.here:
        return Counts()
    if r.kind == KIND_DIR:
        return Counts(directories=1)
    if r.kind == KIND_LINK:
        return Counts(links=1)
    return Counts(files=1, bytes=r.size, pending=int(r.pending))


def tally_value(value: list[Any] | None) -> Counts:
    """`tally` of a ``nodes`` value."""
    return tally(to_record(value) if value is not None else None)


def children(txn: Any, nodes: Any, node: int) -> list[tuple[bytes, list[Any]]]:
    """The entries of directory *node*: (name, value) in key order."""
    prefix = _ID.pack(node)
    cursor = txn.cursor(db=nodes)
    found: list[tuple[bytes, list[Any]]] = []
    if not cursor.set_range(prefix):
        return found
    for key, raw in cursor:
        if not key.startswith(prefix):
            break
        found.append((bytes(key[8:]), unpack(raw)))
    return found


def recount(txn: Any, nodes: Any, root: int) -> Counts:
    """The counts of everything below *root*, by walking it."""
    total = Counts()
    todo = [root]
    while todo:
        for _, value in children(txn, nodes, todo.pop()):
            total += tally_value(value)
            if value[1] == KIND_DIR:
                todo.append(value[0])
    return total


def read_counts(txn: Any, meta: Any, root: int) -> Counts:
    raw = txn.get(COUNTS_PREFIX + _ID.pack(root), db=meta)
    return Counts(*_COUNTS.unpack(raw)) if raw is not None else Counts()


def write_counts(txn: Any, meta: Any, root: int, counts: Counts) -> None:
    values = (counts.files, counts.bytes, counts.directories, counts.links, counts.pending)
    txn.put(COUNTS_PREFIX + _ID.pack(root), _COUNTS.pack(*values), db=meta)


def add_counts(txn: Any, meta: Any, root: int, delta: Counts) -> None:
    """Add *delta* to the kept counts of the arena *root* (nothing to write for no change)."""
    if delta != Counts():
        write_counts(txn, meta, root, read_counts(txn, meta, root) + delta)
