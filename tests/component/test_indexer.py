"""The indexer against a real backing tree and a real LMDB store.

Time is the test's: the indexer's monotonic clock is trio's `MockClock` and its
wall clock follows that clock from a fixed start, so a file "rests" because the
test moves time or sets the file's mtime, never because the machine is slow or
fast. With ``autojump`` the clock jumps to the indexer's next wake-up as soon as
every task waits; the tests then wait (with a real-time bound) for events, and
poll from a worker thread so that their polling sets no deadline the clock could
jump to. Without it the clock moves only when the test says so.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from blake3 import blake3

from realizefs.errors import AccessDenied
from realizefs.real.backing import Backing
from realizefs.real.hashing import ChangedWhileHashingError, Content, hash_fd
from realizefs.real.indexer import CLOSED_QUIET, MAX_BACKOFF, Indexer, parts
from realizefs.real.watcher import Change
from realizefs.store.index import KIND_DELETED, KIND_DIR, KIND_FILE, KIND_LINK, Counts, Index, Record
from realizefs.store.schema import Store
from tests.index_model import Node, replay

OLD = 1_000_000_000_000_000_000  # an mtime (2001) long rested
WALL_START = 2_000_000_000_000_000_000  # the wall clock at mock time 0 (2033): files written now have rested


class Clocks:
    """The indexer's two clocks, both driven by one `MockClock`."""

    def __init__(self, autojump: bool = True) -> None:
        self.mock = trio.testing.MockClock(autojump_threshold=0 if autojump else math.inf)

    def wall(self) -> int:
        return WALL_START + round(self.mock.current_time() * 1e9)

    def run(self, scenario: Callable[[], object]) -> None:
        trio.run(scenario, clock=self.mock)  # type: ignore[arg-type]


