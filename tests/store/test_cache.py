"""The chunk cache (`realizefs.store.cache`): content-addressed chunks, LRU eviction, quota, reserve, pins.

Real LMDB in temporary directories. The filesystem's free space is an injected
function where the reserve matters, so nothing depends on the real disk; LRU
order is a counter, so nothing depends on a clock. A hypothesis state machine
compares the cache with a plain model (a list in LRU order and pin counts)
under puts, batches, gets, pins, flushes and reopens.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest
from blake3 import blake3
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from realizefs.config import CacheConfig, Size
from realizefs.errors import StoreError
from realizefs.store.cache import SCHEMA_VERSION, CacheFull, ChunkCache, Pin, charge, room
from tests.support import examples

SIZE = 4000  # one overflow page of 4 KiB
PLENTY = 1 << 50


def chunk(i: int, size: int = SIZE) -> tuple[bytes, bytes]:
    """A chunk of *size* bytes, distinct for each *i*, with its hash."""
    data = (i.to_bytes(8, "big") * (size // 8 + 1))[:size]
    return blake3(data).digest(), data


Opener = Callable[..., ChunkCache]


@pytest.fixture
def open_cache(tmp_path: Path) -> Iterator[Opener]:
    """Open the cache in tmp_path (closing any earlier one of the test first), plenty of free space."""
    opened: list[ChunkCache] = []

    def opener(**kwargs: object) -> ChunkCache:
        for cache in opened:
            cache.close()
        options: dict[str, object] = {"min_free": 0, "free_space": lambda: PLENTY, "margin": 0}
        options.update(kwargs)
        cache = ChunkCache(tmp_path, **options)  # type: ignore[arg-type]
        opened.append(cache)
        return cache

    yield opener
    for cache in opened:
        cache.close()


def units(n: int, size: int = SIZE) -> int:
    """The room *n* chunks of *size* bytes take (4 KiB pages, as on every machine here)."""
    return n * charge(size, 4096)


def test_charge_counts_whole_overflow_pages_and_entries() -> None:
    assert charge(4000, 4096) == 4096 + 256
    assert charge(4096, 4096) == 2 * 4096 + 256  # the page header pushes it over
    assert charge(65536, 4096) == 17 * 4096 + 256
    assert charge(100, 4096) == 8 + 32 + 100 + 2 + 256  # small: inline in a leaf page


@pytest.mark.parametrize(
    ("max_size", "min_free", "file_bytes", "free", "margin", "expected"),
    [
        (1000, 0, 0, 10_000, 0, 1000),  # the quota decides
        (10_000, 500, 100, 1000, 0, 600),  # the file may grow into the free space above the reserve
        (10_000, 500, 100, 1000, 50, 550),  # less the margin
        (10_000, 2000, 800, 1000, 0, 800),  # below the reserve: no growth, the file's own pages only
        (10_000, 2000, 800, 1000, 100, 700),  # ... less the margin
        (500, 2000, 800, 1000, 0, 500),  # the quota still holds
    ],
)
def test_room(max_size: int, min_free: int, file_bytes: int, free: int, margin: int, expected: int) -> None:
    got = room(max_size=max_size, min_free=min_free, file_bytes=file_bytes, free=free, margin=margin)
    assert got == expected


def test_put_get_has(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(10))
    key, data = chunk(1)
    assert cache.get(key) is None
    assert not cache.has(key)
    assert cache.put(key, data)
    assert cache.has(key)
    assert cache.get(key) == data
    assert not cache.has(chunk(2)[0])
    with pytest.raises(ValueError, match="32 bytes"):
        cache.put(b"short", data)


def test_identical_chunks_are_stored_once(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(10))
    key, data = chunk(1)
    assert cache.put(key, data)
    assert not cache.put(key, data)
    other_key, other = chunk(2)
    assert cache.put_many([(key, data), (other_key, other), (other_key, other)]) == 1
    stats = cache.stats()
    assert (stats.chunks, stats.content, stats.used) == (2, 2 * SIZE, units(2))
    cache = open_cache(max_size=units(10))  # and so it stays
    stats = cache.stats()
    assert (stats.chunks, stats.content, stats.used) == (2, 2 * SIZE, units(2))


def test_eviction_takes_the_least_recently_used(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(3))
    a, b, c, d, e, f = (chunk(i) for i in range(6))
    for key, data in (a, b, c):
        cache.put(key, data)
    assert cache.get(a[0]) == a[1]  # order now b, c, a (the read is only in memory)
    cache.put(*d)  # evicts b
    assert [cache.has(x[0]) for x in (a, b, c, d)] == [True, False, True, True]
    assert not cache.put(*c)  # putting a cached chunk makes it the most recent: order a, d, c
    cache.put(*e)  # evicts a
    cache.put(*f)  # evicts d
    assert [cache.has(x[0]) for x in (a, c, d, e, f)] == [False, True, False, True, True]
    assert cache.stats().evictions == 3


def test_lru_order_is_flushed_in_batches_and_survives_a_reopen(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(3))
    a, b, c, d, e = (chunk(i) for i in range(5))
    cache.put_many([a, b, c])
    cache.get(a[0])
    cache.get(b[0])  # order c, a, b
    assert cache.pending == 2
    cache.flush()
    assert cache.pending == 0
    cache = open_cache(max_size=units(3))
    cache.put(*d)  # evicts c
    assert [cache.has(x[0]) for x in (a, b, c)] == [True, True, False]
    cache.get(a[0])  # order b, d, a; close flushes it
    cache = open_cache(max_size=units(3))
    cache.put(*e)  # evicts b
    assert [cache.has(x[0]) for x in (a, b, d, e)] == [True, False, True, True]


def test_a_lowered_quota_is_applied_by_the_next_flush(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(4))
    a, b, c, d = (chunk(i) for i in range(4))
    cache.put_many([a, b, c, d])
    cache.get(a[0])  # order b, c, d, a
    cache.max_size = units(2)  # a reload
    with cache.pin([b[0]]):
        cache.flush()  # evicts what is not pinned, oldest first
        assert [cache.has(x[0]) for x in (a, b, c, d)] == [True, True, False, False]
        assert cache.stats().used == units(2)
        cache.max_size = units(1)
        cache.flush()  # as much as it can: b is pinned
        assert [cache.has(x[0]) for x in (a, b)] == [False, True]
        assert cache.stats().used == units(1)
    cache.max_size = 0
    cache.flush()
    assert cache.stats().chunks == 0


def test_the_quota_holds_under_a_load_several_times_its_size(open_cache: Opener) -> None:
    quota = 4 << 20
    cache = open_cache(max_size=quota)
    rng = random.Random(7)
    written, i, kept = 0, 0, []
    while written < 5 * quota:
        key, data = chunk(i, rng.randrange(16 << 10, 256 << 10))
        i += 1
        cache.put(key, data)
        written += len(data)
        kept.append((key, len(data)))
        assert cache.stats().used <= quota
        if rng.random() < 0.3:
            wanted = kept[rng.randrange(len(kept))][0]
            got = cache.get(wanted)
            assert got is None or blake3(got).digest() == wanted
    stats = cache.stats()
    assert stats.evictions > 0
    present = [(key, length) for key, length in kept if cache.has(key)]
    assert stats.chunks == len(present)
    assert stats.used == sum(charge(length, cache.page_size) for _, length in present) <= quota
    assert stats.used > quota - charge(256 << 10, cache.page_size)  # full: the quota is used
    # the file runs ahead of the charged total by its free pages, about a few chunks here
    assert cache.file_bytes() <= 2 * quota


def test_pinned_chunks_are_never_evicted_and_a_put_is_refused_when_all_are(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(3))
    a, b, c, d, e, f = (chunk(i) for i in range(6))
    cache.put_many([a, b, c])
    pin_ab = cache.pin([a[0], b[0]])
    cache.put(*d)  # a and b are older, but pinned: c goes
    assert [cache.has(x[0]) for x in (a, b, c, d)] == [True, True, False, True]
    with cache.pin([e[0]]):  # a pin may come before the chunk
        cache.put(*e)  # evicts d
        assert [cache.has(x[0]) for x in (a, b, d, e)] == [True, True, False, True]
        before = cache.stats()
        with pytest.raises(CacheFull, match="pinned"):
            cache.put(*f)
        with pytest.raises(CacheFull):
            cache.put_many([f, d])
        assert cache.stats() == before  # a refused put changes nothing
        assert [cache.has(x[0]) for x in (a, b, e, f)] == [True, True, True, False]
    cache.put(*f)  # e is unpinned now, and the least recent
    assert [cache.has(x[0]) for x in (a, b, e, f)] == [True, True, False, True]
    pin_a = cache.pin([a[0]])  # pins count
    pin_ab.release()
    pin_ab.release()  # twice is once
    assert cache.stats().pinned == 1
    cache.put(*c)  # b is the least recent unpinned
    assert [cache.has(x[0]) for x in (a, b)] == [True, False]
    pin_a.release()
    assert cache.stats().pinned == 0


def test_a_chunk_bigger_than_the_quota_is_refused(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(1))
    with pytest.raises(CacheFull):
        cache.put(*chunk(1, 2 * SIZE))
    assert cache.stats().chunks == 0


def test_the_free_space_reserve(open_cache: Opener) -> None:
    """A filesystem of fixed size: the cache's file and other files share it."""
    total, reserve, margin = 16 << 20, 6 << 20, 256 << 10
    others = [8 << 20]

    def free() -> int:
        return total - others[0] - os.stat(cache.path / "data.mdb").st_size

    cache = open_cache(max_size=1 << 40, min_free=reserve, free_space=free, margin=margin)
    for i in range(700):  # about 2 MiB of room: the reserve stops the growth, not the quota
        cache.put(*chunk(i))
        assert free() >= reserve, f"the reserve is broken after {i + 1} puts"
    stats = cache.stats()
    assert stats.evictions > 0
    assert stats.used > (2 << 20) - 2 * margin  # and the cache has used the room it had
    # the disk is filling: the cache stops growing its file (within the margin: the first
    # transaction under the new rule evicts much and allocates some pages), and reuses its pages
    others[0] += 1 << 20
    assert free() < reserve
    size = cache.file_bytes()
    for i in range(700, 1000):
        cache.put(*chunk(i))  # evicts the oldest for each
        assert cache.file_bytes() <= size + margin
        if i == 800:
            size = cache.file_bytes()
    assert cache.file_bytes() == size  # steady: no page more in 200 puts
    assert cache.stats().evictions >= stats.evictions + 300
    # space is freed elsewhere: the cache grows again, within the reserve
    others[0] -= 2 << 20
    chunks = cache.stats().chunks
    for i in range(1000, 1300):
        cache.put(*chunk(i))
        assert free() >= reserve
    assert cache.stats().chunks > chunks
    # everything pinned and no room: refused
    others[0] += 4 << 20
    with cache.pin(key for key, _ in map(chunk, range(1300))), pytest.raises(CacheFull, match="no room"):
        cache.put(*chunk(1300))


