"""The local history: an append-only, sequence-numbered log of each arena's changes.

Layout (schema version 5, see `realizefs.store.schema`):

``history``
    key: the arena root's node id (8 bytes) + sequence number (8 bytes), both
    big-endian, so an arena's entries are one ordered key range and pruning
    what every peer acknowledged is deleting a prefix of it.
    value: msgpack array ``[op, path, old_path, old, new, vv, time_ns, origin, kind]``:
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
    (`migrate_value`).

Entries are appended by `realizefs.store.index` in the same transaction as
the index change they describe, so a crash never leaves one without the other.
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


def _entry(seq: int, raw: bytes) -> Entry:
    op, path, old_path, old, new, vv, time_ns, origin, kind = msgpack.unpackb(raw, strict_map_key=False)
    return Entry(
        seq, _RENAMED.get(op, op), path, old_path, _unversion(old), _unversion(new), vv, time_ns, origin, kind
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
