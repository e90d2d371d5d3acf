"""The LMDB environment in ``data_dir/store/`` and its schema.

This module owns every named database, its key layout and value format, and
the schema version checked at start. Keep this docstring the reference.

Schema version 6 (version 1 had ``meta`` only; the upgrade to 2 adds the
empty databases of the content index; the upgrade to 3 counts each arena's
index once into its kept ``counts:`` key; the upgrade to 4 adds ``chunks`` and
fills it from the index; the upgrade to 5 gives every ``nodes`` value its
*real* flag (all Real then), *seq* and *origin*, numbers each arena's records
in ``sequence``, and gives every history entry its *origin* and *kind*: for
the entries known from peers, tombstones, peers' views and following a peer;
the upgrade to 6 changes nothing stored: history entries written from then on
carry a *mark*, and ``meta`` gains peers' acknowledgements and what pruning
keeps, all absent at first, which reads as nothing acknowledged or pruned):

``meta``
    Small facts about the store, keys are ASCII names:

    - ``schema_version``: 4-byte big-endian unsigned int, the layout in force.
    - ``store_id``: 16 random bytes, created once; a new store id tells peers
      that this store was recreated and needs a full index.
    - ``created_ns``: 8-byte big-endian unsigned int, creation time (ns since epoch).
    - ``arena:<name>``, ``next_id``, ``marked:``, ``view:<peer>:<arena>``,
      ``sync:<peer>:<arena>``, ``seq:<root id>``, ``ack:<peer>:<arena>``,
      ``horizon:<root id>``: see `realizefs.store.index`.
    - ``pruned:<root id>``: see `realizefs.store.pruning`.
    - ``counts:<root id>``: see `realizefs.store.records`.

``nodes``, ``parents``, ``manifests``, ``sequence``
    The content index, documented in `realizefs.store.index`.
``chunks``
    key: chunk hash (32 bytes) + source kind (1 byte) + source id -> value by
    kind: where a chunk's bytes are on this peer, documented in
    `realizefs.store.chunks`. Kind 1, a settled Real file: id its node id
    (8 bytes, big-endian), value offset (8 bytes) + length (4 bytes) of the
    chunk's first occurrence in it; kept exactly in step with ``nodes`` and
    ``manifests`` by every write of the index. Kind 2 is kept for the chunk
    cache.
``history``
    The local history, documented in `realizefs.store.history`.

A data_dir written by a newer schema is refused with a clear message (never
downgraded). Migrations from an older schema run in one write transaction in
`_MIGRATIONS`, keyed by the version they upgrade from.

Concurrency: the environment is opened once per daemon; a second daemon on
the same data_dir is refused by an exclusive ``flock`` on ``data_dir/lock``
taken before LMDB is opened. Write transactions are short and never span an
``await``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb
import msgpack

from realizefs.errors import StoreError
from realizefs.store import chunks, history, records

log = logging.getLogger(__name__)

SCHEMA_VERSION = 6
DATABASES = (b"meta", b"nodes", b"parents", b"manifests", b"history", b"chunks", b"sequence")
MAP_SIZE = 1 << 40  # address space only; the file grows as data is written

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _add_index(txn: Any, dbs: dict[bytes, Any]) -> None:
    """1 -> 2: the content index's databases, created empty when the store opens."""


def _arena_roots(txn: Any, dbs: dict[bytes, Any]) -> list[int]:
    """The root node id of every arena the index holds."""
    cursor = txn.cursor(db=dbs[b"meta"])
    roots = []
    if cursor.set_range(b"arena:"):
        for key, raw in cursor:
            if not bytes(key).startswith(b"arena:"):
                break
            roots.append(_U64.unpack(raw)[0])
    return roots


def _keep_counts(txn: Any, dbs: dict[bytes, Any]) -> None:
    """2 -> 3: count each arena's index once; from now on every write keeps the count."""
    for root in _arena_roots(txn, dbs):
        records.write_counts(txn, dbs[b"meta"], root, records.recount(txn, dbs[b"nodes"], root))


def _index_chunks(txn: Any, dbs: dict[bytes, Any]) -> None:
    """3 -> 4: list every settled file's chunks as sources; from now on every write keeps them."""
    for key, value in chunks.derive(txn, dbs[b"nodes"], dbs[b"manifests"]):
        txn.put(key, value, db=dbs[b"chunks"])