async def until(condition: Callable[[], object], what: str = "the condition", timeout: float = 60) -> None:
    """Wait for *condition*, polling from a worker thread; fail after *timeout* real seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await trio.to_thread.run_sync(time.sleep, 0.002)


@asynccontextmanager
async def running(indexer: Indexer) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(indexer.run)
        yield
        nursery.cancel_scope.cancel()


def settled(indexer: Indexer) -> Callable[[], bool]:
    return lambda: indexer.scanned("a") and indexer.counts("a").pending == 0


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "real"
    (root / "d" / "e").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "d" / "e" / "deep").write_bytes(b"deep" * 1000)
    (root / "empty").write_bytes(b"")
    os.symlink("a.txt", root / "link")
    os.mkfifo(root / "fifo")
    for path in (root / "a.txt", root / "d" / "e" / "deep", root / "empty"):
        os.utime(path, ns=(OLD, OLD))
    return root


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    (tmp_path / "data").mkdir()
    with Store(tmp_path / "data") as s:
        yield s


class CountingHasher:
    def __init__(self, clocks: Clocks | None = None, fail: list[BaseException] | None = None) -> None:
        self.calls = 0
        self.fail = fail or []
        self.clocks = clocks
        self.times: list[float] = []  # the mock-clock time of each call (with *clocks*)

    def __call__(self, fd: int, prefix: int | None = None) -> Content:
        self.calls += 1
        if self.clocks is not None:
            self.times.append(self.clocks.mock.current_time())
        if self.fail:
            raise self.fail.pop(0)
        return hash_fd(fd, prefix)


def make(
    store: Store,
    clocks: Clocks,
    backing: Backing,
    hasher: CountingHasher | None = None,
    rest: float = 1.0,
    index: Index | None = None,
) -> Indexer:
    indexer = Indexer(
        index or Index(store, b"me-peer!"),
        rest,
        clock=trio.current_time,
        hasher=hasher or CountingHasher(),
        wall=clocks.wall,
    )
    indexer.set_arenas({"a": backing})
    return indexer


def history_ops(indexer: Indexer) -> list[tuple[str, bytes]]:
    return [(e.op, e.path) for e in indexer.history("a", 100)]


def test_the_startup_walk_indexes_everything_and_hashes_once(store: Store, tree: Path) -> None:
    clocks = Clocks()
    hasher = CountingHasher()

    async def start(indexer: Indexer, condition: Callable[[], object]) -> None:
        async with running(indexer):
            await until(condition)

    indexer = make(store, clocks, Backing(tree), hasher)
    clocks.run(lambda: start(indexer, settled(indexer)))
    assert indexer.counts("a") == Counts(files=3, bytes=4005, directories=2, links=1, pending=0)
    assert indexer.hash_of("a", b"a.txt") == blake3(b"alpha").digest()
    assert indexer.hash_of("a", b"d/e/deep") == blake3(b"deep" * 1000).digest()
    assert indexer.hash_of("a", b"fifo") is None and indexer.hash_of("a", b"d") is None
    root = indexer.index.arena_root("a")
    link = indexer.index.get(root, parts(b"link"))
    assert link is not None and link.kind == KIND_LINK and link.target == b"a.txt"
    assert hasher.calls == 3
    # a restart: nothing changed, nothing is read again
    again = make(store, clocks, Backing(tree), hasher)
    clocks.run(lambda: start(again, settled(again)))
    assert hasher.calls == 3
    # changes made while it was down
    (tree / "a.txt").write_bytes(b"alpha, longer")
    os.utime(tree / "a.txt", ns=(OLD, OLD + 1))
    os.unlink(tree / "d" / "e" / "deep")
    third = make(store, clocks, Backing(tree), hasher)
    clocks.run(
        lambda: start(third, lambda: third.hash_of("a", b"a.txt") == blake3(b"alpha, longer").digest())
    )
    assert third.index.get(root, parts(b"d/e/deep")) is None
    assert hasher.calls == 4


def test_a_file_is_hashed_once_it_has_rested(store: Store, tree: Path) -> None:
    """Written to every half rest period it is never hashed; once left alone, it is.

    The clock moves only when the test moves it, and the test looks after each
    look the indexer made: the assertions hold whatever the machine's speed."""
    clocks = Clocks(autojump=False)
    rest = 1.0
    hasher = CountingHasher()
    indexer = make(store, clocks, Backing(tree), hasher, rest)
    log = tree / "log"
    root = indexer.index.arena_root("a")

    def looked_at_last_write() -> bool:  # the pending record shows what was written last
        record = indexer.index.get(root, [b"log"])
        return record is not None and record.size == log.stat().st_size

    def write(i: int) -> None:
        with open(log, "ab") as f:
            f.write(b"line %d\n" % i)
        os.utime(log, ns=(clocks.wall(), clocks.wall()))  # just written, by the wall clock too
        indexer.changed("a", [Change(0, b"", b"log", 0x2)])

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            calls = hasher.calls
            write(0)
            await until(looked_at_last_write, "the first look")  # due at once
            for i in range(1, 9):
                clocks.mock.jump(rest / 2)
                if i % 2 == 0:  # a look was due: it saw the writes since the last one
                    await until(looked_at_last_write, f"the look at {trio.current_time()}")
                    assert indexer.hash_of("a", b"log") is None
                    assert hasher.calls == calls
                write(i)
            clocks.mock.jump(rest)  # left alone for a whole rest period: hashed
            content = log.read_bytes()
            await until(lambda: indexer.hash_of("a", b"log") == blake3(content).digest(), "the hash")
            assert hasher.calls == calls + 1
            # a file whose mtime is a rest period old is hashed at its first look
            (tree / "old").write_bytes(b"written a while ago")
            old = clocks.wall() - round(rest * 1e9)
            os.utime(tree / "old", ns=(old, old))
            indexer.changed("a", [Change(0, b"", b"old", 0x8)])
            await until(lambda: indexer.hash_of("a", b"old") == blake3(b"written a while ago").digest())

    clocks.run(scenario)