def test_stats(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(2), min_free=123)
    a, b, c = (chunk(i) for i in range(3))
    cache.put_many([a, b])
    cache.get(a[0])
    cache.get(a[0])
    cache.get(c[0])
    with cache.pin([a[0], c[0]]):
        cache.put(*c)  # evicts b
        stats = cache.stats()
    assert stats.used == units(2)
    assert stats.content == 2 * SIZE
    assert stats.chunks == 2
    assert (stats.max_size, stats.min_free) == (units(2), 123)
    assert (stats.hits, stats.misses, stats.evictions, stats.damaged, stats.pinned) == (2, 1, 1, 0, 2)


def test_cached_bytes_of_a_manifest(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(10))
    a, b, c = (chunk(i, size) for i, size in ((1, 100), (2, 5000), (3, 7000)))
    cache.put_many([a, c])
    manifest = [(0, 100, a[0]), (100, 5000, b[0]), (5100, 7000, c[0]), (12100, 100, a[0])]
    assert cache.cached_bytes(manifest) == 100 + 7000 + 100
    assert cache.cached_bytes([]) == 0
    assert cache.stats().hits == 0  # asking is not reading


def test_from_config_resolves_percentages_against_the_filesystem(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    total = st.f_blocks * st.f_frsize
    config = CacheConfig(max_size=Size(percent=10), min_free=Size(bytes=1 << 20))
    with ChunkCache.from_config(tmp_path, config) as cache:
        assert cache.max_size == int(total * 10 / 100)
        assert cache.min_free == 1 << 20
        key, data = chunk(1)
        cache.put(key, data)  # the real filesystem's free space
        assert cache.get(key) == data


def test_a_newer_schema_is_refused(open_cache: Opener, tmp_path: Path) -> None:
    open_cache(max_size=units(1)).close()
    env = lmdb.open(str(tmp_path / "cache"), max_dbs=4)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", (SCHEMA_VERSION + 1).to_bytes(4, "big"), db=meta)
    env.close()
    with pytest.raises(StoreError, match=r"newer realizefs \(cache schema 2; .* understands 1\)"):
        open_cache(max_size=units(1))
    with pytest.raises(StoreError, match="newer"):  # the refusal left nothing open
        open_cache(max_size=units(1))


CRASH = """
import os, sys
from pathlib import Path
from blake3 import blake3
from realizefs.store.cache import ChunkCache

def chunk(i):
    data = (i.to_bytes(8, "big") * 501)[:4000]
    return blake3(data).digest(), data

cache = ChunkCache(Path(sys.argv[1]), max_size=int(sys.argv[2]), min_free=0, margin=0)
a, b, c = chunk(0), chunk(1), chunk(2)
cache.put_many([a, b, c])
cache.get(a[0])
cache.flush()  # order b, c, a on disk
cache.get(b[0])  # order c, a, b in memory only
os._exit(0)  # a crash: no close, no flush
"""


def test_a_crash_loses_only_the_unflushed_accesses(open_cache: Opener, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), str(units(3))], check=True, timeout=120)
    cache = open_cache(max_size=units(3))  # the dead process's lock went with it
    a, b, c, d = (chunk(i) for i in range(4))
    assert cache.stats().chunks == 3
    cache.put(*d)  # evicts b, the least recent as flushed (c had the last access lost)
    assert [cache.has(x[0]) for x in (a, b, c, d)] == [True, False, True, True]
    assert [cache.get(x[0]) for x in (a, c, d)] == [a[1], c[1], d[1]]


