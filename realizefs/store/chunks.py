"""The chunk index: for a chunk hash, where its bytes can be found on this peer.

``chunks`` database (schema 4, see `realizefs.store.schema`)
    key: chunk hash (32 bytes) + source kind (1 byte) + the source's id;
    value: by kind. All sources of a chunk are one key prefix, kinds in order.

    - kind 1, `KIND_REAL`: a settled file in an arena's Real. id: the file's node
      id (8 bytes, big-endian; a node keeps its id through renames and exchanges,
      so those rewrite no entry here); value: offset (8 bytes, big-endian) and
      length (4 bytes, big-endian) of the chunk's first occurrence in the file
      (a chunk repeated within a file is one entry: any copy of its bytes will do).
    - kind 2 is kept for the chunk cache (issue 10): a chunk hash + 2 key, its
      value saying where the cache holds the bytes.

The entries of kind 1 are exactly: for every Real file node whose record has a
settled hash (hashed, and not changed since) and whose content's manifest is
stored, one entry per distinct chunk of that manifest. `realizefs.store.index`
keeps them so in the same write transaction as every change of a ``nodes``
record (content recorded, replaced, made pending, deleted, a directory dropped
with what it held), so no commit, and no crash between two, can leave one
stale or missing. One exception, which the indexer never makes: a file
recorded with a hash but without its chunks while no manifest of that hash is
stored is no source, and stays none until it is recorded with its chunks
(storing that manifest for another file does not list it). The bytes on disk
may have changed since the indexer last looked at them (it learns of a write a
moment later): a reader verifies a chunk's hash after reading it, as it does a
chunk from the network.

`derive` computes the entries from the ``nodes`` and ``manifests`` databases
alone (the migration to schema 4 writes them; tests compare it with the kept
ones). Plain functions over an open LMDB transaction; no locks of their own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from realizefs.store.records import KIND_FILE, Record, to_record, unpack

KIND_REAL = 1
HASH_BYTES = 32
_ID = struct.Struct(">Q")
_SPAN = struct.Struct(">QI")  # offset, length

Manifest = list[tuple[int, int, bytes]]


@dataclass(frozen=True, slots=True)
class RealSource:
    """A chunk's bytes in an indexed Real file, found as it was last hashed.

    *path*: the file's names from the arena root *root*, as indexed when asked."""

    root: int
    node: int
    path: tuple[bytes, ...]
    offset: int
    length: int


ChunkSource = RealSource  # the chunk cache's source joins this union (issue 10)


def read_manifest(txn: Any, manifests: Any, content_hash: bytes) -> Manifest | None:
    """The stored manifest of *content_hash*: (offset, length, chunk hash) triples."""
    flat = read_flat(txn, manifests, content_hash)
    return None if flat is None else list(zip(flat[0::3], flat[1::3], flat[2::3], strict=True))


def read_flat(txn: Any, manifests: Any, content_hash: bytes) -> list[Any] | None:
    """The stored manifest of *content_hash* as stored: offset, length, chunk hash, flattened."""
    raw = txn.get(content_hash, db=manifests)
    return None if raw is None else cast(list[Any], msgpack.unpackb(raw))


def write_manifest(
    txn: Any, manifests: Any, content_hash: bytes, chunks: Iterable[tuple[int, int, bytes]]
) -> bool:
    """Store a content's manifest unless it is; whether it was new."""
    flat = [x for chunk in chunks for x in chunk]
    return bool(txn.put(content_hash, msgpack.packb(flat), db=manifests, overwrite=False))


def _first(manifest: Sequence[tuple[int, int, bytes]]) -> dict[bytes, tuple[int, int]]:
    """Each distinct chunk of a manifest with (offset, length) of its first occurrence."""
    first: dict[bytes, tuple[int, int]] = {}
    for offset, length, chunk in manifest:
        first.setdefault(bytes(chunk), (offset, length))
    return first


def _real_key(chunk: bytes, node: int) -> bytes:
    return chunk + bytes((KIND_REAL,)) + _ID.pack(node)


def file_entries(node: int, manifest: Sequence[tuple[int, int, bytes]]) -> dict[bytes, bytes]:
    """The ``chunks`` entries (key -> value) of file *node* holding *manifest*'s content."""
    return {_real_key(chunk, node): _SPAN.pack(*span) for chunk, span in _first(manifest).items()}


def add_file(txn: Any, chunks: Any, manifests: Any, node: int, content_hash: bytes) -> None:
    """File *node* now holds *content_hash*: list it as a source of each of its chunks."""
    manifest = read_manifest(txn, manifests, content_hash)
    for key, value in file_entries(node, manifest or ()).items():
        txn.put(key, value, db=chunks)


def remove_file(txn: Any, chunks: Any, manifests: Any, node: int, content_hash: bytes) -> None:
    """File *node* no longer holds *content_hash*: drop it from its chunks' sources."""
    manifest = read_manifest(txn, manifests, content_hash)
    for chunk in _first(manifest or ()):
        txn.delete(_real_key(chunk, node), db=chunks)


def held(node: int, record: Record) -> tuple[int, bytes] | None:
    """(node id, settled hash) of a Real file with a settled content; None for anything else."""
    if record.kind != KIND_FILE or not record.real or record.settled_hash is None:
        return None
    return node, bytes(record.settled_hash)


def held_value(value: list[Any] | None) -> tuple[int, bytes] | None:
    """`held` of a ``nodes`` value (None: no record)."""
    return held(value[0], to_record(value)) if value is not None else None


def sources(txn: Any, chunks: Any, chunk: bytes) -> list[tuple[int, int, int, int]]:
    """The entries of *chunk*: (kind, node id, offset, length), in key order."""
    found: list[tuple[int, int, int, int]] = []
    cursor = txn.cursor(db=chunks)
    if not cursor.set_range(chunk):
        return found
    for key, value in cursor:
        if bytes(key[:HASH_BYTES]) != chunk:
            break
        kind = key[HASH_BYTES]
        if kind == KIND_REAL:
            offset, length = _SPAN.unpack(value)
            found.append((kind, _ID.unpack(key[HASH_BYTES + 1 :])[0], offset, length))
    return found


def derive(txn: Any, nodes: Any, manifests: Any) -> Iterator[tuple[bytes, bytes]]:
    """Every kind-1 entry (key, value) there should be, from ``nodes`` and ``manifests`` alone;
    each once, file by file (the caller may write them as they come: other databases)."""
    for _, raw in txn.cursor(db=nodes):
        content = held_value(unpack(raw))
        if content is not None:
            manifest = read_manifest(txn, manifests, content[1])
            yield from file_entries(content[0], manifest or ()).items()


def dump(txn: Any, chunks: Any) -> dict[bytes, bytes]:
    """Every entry kept, key -> value (tests compare it with `derive`)."""
    return {bytes(key): bytes(value) for key, value in txn.cursor(db=chunks)}