def test_a_file_its_writer_closes_is_hashed_once_quiet_for_a_moment(store: Store, tree: Path) -> None:
    """A logger that opens, appends and closes twice a `CLOSED_QUIET` is looked at once per
    `CLOSED_QUIET` (its size shows), never hashed while it writes, and hashed once, a
    moment after it stops: not a rest period (an hour here) later."""
    clocks = Clocks(autojump=False)
    rest = 3600.0
    hasher = CountingHasher()
    indexer = make(store, clocks, Backing(tree), hasher, rest)
    root = indexer.index.arena_root("a")
    log = tree / "log"

    def indexed_size() -> int | None:
        record = indexer.index.get(root, [b"log"])
        return None if record is None else record.size

    def append(i: int) -> None:
        with open(log, "ab") as f:
            f.write(b"line %d\n" % i)
        os.utime(log, ns=(clocks.wall(), clocks.wall()))
        indexer.changed("a", [Change(0, b"", b"log", 0x2), Change(0, b"", b"log", 0x8)])  # MODIFY, CLOSE

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            calls = hasher.calls
            append(0)
            await until(lambda: indexed_size() == 7, "the first look, at once")
            for i in range(1, 8):
                clocks.mock.jump(CLOSED_QUIET / 2)
                append(i)
                if i % 2 == 0:  # a look was due: it shows what was written
                    await until(lambda: indexed_size() == log.stat().st_size, f"the look at {i}")
                assert hasher.calls == calls and indexer.hash_of("a", b"log") is None
            clocks.mock.jump(CLOSED_QUIET)
            content = log.read_bytes()
            await until(lambda: indexer.hash_of("a", b"log") == blake3(content).digest(), "the hash")
            assert hasher.calls == calls + 1

    clocks.run(scenario)


def test_renames_move_the_record_without_reading_again(store: Store, tree: Path) -> None:
    clocks = Clocks()
    hasher = CountingHasher()
    indexer = make(store, clocks, Backing(tree), hasher)
    root = indexer.index.arena_root("a")

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            calls = hasher.calls
            os.rename(tree / "d", tree / "moved")
            indexer.changed("a", [Change(0, b"", b"moved", 0x80, moved_from=b"d")])
            await until(lambda: indexer.hash_of("a", b"moved/e/deep") is not None)
            await until(lambda: indexer.busy == 0, "both paths looked at again")
            assert indexer.index.get(root, parts(b"d")) is None
            record = indexer.index.get(root, parts(b"moved"))
            assert record is not None and record.kind == KIND_DIR
            assert hasher.calls == calls

    clocks.run(scenario)


@pytest.mark.expect_log(r": cannot read to index it: ")
def test_unreadable_and_changing_files(store: Store, tree: Path) -> None:
    clocks = Clocks(autojump=False)
    rest = 1.0
    hasher = CountingHasher(fail=[PermissionError(13, "denied"), ChangedWhileHashingError("moving")])
    indexer = make(store, clocks, Backing(tree), hasher, rest)

    async def scenario() -> None:
        async with running(indexer):
            # the three files are read in one round: one unreadable, one changing, one hashed
            await until(lambda: len(indexer.stats.unreadable) == 1 and indexer.counts("a").pending == 2)
            assert indexer.stats.hashed == 1
            [(arena, rel)] = indexer.stats.unreadable  # reported, still indexed (pending), not deleted
            record = indexer.index.get(indexer.index.arena_root(arena), parts(rel))
            assert record is not None and record.pending
            # the file that changed while read is read again a rest period later and gets its hash
            clocks.mock.jump(rest)
            await until(lambda: indexer.counts("a").pending == 1)
            assert indexer.stats.hashed == 2 and indexer.counts("a").files == 3
            assert hasher.calls == 4

    clocks.run(scenario)


def test_the_daemons_own_changes_are_indexed_without_history(store: Store, tree: Path) -> None:
    clocks = Clocks()
    indexer = make(store, clocks, Backing(tree))
    root = indexer.index.arena_root("a")

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            before = history_ops(indexer)
            # "realize" a file: written by the daemon, announced before the watcher reports it
            (tree / "realized").write_bytes(b"from a peer")
            indexer.expect("a", b"realized", os.lstat(tree / "realized"))
            indexer.changed("a", [Change(0, b"", b"realized", 0x100)])
            # "apply a peer's rename" (the daemon records the paths itself) and "unrealize"
            indexer.expect("a", b"a.txt", None)
            indexer.expect("a", b"renamed.txt", os.lstat(tree / "a.txt"))
            os.rename(tree / "a.txt", tree / "renamed.txt")
            indexer.changed("a", [Change(0, b"", b"renamed.txt", 0x80, moved_from=b"a.txt")])
            os.unlink(tree / "empty")
            indexer.expect("a", b"empty", None)
            indexer.changed("a", [Change(0, b"", b"empty", 0x200)])
            await until(lambda: indexer.hash_of("a", b"realized") == blake3(b"from a peer").digest())
            await until(lambda: indexer.index.get(root, [b"empty"]) is None)
            await until(lambda: indexer.busy == 0)
            assert indexer.hash_of("a", b"renamed.txt") == blake3(b"alpha").digest()
            assert history_ops(indexer) == before  # none of it is a local edit
            # a user's change after the daemon's is recorded as usual
            (tree / "realized").write_bytes(b"the user edited it")
            os.utime(tree / "realized", ns=(OLD, OLD))
            indexer.changed("a", [Change(0, b"", b"realized", 0x8)])
            await until(lambda: len(history_ops(indexer)) > len(before))
            assert history_ops(indexer)[-1] == ("overwrite", b"realized")

    clocks.run(scenario)