def test_a_second_opener_is_refused(open_cache: Opener, tmp_path: Path) -> None:
    open_cache(max_size=units(1))
    with pytest.raises(StoreError, match="in use"):
        ChunkCache(tmp_path, max_size=units(1), min_free=0)


@pytest.mark.expect_log(r"cached chunk [0-9a-f]{64} is damaged")
def test_a_chunk_damaged_on_disk_is_a_miss_and_is_dropped(open_cache: Opener) -> None:
    cache = open_cache(max_size=units(10))
    key, data = chunk(0x5EED, 20000)
    good_key, good = chunk(2)
    cache.put_many([(key, data), (good_key, good)])
    cache.close()
    path = cache.path / "data.mdb"
    raw = bytearray(path.read_bytes())
    where = raw.find(data[4000:4064])
    assert where > 0
    raw[where] ^= 1  # one bit flipped on the disk
    path.write_bytes(raw)
    cache = open_cache(max_size=units(10))
    assert cache.get(key) is None
    assert cache.get(key) is None  # logged once
    assert not cache.has(key)
    assert cache.cached_bytes([(0, len(data), key), (len(data), SIZE, good_key)]) == SIZE
    assert cache.get(good_key) == good
    stats = cache.stats()
    assert (stats.damaged, stats.misses, stats.hits, stats.chunks) == (1, 2, 1, 2)
    cache.flush()  # dropped at the next write
    assert cache.stats().chunks == 1
    assert cache.put(key, data)  # fetched again
    assert cache.get(key) == data