def _views(txn: Any, dbs: dict[bytes, Any]) -> None:
    """4 -> 5: every record says it is Real, and each arena's records with a vector are numbered
    in its sequence (parents first) for peers to follow; every history entry says who made it
    and its kind."""
    nodes = dbs[b"nodes"]
    for key, raw in list(txn.cursor(db=nodes)):
        value = records.unpack(raw)
        if len(value) == 9:
            txn.put(key, msgpack.packb([*value, True, 0, b""]), db=nodes)
    for root in _arena_roots(txn, dbs):
        seq = 0
        todo = [root]
        while todo:
            node = todo.pop(0)
            for name, value in records.children(txn, nodes, node):
                if value[8]:
                    seq += 1
                    value[records.SEQ] = seq
                    txn.put(_U64.pack(node) + name, msgpack.packb(value), db=nodes)
                    txn.put(_U64.pack(root) + _U64.pack(seq), _U64.pack(value[0]), db=dbs[b"sequence"])
                todo.append(value[0])
        txn.put(b"seq:" + _U64.pack(root), _U64.pack(seq), db=dbs[b"meta"])

    def kind_at(root: int, path: bytes) -> int:
        node, value = root, None
        for name in path.split(b"/"):
            raw = txn.get(_U64.pack(node) + name, db=nodes)
            if raw is None:
                return 0
            value = records.unpack(raw)
            node = value[0]
        return int(value[1]) if value is not None else 0

    db = dbs[b"history"]
    for key, raw in list(txn.cursor(db=db)):
        root = _U64.unpack(bytes(key[:8]))[0]
        txn.put(key, history.migrate_value(raw, lambda path, root=root: kind_at(root, path)), db=db)


def _marks(txn: Any, dbs: dict[bytes, Any]) -> None:
    """5 -> 6: nothing to rewrite (an entry without a mark reads as marked 0; no key for
    acknowledgements or pruning reads as none yet); older code must not read the new entries."""


# from-version -> function upgrading a write transaction by one version
_MIGRATIONS: dict[int, Callable[[Any, dict[bytes, Any]], None]] = {
    1: _add_index,
    2: _keep_counts,
    3: _index_chunks,
    4: _views,
    5: _marks,
}


class Store:
    """An open LMDB environment with its named databases."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock_fd = _lock(data_dir)
        try:
            self.env = lmdb.open(
                str(data_dir / "store"),
                map_size=MAP_SIZE,
                max_dbs=16,
                subdir=True,
                mode=0o700,
            )
        except lmdb.Error as exc:
            os.close(self._lock_fd)
            raise StoreError(f"{data_dir}/store: cannot open the database: {exc}") from None
        try:
            self.dbs = {name: self.env.open_db(name) for name in DATABASES}
            self.schema_version, self.store_id, self.created_ns = self._check_schema()
        except BaseException as exc:
            self.close()  # an environment left open would make a later open in this process hang
            if isinstance(exc, lmdb.Error):
                raise StoreError(f"{data_dir}/store: cannot use the database: {exc}") from None
            raise

    def _check_schema(self) -> tuple[int, bytes, int]:
        meta = self.dbs[b"meta"]
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"schema_version", db=meta)
            if raw is None:
                store_id = os.urandom(16)
                created = time.time_ns()
                txn.put(b"schema_version", _U32.pack(SCHEMA_VERSION), db=meta)
                txn.put(b"store_id", store_id, db=meta)
                txn.put(b"created_ns", _U64.pack(created), db=meta)
                log.info("created store %s in %s", store_id.hex(), self.data_dir)
                return SCHEMA_VERSION, store_id, created
            version = _U32.unpack(raw)[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.data_dir}: written by a newer realizefs (schema {version}; "
                    f"this version understands up to {SCHEMA_VERSION}); upgrade realizefs"
                )
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](txn, self.dbs)
                version += 1
                txn.put(b"schema_version", _U32.pack(version), db=meta)
                log.info("migrated store in %s to schema %d", self.data_dir, version)
            created = _U64.unpack(self._required(txn, b"created_ns"))[0]
            return version, self._required(txn, b"store_id"), created

    def _required(self, txn: Any, key: bytes) -> bytes:
        value = txn.get(key, db=self.dbs[b"meta"])
        if value is None:
            raise StoreError(f"{self.data_dir}/store: damaged, meta key {key.decode()} is missing")
        return bytes(value)

    def close(self) -> None:
        self.env.close()
        os.close(self._lock_fd)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _lock(data_dir: Path) -> int:
    path = data_dir / "lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreError(f"{data_dir}: in use by another realizefs (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