def test_an_expected_change_outlives_a_look_made_before_it(store: Store, tree: Path) -> None:
    """The daemon tells the indexer before it acts: a look in between (the path not there yet,
    or still there) must not use the expectation up (it did, and the change was history)."""
    clocks = Clocks()
    indexer = make(store, clocks, Backing(tree))

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            before = history_ops(indexer)
            staged = tree / ".realize-tmp"  # never indexed; the same filesystem
            staged.mkdir()
            (staged / "x").write_bytes(b"placed by the daemon")
            indexer.expect("a", b"placed", os.lstat(staged / "x"))
            indexer.expect("a", b"a.txt", None)
            indexer.changed("a", [Change(0, b"", b"placed", 0x100), Change(0, b"", b"a.txt", 0x2)])
            await until(lambda: indexer.busy == 0)  # looked at: not there yet, still there
            os.rename(staged / "x", tree / "placed")
            os.unlink(tree / "a.txt")
            indexer.changed("a", [Change(0, b"", b"placed", 0x80), Change(0, b"", b"a.txt", 0x200)])
            await until(lambda: indexer.hash_of("a", b"placed") == blake3(b"placed by the daemon").digest())
            await until(lambda: indexer.index.get(indexer.index.arena_root("a"), [b"a.txt"]) is None)
            await until(lambda: indexer.busy == 0)
            assert history_ops(indexer) == before  # neither is a local change

    clocks.run(scenario)


def test_awkward_names_and_files(store: Store, tree: Path) -> None:
    odd = [b"caf\xe9-latin1", b"new\nline", b"x" * 255, b" leading space", b"-dash", b"\xff\xfe"]
    for name in odd:
        (tree / os.fsdecode(name)).write_bytes(name)
    deep = tree
    for _ in range(12):  # a path of about 3 KiB
        deep = deep / ("d" * 250)
    deep.mkdir(parents=True)
    (deep / "f").write_bytes(b"deep")
    sparse = tree / "sparse"
    with open(sparse, "wb") as f:
        f.truncate(10 << 30)  # 10 GiB of holes: read, but no disk used
    (tree / "unreadable-dir").mkdir(mode=0)  # root reads it anyway; must not break anything
    clocks = Clocks()
    indexer = make(store, clocks, Backing(tree))

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer), timeout=240)

    clocks.run(scenario)
    for name in odd:
        assert indexer.hash_of("a", name) == blake3(name).digest(), name
    assert indexer.hash_of("a", os.fsencode(deep.relative_to(tree)) + b"/f") == blake3(b"deep").digest()
    content = indexer.index.get(indexer.index.arena_root("a"), [b"sparse"])
    assert content is not None and content.size == 10 << 30 and content.hash is not None


def test_a_file_that_vanishes_before_it_is_read(store: Store, tree: Path) -> None:
    class Vanishing(CountingHasher):
        def __call__(self, fd: int, prefix: int | None = None) -> Content:
            if (tree / "a.txt").exists():  # gone between the look and the read: the fd still reads
                os.unlink(tree / "a.txt")
            return super().__call__(fd)

    clocks = Clocks()
    indexer = make(store, clocks, Backing(tree), Vanishing())
    root = indexer.index.arena_root("a")

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            indexer.changed("a", [Change(0, b"", b"a.txt", 0x200)])
            await until(lambda: indexer.index.get(root, [b"a.txt"]) is None)  # once gone for a rest

    clocks.run(scenario)