def test_pins_hold_while_another_thread_evicts(open_cache: Opener) -> None:
    """A worker thread puts under quota pressure while this one pins what it finds cached."""
    cache = open_cache(max_size=units(8))
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(1000, 1600):
                _put_or_full(cache, *chunk(i))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    held: list[bytes] = []
    pins: list[Pin] = []
    rounds = 0
    while not done.is_set() or rounds < 10:
        rounds += 1
        key, data = chunk(rounds % 50)
        if len(pins) < 6:
            pin = cache.pin([key])
            if cache.has(key) or _put_or_full(cache, key, data):
                held.append(key)
                pins.append(pin)
            else:
                pin.release()
        for kept in held:
            assert cache.has(kept), "a pinned chunk was evicted"
        assert cache.stats().used <= units(8)
        if len(pins) == 6 and rounds % 7 == 0:
            pins.pop(0).release()
            held.pop(0)
    thread.join()
    assert not errors


def test_a_pin_taken_while_a_put_chooses_its_victims_holds(open_cache: Opener) -> None:
    """The put gathers candidates without the lock; a pin taken meanwhile still saves its chunk.

    A pause is injected into the put between gathering and confirming (its first `_charge` of a
    candidate), in which this thread pins the oldest chunk."""
    cache = open_cache(max_size=units(3))
    a, b, c, d = (chunk(i) for i in range(4))
    cache.put_many([a, b, c])
    gathering, pinned = threading.Event(), threading.Event()
    real_charge = cache._charge

    def charge_pausing(length: int) -> int:
        if sys._getframe(1).f_code.co_name == "_choose_victims" and not gathering.is_set():
            gathering.set()
            pinned.wait()
        return real_charge(length)

    cache._charge = charge_pausing  # type: ignore[method-assign]
    writer = threading.Thread(target=cache.put, args=d)
    writer.start()
    gathering.wait()
    with cache.pin([a[0]]):
        pinned.set()
        writer.join()
        assert [cache.has(x[0]) for x in (a, b, c, d)] == [True, False, True, True]


