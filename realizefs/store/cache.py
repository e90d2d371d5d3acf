"""The chunk cache: the Unreal's chunk bytes, content-addressed, in their own LMDB in ``data_dir/cache/``.

This module owns that environment, its layout and its schema version (the
index's environment in ``data_dir/store/``, `realizefs.store.schema`, is
separate, so a large cache write never holds the index's write lock). Keep
this docstring the reference.

Schema version 1:

``meta``
    - ``schema_version``: 4-byte big-endian unsigned int, the layout in force.
    - ``totals``: three 8-byte big-endian unsigned ints: chunks held, bytes
      charged to the quota (`charge` of each chunk), bytes of chunk content.
      Written in every write transaction that changes them.
``chunks``
    key: chunk hash (32-byte BLAKE3) -> the chunk's bytes. A chunk is stored
    once, whatever holds it.
``stamps``
    key: chunk hash -> its last access stamp (8 bytes) + its length (4 bytes),
    both big-endian. Exactly one entry per entry of ``chunks``.
``lru``
    key: access stamp (8 bytes, big-endian) -> chunk hash (32 bytes) + length
    (4 bytes): the chunks from least to most recently used. Stamps are a
    counter (not a clock), unique and increasing; the next one continues
    after the last key here when the cache opens.

A cache written by a newer schema is refused (never downgraded); removing
``data_dir/cache/`` is always safe, it holds nothing but copies.

**Durability**: opened with ``sync=True, metasync=False`` (LMDB's
``MDB_NOMETASYNC``): each commit flushes its data pages once and defers the
meta page to the next commit, which "maintains database integrity, but a
system crash may undo the last committed transaction". Losing the last
cached chunks is harmless (they are fetched again). ``MDB_NOSYNC`` is not
used: LMDB keeps integrity under it only if the filesystem preserves write
order, which ext4 does not promise for data pages, and a corrupt cache would
have to be dropped whole.

**Verification**: the caller verifies a chunk before `ChunkCache.put`; `get`
hashes it again before returning it (BLAKE3 of 64 KiB: 11-19 µs of a
18-24 µs get here, against a 60-70 µs FUSE round trip, and the kernel keeps what a read returned
in its page cache). LMDB has no checksums: bit rot or a damaged disk would
otherwise hand a reader (or a realize) wrong bytes that look right. A damaged
chunk is a miss, counted in `CacheStats.damaged`, logged once, and dropped at
the next write transaction.

**Room**: each chunk is charged `charge` bytes (whole overflow pages plus its
entries). `put` evicts the least recently used unpinned chunks until the
charged total fits under `room`: the quota ``max_size``, and the free-space
reserve ``min_free`` of the filesystem holding data_dir. An LMDB file never
shrinks (freed pages are reused by later writes), so evicting gives no space
back to the filesystem: the cache may fill the pages its file already has,
plus the filesystem's free space above ``min_free``, less ``margin`` (64 MiB by
default). The margin is the file's own slack: pages freed in a write
transaction are reusable only from the next one, and a chunk's overflow pages
must be contiguous, so the file runs ahead of the charged total by about one
batch plus fragmentation; keep `put_many` batches well under the margin. When
the filesystem is below its reserve the cache stops growing its file (evicting
would not help the filesystem; giving space back needs a compaction, not done
here). A put that cannot fit without a pinned chunk raises `CacheFull` and
changes nothing; the quota is never exceeded. ``max_size`` and ``min_free``
may be changed on an open cache (a reload): the next `flush` evicts what is
over, all but pinned chunks. A put under pressure walks the order from its
old end past the pinned chunks there.

**Concurrency**: one `ChunkCache` per data_dir (an ``flock`` on
``data_dir/cache/lock`` refuses a second). Every method may be called from any
thread: the trio thread and worker threads at once. `get`, `has`,
`cached_bytes`, `pin` and `stats` never write to LMDB: one short read
transaction, then a few dict operations under a `threading.Lock` (`get`
records the access in memory). `put`, `put_many` and `flush` are the writers
(serialised by a second lock; each is one short write transaction that
fsyncs: call them from worker threads). Each write transaction first applies
the accesses recorded since the last, so eviction sees the real order; an
owner calls `flush` every few seconds or when `pending` grows, and `close`
(once every user is done) flushes. A crash loses only the unflushed accesses. Pins are in memory,
refcounted: a chunk pinned stays until unpinned; `pin` waits while one of its
chunks is being evicted by a transaction already committing (rare: it was the
least recently used), so after `pin` returns, what `has` says stays true.
Lock-free membership tests on dicts and sets rely on the GIL (CPython 3.11).
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb
from blake3 import blake3

from realizefs.config import CacheConfig
from realizefs.errors import RealizeError, StoreError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DATABASES = (b"meta", b"chunks", b"stamps", b"lru")
MAP_SIZE = 1 << 40  # address space only; the file grows as data is written
HASH_BYTES = 32
MARGIN = 64 << 20
ENTRY_OVERHEAD = 256  # the chunk's leaf node and its entries in stamps and lru, in pages ~2/3 full
_PAGE_HEADER = 16

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_STAMP = struct.Struct(">QI")  # stamp, length
_TOTALS = struct.Struct(">QQQ")  # chunks, charged bytes, content bytes

Manifest = Iterable[tuple[int, int, bytes]]  # (offset, length, chunk hash)


class CacheFull(RealizeError):
    """The chunk does not fit without evicting a pinned chunk; nothing was changed."""


def charge(length: int, page_size: int) -> int:
    """The bytes of room a chunk of *length* bytes takes in an LMDB of *page_size* pages.

    A leaf node bigger than LMDB's ``nodemax`` moves its value to its own run of
    overflow pages (16-byte header, whole pages); a smaller one stays in a leaf."""
    nodemax = (((page_size - _PAGE_HEADER) // 2) & ~1) - 2
    if 8 + HASH_BYTES + length > nodemax:
        stored = -(-(_PAGE_HEADER + length) // page_size) * page_size
    else:
        stored = 8 + HASH_BYTES + length + 2
    return stored + ENTRY_OVERHEAD


def room(*, max_size: int, min_free: int, file_bytes: int, free: int, margin: int) -> int:
    """The most charged bytes the cache may hold: under the quota, and growing its file of
    *file_bytes* only into the filesystem's *free* bytes above *min_free*, less *margin*."""
    return min(max_size, file_bytes + max(0, free - min_free) - margin)