@pytest.mark.expect_log(r": cannot list: ")
def test_a_directory_that_cannot_be_listed_is_reported_not_emptied(
    store: Store, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Refusing(Backing):
        """A filesystem that refuses even root (NFS with root_squash, FUSE, ...)."""

        def listdir(self, rel: bytes) -> list[tuple[bytes, os.stat_result]]:
            if rel == b"d":
                raise AccessDenied("Permission denied", errno=13)
            return super().listdir(rel)

    clocks = Clocks()
    first = make(store, clocks, Backing(tree))
    again = make(store, clocks, Refusing(tree))

    async def scenario() -> None:
        async with running(first):
            await until(settled(first))
        async with running(again):
            await until(settled(again))

    clocks.run(scenario)
    assert "a/d: cannot list" in caplog.text
    assert again.hash_of("a", b"d/e/deep") == blake3(b"deep" * 1000).digest()  # still indexed
    assert again.counts("a").files == 3


# ---------------------------------------------------------------- failures are retried


class Failing(Backing):
    """A backing tree whose *method* fails on *rel* the first *times* times, noting when it was called."""

    def __init__(self, root: Path, clocks: Clocks, method: str, rel: bytes, times: int) -> None:
        super().__init__(root)
        self.clocks, self.method, self.rel, self.times = clocks, method, rel, times
        self.calls: list[float] = []  # mock-clock times of the calls on *rel*

    def _maybe_fail(self, method: str, rel: bytes) -> None:
        if method != self.method or rel != self.rel:
            return
        self.calls.append(self.clocks.mock.current_time())
        if len(self.calls) <= self.times:
            raise OSError(errno.EIO, "injected I/O error")

    def listdir(self, rel: bytes) -> list[tuple[bytes, os.stat_result]]:
        self._maybe_fail("listdir", rel)
        return super().listdir(rel)

    def stat(self, rel: bytes) -> os.stat_result:
        self._maybe_fail("stat", rel)
        return super().stat(rel)


def gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


@pytest.mark.expect_log(r"the walk of the tree failed; walking it again in")
def test_a_failed_walk_is_retried_after_a_backoff_that_doubles_up_to_a_limit(
    store: Store, tree: Path
) -> None:
    clocks = Clocks()
    backing = Failing(tree, clocks, "listdir", b"", times=11)
    indexer = make(store, clocks, backing)

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))

    clocks.run(scenario)
    assert MAX_BACKOFF == 300
    # one second (the rest, at least 1 s), doubled after each failure, at most MAX_BACKOFF
    assert gaps(backing.calls) == pytest.approx([1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300])
    assert indexer.counts("a") == Counts(files=3, bytes=4005, directories=2, links=1, pending=0)
    assert indexer.hash_of("a", b"d/e/deep") == blake3(b"deep" * 1000).digest()


@pytest.mark.expect_log(r"a/x: indexing failed")
def test_a_failed_look_is_retried_with_backoff_and_the_rest_of_its_batch_goes_on(
    store: Store, tree: Path
) -> None:
    clocks = Clocks()
    backing = Failing(tree, clocks, "stat", b"x", times=3)
    hasher = CountingHasher(clocks)
    indexer = make(store, clocks, backing, hasher)

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            (tree / "x").write_bytes(b"ex")
            (tree / "y").write_bytes(b"why")
            indexer.changed("a", [Change(0, b"", b"x", 0x8), Change(0, b"", b"y", 0x8)])
            await until(lambda: indexer.hash_of("a", b"y") == blake3(b"why").digest())
            await until(lambda: indexer.hash_of("a", b"x") == blake3(b"ex").digest())

    clocks.run(scenario)
    assert gaps(backing.calls) == pytest.approx([1, 2, 4])  # the looks at x: no sooner than the backoff
    assert hasher.times[-2] == backing.calls[0]  # y: read in the round whose look at x failed
    assert history_ops(indexer)[-2:] == [("create", b"y"), ("create", b"x")]