def test_a_pin_waits_for_an_eviction_already_committing_its_chunk(open_cache: Opener) -> None:
    """After `pin` returns, what `has` says of its chunks holds: a chunk chosen for eviction by a
    transaction not yet committed is gone when the pin returns, not evicted under it later.

    The put is paused after choosing its victim (at its removal); the pin, in a thread, then
    either waits (this thread sees it enter the condition's wait) or returns."""
    cache = open_cache(max_size=units(3))
    a, b, c, d = (chunk(i) for i in range(4))
    cache.put_many([a, b, c])
    chosen, resume, progress = threading.Event(), threading.Event(), threading.Event()
    real_remove = cache._remove

    def remove_pausing(txn: object, key: bytes) -> int | None:
        if key == a[0]:
            chosen.set()
            resume.wait()
        return real_remove(txn, key)

    class Signalling(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            progress.set()
            return super().wait(timeout)

    cache._remove = remove_pausing  # type: ignore[method-assign]
    cache._evicted = Signalling(cache._lock)
    writer = threading.Thread(target=cache.put, args=d)
    writer.start()
    chosen.wait()
    seen: list[bool] = []

    def pin_and_look() -> None:
        with cache.pin([a[0]]):
            seen.append(cache.has(a[0]))
        progress.set()

    pinner = threading.Thread(target=pin_and_look)
    pinner.start()
    progress.wait()
    resume.set()
    writer.join()
    pinner.join()
    assert seen == [False]
    assert [cache.has(x[0]) for x in (a, b, c, d)] == [False, True, True, True]


def _put_or_full(cache: ChunkCache, key: bytes, data: bytes) -> bool:
    try:
        cache.put(key, data)
    except CacheFull:
        return False
    return True


# ---------------------------------------------------------------- the model

KEYS = [chunk(i, size) for i, size in enumerate([100, 4000, 4000, 9000, 9000, 20000, 3000, 4000])]
DATA = dict(KEYS)
QUOTA = charge(9000, 4096) + charge(20000, 4096) + charge(4000, 4096)
keys = st.sampled_from([key for key, _ in KEYS])


class CacheModel(RuleBasedStateMachine):
    """The cache against a list in LRU order (least recent first) and pin counts."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="realizefs-cache-"))
        self.cache = self.open()
        self.order: list[bytes] = []
        self.pins: Counter[bytes] = Counter()
        self.handles: list[tuple[Pin, list[bytes]]] = []

    def open(self) -> ChunkCache:
        return ChunkCache(self.dir, max_size=QUOTA, min_free=0, free_space=lambda: PLENTY, margin=0)

    def teardown(self) -> None:
        self.cache.close()
        shutil.rmtree(self.dir)

    def used(self, order: list[bytes]) -> int:
        return sum(charge(len(DATA[key]), 4096) for key in order)

    def model_put(self, batch: list[bytes]) -> tuple[list[bytes], int] | None:
        """The order after putting *batch*, and how many are new; None if refused."""
        batch = list(dict.fromkeys(batch))  # the batch ends the order, in its own order
        rest = [key for key in self.order if key not in batch]
        new = [key for key in batch if key not in self.order]
        victims = [key for key in rest if not self.pins[key]]
        while self.used(rest) + self.used(batch) > QUOTA:
            if not victims:
                return None
            rest.remove(victims.pop(0))
        return rest + batch, len(new)

    @rule(key=keys)
    def put(self, key: bytes) -> None:
        self.put_batch([key])

    @rule(batch=st.lists(keys, min_size=1, max_size=3))
    def put_many(self, batch: list[bytes]) -> None:
        self.put_batch(batch)

    def put_batch(self, batch: list[bytes]) -> None:
        expected = self.model_put(batch)
        if expected is None:
            with pytest.raises(CacheFull):
                self.cache.put_many((key, DATA[key]) for key in batch)
        else:
            assert self.cache.put_many((key, DATA[key]) for key in batch) == expected[1]
            self.order = expected[0]

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        got = self.cache.get(key)
        if key in self.order:
            assert got == DATA[key]
            self.order.remove(key)
            self.order.append(key)
        else:
            assert got is None

    @rule(chosen=st.lists(keys, max_size=3))
    def pin(self, chosen: list[bytes]) -> None:
        self.handles.append((self.cache.pin(chosen), chosen))
        self.pins.update(chosen)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        handle, chosen = self.handles.pop(data.draw(st.integers(0, len(self.handles) - 1)))
        handle.release()
        self.pins.subtract(chosen)

    @rule()
    def flush(self) -> None:
        self.cache.flush()

    @rule()
    def reopen(self) -> None:
        """A restart: pins go with the process, the order stays."""
        for handle, _ in self.handles:
            handle.release()
        self.handles.clear()
        self.pins.clear()
        self.cache.close()
        self.cache = self.open()

    @invariant()
    def agrees(self) -> None:
        for key, _ in KEYS:
            assert self.cache.has(key) == (key in self.order)
        stats = self.cache.stats()
        assert stats.chunks == len(self.order)
        assert stats.used == self.used(self.order) <= QUOTA
        assert stats.pinned == sum(1 for count in self.pins.values() if count)


CacheModel.TestCase.settings = settings(
    max_examples=examples(100), stateful_step_count=30, deadline=None, derandomize=True, database=None
)
test_cache_model = CacheModel.TestCase