@dataclass(frozen=True, slots=True)
class CacheStats:
    used: int  # bytes charged to the quota
    content: int  # bytes of the chunks themselves
    chunks: int
    max_size: int
    min_free: int
    hits: int  # `get` found the chunk
    misses: int  # `get` did not (damaged chunks included)
    evictions: int  # chunks evicted since open
    damaged: int  # chunks found not matching their hash since open
    pinned: int  # distinct chunk hashes pinned now


class Pin:
    """Chunk hashes kept from eviction until `release` (or the end of a ``with`` block)."""

    __slots__ = ("_cache", "_keys")

    def __init__(self, cache: ChunkCache, keys: tuple[bytes, ...]) -> None:
        self._cache = cache
        self._keys: tuple[bytes, ...] | None = keys

    def release(self) -> None:
        """Unpin; a second call does nothing."""
        keys, self._keys = self._keys, None
        if keys is not None:
            self._cache._unpin(keys)

    def __enter__(self) -> Pin:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class ChunkCache:
    """The chunk cache of one data_dir; see the module docstring for its rules."""

    def __init__(
        self,
        data_dir: Path,
        *,
        max_size: int,
        min_free: int,
        free_space: Callable[[], int] | None = None,
        margin: int = MARGIN,
    ) -> None:
        self.path = data_dir / "cache"
        self.max_size = max_size
        self.min_free = min_free
        self.margin = margin
        self._free_space = free_space or (lambda: _free_bytes(data_dir))
        try:
            self.path.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create: {exc.strerror}") from None
        self._lock_fd = _flock(self.path / "lock")
        try:
            self._env = lmdb.open(
                str(self.path),
                map_size=MAP_SIZE,
                max_dbs=len(DATABASES),
                subdir=True,
                mode=0o700,
                sync=True,
                metasync=False,
                readahead=True,  # a chunk is a run of contiguous overflow pages: read it in one go
            )
        except lmdb.Error as exc:
            os.close(self._lock_fd)
            raise StoreError(f"{self.path}: cannot open the cache: {exc}") from None
        try:
            dbs = {name: self._env.open_db(name) for name in DATABASES}
            self._meta, self._chunks, self._stamps, self._lru = (dbs[name] for name in DATABASES)
            self.page_size: int = self._env.stat()["psize"]
            self._count, self._used, self._content, last = self._check_schema()
        except BaseException as exc:
            self._env.close()
            os.close(self._lock_fd)
            if isinstance(exc, lmdb.Error):
                raise StoreError(f"{self.path}: cannot use the cache: {exc}") from None
            raise
        self._lock = threading.Lock()  # in-memory state below
        self._evicted = threading.Condition(self._lock)  # notified when doomed chunks are gone
        self._write_lock = threading.Lock()  # one writer at a time, taken before _lock
        self._stamp = last  # the last stamp given
        self._pending: dict[bytes, int] = {}  # accesses not yet written: hash -> stamp
        self._pins: dict[bytes, int] = {}  # hash -> pin count
        self._doomed: set[bytes] = set()  # chosen for eviction by a transaction not yet committed
        self._damaged: set[bytes] = set()  # found not matching their hash, to drop
        self._hits = self._misses = self._evictions = self._damaged_seen = 0
        self._closed = False

    @classmethod
    def from_config(
        cls, data_dir: Path, config: CacheConfig, *, free_space: Callable[[], int] | None = None
    ) -> ChunkCache:
        """Open the cache with *config*'s sizes, percentages taken of the filesystem holding *data_dir*."""
        try:
            st = os.statvfs(data_dir)
        except OSError as exc:
            raise StoreError(f"{data_dir}: cannot read the filesystem's size: {exc.strerror}") from None
        total = st.f_blocks * st.f_frsize
        return cls(
            data_dir,
            max_size=config.max_size.resolve(total),
            min_free=config.min_free.resolve(total),
            free_space=free_space,
        )

    def _check_schema(self) -> tuple[int, int, int, int]:
        """Create or check the layout; the totals and the last stamp given."""
        with self._env.begin(write=True) as txn:
            raw = txn.get(b"schema_version", db=self._meta)
            if raw is None:
                txn.put(b"schema_version", _U32.pack(SCHEMA_VERSION), db=self._meta)
                txn.put(b"totals", _TOTALS.pack(0, 0, 0), db=self._meta)
                log.info("created the chunk cache in %s", self.path)
                return 0, 0, 0, 0
            version = _U32.unpack(raw)[0]
            if version != SCHEMA_VERSION:
                newer = "newer" if version > SCHEMA_VERSION else "unknown"
                raise StoreError(
                    f"{self.path}: written by a {newer} realizefs (cache schema {version}; this "
                    f"version understands {SCHEMA_VERSION}); upgrade realizefs, or remove "
                    f"{self.path} (it holds only copies of chunks)"
                )
            totals = txn.get(b"totals", db=self._meta)
            if totals is None:
                raise StoreError(f"{self.path}: damaged, meta key totals is missing")
            count, used, content = _TOTALS.unpack(totals)
            cursor = txn.cursor(db=self._lru)
            last = _U64.unpack(cursor.key())[0] if cursor.last() else 0
            return count, used, content, last

    # ------------------------------------------------------------------ readers

    def get(self, key: bytes) -> bytes | None:
        """The chunk of hash *key*, verified, or None; recorded as an access (in memory)."""
        data: bytes | None = None
        bad = False
        if key not in self._damaged:
            with self._env.begin(db=self._chunks, buffers=True) as txn:
                view = txn.get(key)
                if view is not None:
                    if blake3(view).digest() == key:
                        data = bytes(view)
                    else:
                        bad = True
        with self._lock:
            if data is None:
                self._misses += 1
                if bad and key not in self._damaged:
                    self._damaged.add(key)
                    self._damaged_seen += 1
                    log.warning("cached chunk %s is damaged (its bytes do not match); dropping it", key.hex())
            else:
                self._hits += 1
                self._stamp += 1
                self._pending[key] = self._stamp
        return data

    def has(self, key: bytes) -> bool:
        """Whether the chunk is cached (not verified; no access recorded)."""
        if key in self._damaged:
            return False
        with self._env.begin(db=self._stamps, buffers=True) as txn:
            return txn.get(key) is not None

    def cached_bytes(self, manifest: Manifest) -> int:
        """How many of a file's bytes are cached, for its manifest's (offset, length, hash) triples.

        One read transaction; about a microsecond per chunk (run big manifests off the loop)."""
        found: dict[bytes, bool] = {}
        total = 0
        with self._env.begin(db=self._stamps, buffers=True) as txn:
            for _offset, length, key in manifest:
                present = found.get(key)
                if present is None:
                    present = found[key] = key not in self._damaged and txn.get(key) is not None
                if present:
                    total += length
        return total

    def pin(self, keys: Iterable[bytes]) -> Pin:
        """Keep these chunks (cached now or later) from eviction until the handle is released."""
        pinned = tuple(keys)
        with self._evicted:
            while not self._doomed.isdisjoint(pinned):
                self._evicted.wait()
            for key in pinned:
                self._pins[key] = self._pins.get(key, 0) + 1
        return Pin(self, pinned)

    def _unpin(self, keys: tuple[bytes, ...]) -> None:
        with self._lock:
            for key in keys:
                count = self._pins[key] - 1
                if count:
                    self._pins[key] = count
                else:
                    del self._pins[key]

    @property
    def pending(self) -> int:
        """Accesses recorded in memory since the last write transaction."""
        return len(self._pending)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                used=self._used,
                content=self._content,
                chunks=self._count,
                max_size=self.max_size,
                min_free=self.min_free,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                damaged=self._damaged_seen,
                pinned=len(self._pins),
            )

    def room(self) -> int:
        """The most bytes the cache may hold now (`room` of the quota, reserve and free space)."""
        return room(
            max_size=self.max_size,
            min_free=self.min_free,
            file_bytes=self.file_bytes(),
            free=self._free_space(),
            margin=self.margin,
        )

    def file_bytes(self) -> int:
        """The size of the LMDB file: the pages it has, used or free."""
        return (int(self._env.info()["last_pgno"]) + 1) * self.page_size

    # ------------------------------------------------------------------ writers

    def put(self, key: bytes, data: bytes) -> bool:
        """Cache one verified chunk; False if it was cached already (it becomes the most recent).

        Raises `CacheFull`, changing nothing, if it cannot fit."""
        return self.put_many([(key, data)]) == 1

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Cache verified chunks in one write transaction; how many were not cached already.

        All or nothing: if they cannot all fit, raises `CacheFull` and changes nothing."""
        batch: dict[bytes, bytes] = {}
        for key, data in items:
            if len(key) != HASH_BYTES:
                raise ValueError(f"a chunk hash is {HASH_BYTES} bytes, got {len(key)}")
            batch.setdefault(key, data)
        with self._write_lock:
            return self._write(batch)

    def flush(self) -> None:
        """Write the accesses recorded in memory, drop damaged chunks, and evict what is over `room`
        (the quota may have been lowered): one write transaction, if there is anything to do."""
        with self._write_lock:
            if self._pending or self._damaged or self._used > self.room():
                self._write({})

    def _write(self, batch: dict[bytes, bytes]) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
            damaged = set(self._damaged)
            first_stamp = self._stamp + 1
            self._stamp += len(batch)
        doomed: list[bytes] = []
        count, used, content = self._count, self._used, self._content
        limit = self.room()
        try:
            with self._env.begin(write=True) as txn:
                for key, stamp in pending.items():
                    self._restamp(txn, key, stamp)
                for key in damaged:
                    length = self._remove(txn, key)
                    if length is not None:
                        count, used, content = count - 1, used - self._charge(length), content - length
                new: dict[bytes, bytes] = {}
                for stamp, (key, data) in enumerate(batch.items(), first_stamp):
                    if txn.get(key, db=self._stamps) is None:
                        new[key] = data
                    else:
                        self._restamp(txn, key, stamp)
                need = sum(self._charge(len(data)) for data in new.values())
                if used + need > limit:  # a flush trims what it can (after the quota was lowered)
                    self._choose_victims(txn, used + need - limit, batch, doomed, partial=not new)
                for key in doomed:
                    length = self._remove(txn, key)
                    assert length is not None
                    count, used, content = count - 1, used - self._charge(length), content - length
                for stamp, (key, data) in enumerate(batch.items(), first_stamp):
                    if key in new:
                        txn.put(key, data, db=self._chunks)
                        txn.put(key, _STAMP.pack(stamp, len(data)), db=self._stamps)
                        txn.put(_U64.pack(stamp), key + _U32.pack(len(data)), db=self._lru)
                        count, used, content = count + 1, used + self._charge(len(data)), content + len(data)
                txn.put(b"totals", _TOTALS.pack(count, used, content), db=self._meta)
        except BaseException as exc:
            with self._lock:
                for key, stamp in pending.items():  # the accesses are kept for the next write
                    self._pending.setdefault(key, stamp)
            if isinstance(exc, lmdb.Error):
                raise StoreError(f"{self.path}: cannot write to the cache: {exc}") from None
            raise
        finally:
            if doomed:
                with self._evicted:
                    self._doomed.difference_update(doomed)
                    self._evicted.notify_all()
        with self._lock:
            self._count, self._used, self._content = count, used, content
            self._evictions += len(doomed)
            self._damaged -= damaged
        if doomed:
            log.debug("evicted %d chunks from the cache for %d new", len(doomed), len(new))
        return len(new)

    def _choose_victims(
        self, txn: Any, excess: int, batch: dict[bytes, bytes], doomed: list[bytes], *, partial: bool
    ) -> None:
        """Fill *doomed* with the least recently used unpinned chunks freeing *excess* bytes, or
        raise (unless *partial*: then as many as are not pinned)."""
        freed = 0
        candidates: list[tuple[bytes, int]] = []
        cursor = txn.cursor(db=self._lru)
        more = cursor.first()
        while freed < excess:
            # gather candidates without the lock (a pin taken meanwhile is seen below)
            gathered = freed
            while more and gathered < excess:
                value = cursor.value()
                key = bytes(value[:HASH_BYTES])
                if key not in batch and key not in self._pins:
                    cost = self._charge(_U32.unpack(value[HASH_BYTES:])[0])
                    candidates.append((key, cost))
                    gathered += cost
                more = cursor.next()
            if not candidates:
                if partial:
                    return
                raise CacheFull(
                    f"no room for {len(batch)} chunks: {freed} of the {excess} bytes needed can be "
                    f"evicted, the rest of the cache is pinned (quota {self.max_size}, "
                    f"reserve {self.min_free} bytes)"
                )
            with self._lock:  # confirm: what is doomed here can no longer be pinned
                for key, cost in candidates:
                    if key not in self._pins:
                        self._doomed.add(key)
                        doomed.append(key)
                        freed += cost
            candidates.clear()

    def _charge(self, length: int) -> int:
        return charge(length, self.page_size)

    def _restamp(self, txn: Any, key: bytes, stamp: int) -> None:
        raw = txn.get(key, db=self._stamps)
        if raw is None:
            return  # evicted since it was read
        old, length = _STAMP.unpack(raw)
        if old >= stamp:
            return
        txn.delete(_U64.pack(old), db=self._lru)
        txn.put(_U64.pack(stamp), key + _U32.pack(length), db=self._lru)
        txn.put(key, _STAMP.pack(stamp, length), db=self._stamps)

    def _remove(self, txn: Any, key: bytes) -> int | None:
        """Delete a chunk and its entries; its length, or None if it was not there."""
        raw = txn.get(key, db=self._stamps)
        if raw is None:
            return None
        stamp, length = _STAMP.unpack(raw)
        txn.delete(key, db=self._chunks)
        txn.delete(key, db=self._stamps)
        txn.delete(_U64.pack(stamp), db=self._lru)
        return int(length)

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Flush the recorded accesses and close; a second call does nothing."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._env.close()
            os.close(self._lock_fd)

    def __enter__(self) -> ChunkCache:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _flock(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"{path.parent}: the chunk cache is in use by another opener") from None
    return fd