@pytest.mark.expect_log(r"an indexing round \(\d+ changes, \d+ paths\) failed")
def test_a_failed_round_drops_none_of_its_paths(store: Store, tree: Path) -> None:
    clocks = Clocks()
    hasher = CountingHasher()
    indexer = make(store, clocks, Backing(tree), hasher)
    names = [b"p%d" % i for i in range(5)]

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            calls = hasher.calls
            # not an OSError: the round that reads them fails; that round takes no change,
            # only paths that came due (they were just written: looked at now, read once rested)
            hasher.fail.append(RuntimeError("a bug while hashing"))
            for name in names:
                (tree / os.fsdecode(name)).write_bytes(name)
                os.utime(tree / os.fsdecode(name), ns=(clocks.wall(), clocks.wall()))
            indexer.changed("a", [Change(0, b"", name, 0x8) for name in names])
            hashes = {name: blake3(name).digest() for name in names}
            await until(lambda: all(indexer.hash_of("a", n) == h for n, h in hashes.items()))
            assert hasher.calls == calls + 1 + len(names)  # the failed read, then each once

    clocks.run(scenario)


class FullIndex(Index):
    """An index whose write of *rel*'s hashed content fails the first time (a full disk)."""

    def __init__(self, store: Store, me: bytes, rel: bytes) -> None:
        super().__init__(store, me)
        self.rel, self.failed = rel, False

    def put(
        self,
        root: int,
        path: Sequence[bytes],
        record: Record,
        chunks: Sequence[tuple[int, int, bytes]] | None = None,
        op: str | None = None,
        when: int | None = None,
    ) -> bool:
        if record.hash is not None and list(path) == parts(self.rel) and not self.failed:
            self.failed = True
            raise OSError(errno.ENOSPC, "injected: no space left")
        return super().put(root, path, record, chunks, op, when)


@pytest.mark.expect_log(r"a/x: indexing failed")
def test_a_failure_to_record_a_hash_queues_the_path_again(store: Store, tree: Path) -> None:
    clocks = Clocks()
    index = FullIndex(store, b"me-peer!", b"x")
    indexer = make(store, clocks, Backing(tree), index=index)

    async def scenario() -> None:
        async with running(indexer):
            await until(settled(indexer))
            (tree / "x").write_bytes(b"ex")
            indexer.changed("a", [Change(0, b"", b"x", 0x8)])
            await until(lambda: indexer.hash_of("a", b"x") == blake3(b"ex").digest())

    clocks.run(scenario)
    assert index.failed
    assert history_ops(indexer)[-1] == ("create", b"x")


@pytest.mark.expect_log("NOT INDEXED: the root")
def test_an_index_from_before_markers_is_marked_and_a_marked_one_without_it_is_left_alone(
    store: Store, tree: Path, tmp_path: Path
) -> None:
    clocks = Clocks()
    index = Index(store, b"me-peer!")
    root = index.arena_root("a")
    index.put(root, parts(b"gone.txt"), Record(KIND_FILE, 1, OLD, 0o644, blake3(b"x").digest()), op="create")
    indexer = make(store, clocks, Backing(tree), index=index)  # an index older than markers

    async def start(indexer: Indexer, condition: Callable[[], object]) -> None:
        async with running(indexer):
            await until(condition)

    clocks.run(lambda: start(indexer, settled(indexer)))
    assert (tree / ".realize-arena").is_file() and index.marked(root)
    assert index.get(root, parts(b".realize-arena")) is None  # not indexed
    assert history_ops(indexer)[1] == ("delete", b"gone.txt")  # trusted as before: it is gone
    entries = len(history_ops(indexer))
    # the disk is not there: an empty directory, no marker
    empty = tmp_path / "empty"
    empty.mkdir()
    unmarked = make(store, clocks, Backing(empty), index=index)
    clocks.run(lambda: start(unmarked, lambda: unmarked.unmarked("a")))
    assert len(history_ops(unmarked)) == entries and not unmarked.scanned("a")
    assert unmarked.counts("a").files == 3 and not (empty / ".realize-arena").exists()


