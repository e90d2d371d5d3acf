"""The local history: an append-only, sequence-numbered log of each arena's changes.

Layout (schema version 6, see `realizefs.store.schema`):

``history``
    key: the arena root's node id (8 bytes) + sequence number (8 bytes), both
    big-endian, so an arena's entries are one ordered key range and pruning
    what every peer acknowledged is deleting a prefix of it.
    value: msgpack array ``[op, path, old_path, old, new, vv, time_ns, origin, kind, mark]``:
    *op* one of `OPS`; *path* the path (bytes, names joined by ``/``);
    *old_path* the previous path of a rename, or the other path of an
    ``exchange`` (``RENAME_EXCHANGE``: what was at *old_path* is now at *path*
    and the other way round), else nil; *old* and *new* the versions at *path*
    before and after, ``[hash, size, mtime_ns, mode, target]`` or nil (for an
    exchange, *old* is also what *old_path* holds now);
    *vv* the path's version vector after the change (peer id -> counter);
    *time_ns* when the change happened, as well as it is known: for content,
    the file's ctime when it was hashed (its last write, unless a chmod or
    utime came after; the mtime can be set back by anyone, the ctime cannot);
    for a chmod or symlink, the ctime the look saw; for a delete, when the
    file was first seen missing (it is recorded a rest period later); else
    when the indexer took the change (at once). So times need not grow with
    the sequence number. *origin*: the id (as in vectors) of the peer that made
    the change: this peer for its own, the maker's for a change accepted from
    a peer (relayed unchanged), empty when unknown (a change taken from a
    peer's full index, which tells versions, not who made them). *kind*: the
    path's kind (`realizefs.store.records` ``KIND_*``) after the change, or
    before it for a delete; 0 when unknown (entries migrated from schema 4
    whose path was gone). Entries written before schema 5 are migrated
    (`migrate_value`). *mark* (schema 6; absent before): the last number the
    arena's ``sequence`` had handed out when the entry was appended, so every
    record its change numbered is after it and at or before the next entry's
    mark: a peer that acknowledged that far took the change (`prunable`).

Entries are appended by `realizefs.store.index` in the same transaction as
the index change they describe, so a crash never leaves one without the other.
`realizefs.store.pruning` deletes the oldest ones (a key prefix), never the
last, so numbers keep growing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

OPS = ("create", "edit", "overwrite", "delete", "rename", "exchange", "mkdir", "rmdir", "symlink", "chmod")
_RENAMED = {"mode": "chmod"}  # ops stored under an older name, read under the current one
_KEY = struct.Struct(">QQ")


@dataclass(frozen=True, slots=True)
class Version:
    hash: bytes | None
    size: int
    mtime_ns: int
    mode: int
    target: bytes | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    op: str
    path: bytes
    old_path: bytes | None
    old: Version | None
    new: Version | None
    vv: dict[bytes, int]
    time_ns: int
    origin: bytes = b""
    kind: int = 0
    mark: int | None = None  # the arena's last record number when appended (None: before schema 6)


def append(txn: Any, db: Any, root: int, entry: Entry) -> int:
    """Append *entry* (its seq is ignored) to the arena's history; its sequence number."""
    seq = last_seq(txn, db, root) + 1
    value = [
        entry.op,
        entry.path,
        entry.old_path,
        _version(entry.old),
        _version(entry.new),
        entry.vv,
        entry.time_ns,
        entry.origin,
        entry.kind,
        entry.mark,
    ]
    txn.put(_KEY.pack(root, seq), msgpack.packb(value), db=db)
    return seq


def last_seq(txn: Any, db: Any, root: int) -> int:
    cursor = txn.cursor(db=db)
    if not _seek_last(cursor, root):
        return 0
    return int(_KEY.unpack(bytes(cursor.key()))[1])