def test_deletes_leave_tombstones_that_a_file_made_again_continues_from(store: Store, tree: Path) -> None:
    """A delete keeps the path's record as a tombstone with the delete's vector (a peer that
    missed the delete cannot bring the file back); a file made there again dominates it."""
    clocks = Clocks()

    def walk(until_: Callable[[Indexer], Callable[[], object]] = settled) -> Indexer:
        indexer = make(store, clocks, Backing(tree))

        async def start() -> None:
            async with running(indexer):
                await until(until_(indexer))

        clocks.run(start)
        return indexer

    indexer = walk()
    root = indexer.index.arena_root("a")
    me = b"me-peer!"
    made = indexer.index.get(root, parts(b"a.txt"))
    assert made is not None and made.vv == {me: 1}
    os.unlink(tree / "a.txt")
    os.unlink(tree / "d" / "e" / "deep")
    os.rmdir(tree / "d" / "e")
    os.rmdir(tree / "d")
    indexer = walk()
    for rel, kind in ((b"a.txt", KIND_FILE), (b"d/e/deep", KIND_FILE), (b"d/e", KIND_DIR), (b"d", KIND_DIR)):
        assert indexer.index.get(root, parts(rel)) is None  # not an entry any more
        stone = indexer.index.get(root, parts(rel), tombstones=True)
        assert stone is not None and stone.kind == KIND_DELETED and stone.vv == {me: 2}, rel
        assert [e.kind for e in indexer.history("a", 100) if e.path == rel][-1] == kind
    assert indexer.counts("a") == Counts(files=1, bytes=0, directories=0, links=1, pending=0)
    assert set(indexer.index.children(root, [])) == {b"empty", b"link"}
    (tree / "a.txt").write_bytes(b"alpha again")
    os.utime(tree / "a.txt", ns=(OLD, OLD))
    indexer = walk(lambda i: lambda: i.hash_of("a", b"a.txt") == blake3(b"alpha again").digest())
    again = indexer.index.get(root, parts(b"a.txt"))
    assert again is not None and again.vv == {me: 3}  # dominates the delete's {me: 2}
    assert indexer.history("a", 1)[0].vv == {me: 3} and indexer.history("a", 1)[0].origin == me


def test_a_new_file_renamed_over_a_removed_directory_keeps_the_history_whole(
    store: Store, tmp_path: Path
) -> None:
    """``rmdir d; mv new d`` seen in one round, *new* not hashed yet (not in the history):
    the rename moves *new*'s record over *d*'s, which the look at *d* has not removed yet.
    The directory's going must enter the history, or *d*'s create follows its mkdir with
    nothing between (a peer replaying the history sees a file made over a directory)."""
    root_dir = tmp_path / "real"
    (root_dir / "d").mkdir(parents=True)
    clocks = Clocks(autojump=False)
    rest = 1.0
    indexer = make(store, clocks, Backing(root_dir), rest=rest)
    root = indexer.index.arena_root("a")

    def pending(rel: bytes) -> bool:
        record = indexer.index.get(root, parts(rel))
        return record is not None and record.pending

    async def scenario() -> None:
        async with running(indexer):
            await until(lambda: indexer.scanned("a") and history_ops(indexer) == [("mkdir", b"d")])
            (root_dir / "new").write_bytes(b"new content")
            os.utime(root_dir / "new", ns=(clocks.wall(), clocks.wall()))  # just written: not rested
            indexer.changed("a", [Change(0, b"", b"new", 0x100)])
            await until(lambda: pending(b"new"), "the new file indexed, not hashed")
            os.rmdir(root_dir / "d")
            os.rename(root_dir / "new", root_dir / "d")
            indexer.changed(
                "a",
                [
                    Change(0, b"", b"d", 0x200 | 0x40000000),  # IN_DELETE | IN_ISDIR
                    Change(0, b"", b"new", 0x40),  # the move's two halves
                    Change(0, b"", b"d", 0x80, moved_from=b"new"),
                ],
            )
            await until(lambda: pending(b"d") and indexer.index.get(root, [b"new"]) is None, "the rename")
            clocks.mock.jump(rest)
            await until(lambda: indexer.hash_of("a", b"d") == blake3(b"new content").digest(), "d hashed")

    clocks.run(scenario)
    entries = indexer.history("a", 100)
    replayed, problems = replay(entries)
    assert not problems, problems
    assert [(e.op, e.path) for e in entries] == [("mkdir", b"d"), ("rmdir", b"d"), ("create", b"d")]
    mode = stat.S_IMODE(os.stat(root_dir / "d").st_mode)
    assert replayed == {b"d": Node("file", 11, mode, blake3(b"new content").digest())}