def recent(txn: Any, db: Any, root: int, limit: int) -> list[Entry]:
    """The last *limit* entries of the arena, oldest first."""
    out: list[Entry] = []
    cursor = txn.cursor(db=db)
    positioned = _seek_last(cursor, root)
    while positioned and len(out) < limit:
        found_root, seq = _KEY.unpack(bytes(cursor.key()))
        if found_root != root:
            break
        out.append(_entry(seq, cursor.value()))
        positioned = cursor.prev()
    out.reverse()
    return out


def first_seq(txn: Any, db: Any, root: int) -> int:
    """The number of the arena's oldest entry kept (0: none)."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(_KEY.pack(root, 0)):
        return 0
    found, seq = _KEY.unpack(bytes(cursor.key()))
    return int(seq) if found == root else 0


def prunable(txn: Any, db: Any, root: int, upto: int, keep: int, limit: int) -> list[bytes]:
    """The keys of the arena's oldest entries whose change is numbered at or before *upto* in
    its sequence (the next entry's mark is; an entry without a mark counts as marked 0), at
    most *limit*, never one of the last *keep* (at least the last: numbers keep growing)."""
    last = last_seq(txn, db, root)
    keys: list[bytes] = []
    cursor = txn.cursor(db=db)
    if not cursor.set_range(_KEY.pack(root, 0)):
        return keys
    previous: bytes | None = None
    for key, raw in cursor:
        found, seq = _KEY.unpack(bytes(key))
        if found != root or seq > last - max(keep, 1) + 1 or len(keys) >= limit:
            break
        if previous is not None:
            value = msgpack.unpackb(raw, strict_map_key=False)
            mark = value[9] if len(value) > 9 and value[9] is not None else 0
            if mark > upto:
                break
            keys.append(previous)
        previous = bytes(key)
    return keys


def _entry(seq: int, raw: bytes) -> Entry:
    value = msgpack.unpackb(raw, strict_map_key=False)
    op, path, old_path, old, new, vv, time_ns, origin, kind = value[:9]
    mark = value[9] if len(value) > 9 else None
    return Entry(
        seq,
        _RENAMED.get(op, op),
        path,
        old_path,
        _unversion(old),
        _unversion(new),
        vv,
        time_ns,
        origin,
        kind,
        mark,
    )


def migrate_value(raw: bytes, kind_at: Any) -> bytes:
    """A schema 4 value with its *origin* and *kind* (schema 5).

    Before schema 5 peers exchanged nothing, so every entry was made here and its
    vector counts this peer alone: the origin is that one id. The kind follows from
    the op, else from what *kind_at(path)* says the path is now (0: unknown)."""
    value = msgpack.unpackb(raw, strict_map_key=False)
    if len(value) > 7:
        return raw  # already migrated (a store taken back to an older version by hand)
    op, path, old_path, old, new, vv, time_ns = value
    origin = next(iter(vv)) if len(vv) == 1 else b""
    kind = _OP_KIND.get(_RENAMED.get(op, op), 0)
    if op == "delete" and old is not None and old[4] is not None:
        kind = 3  # a symlink's delete
    if not kind:
        kind = kind_at(path)
    return msgpack.packb([op, path, old_path, old, new, vv, time_ns, origin, kind])  # type: ignore[no-any-return]


_OP_KIND = {"create": 1, "edit": 1, "overwrite": 1, "delete": 1, "mkdir": 2, "rmdir": 2, "symlink": 3}


def _seek_last(cursor: Any, root: int) -> bool:
    """Put *cursor* on the arena's last entry; False if it has none."""
    if cursor.set_range(_KEY.pack(root + 1, 0)):
        if not cursor.prev():
            return False
    elif not cursor.last():
        return False
    return bool(_KEY.unpack(bytes(cursor.key()))[0] == root)


def _version(v: Version | None) -> list[Any] | None:
    return None if v is None else [v.hash, v.size, v.mtime_ns, v.mode, v.target]


def _unversion(v: list[Any] | None) -> Version | None:
    return None if v is None else Version(*v)
