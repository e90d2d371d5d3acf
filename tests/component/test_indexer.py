"""The indexer against a real backing tree and a real LMDB store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from blake3 import blake3

from realizefs.errors import AccessDenied
from realizefs.real.backing import Backing
from realizefs.real.hashing import ChangedWhileHashingError, Content, hash_fd
from realizefs.real.indexer import Indexer, parts
from realizefs.real.watcher import Change
from realizefs.store.index import KIND_DIR, KIND_LINK, Counts, Index
from realizefs.store.schema import Store


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "real"
    (root / "d" / "e").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "d" / "e" / "deep").write_bytes(b"deep" * 1000)
    (root / "empty").write_bytes(b"")
    os.symlink("a.txt", root / "link")
    os.mkfifo(root / "fifo")
    old = 1_000_000_000_000_000_000  # long rested
    for path in (root / "a.txt", root / "d" / "e" / "deep", root / "empty"):
        os.utime(path, ns=(old, old))
    return root


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    (tmp_path / "data").mkdir()
    with Store(tmp_path / "data") as s:
        yield s


class CountingHasher:
    def __init__(self, fail: list[BaseException] | None = None) -> None:
        self.calls = 0
        self.fail = fail or []

    def __call__(self, fd: int) -> Content:
        self.calls += 1
        if self.fail:
            raise self.fail.pop(0)
        return hash_fd(fd)


async def settle(indexer: Indexer, condition: object, seconds: float = 10) -> None:
    """Run the indexer until *condition* holds (or fail after *seconds*)."""
    with trio.fail_after(seconds):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(indexer.run)
            while not condition():  # type: ignore[operator]
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


def make(store: Store, tree: Path, hasher: CountingHasher, rest: float = 0.05) -> Indexer:
    indexer = Indexer(Index(store, b"me-peer!"), rest, hasher=hasher)
    indexer.set_arenas({"a": Backing(tree)})
    return indexer


def test_the_startup_walk_indexes_everything_and_hashes_once(store: Store, tree: Path) -> None:
    hasher = CountingHasher()
    indexer = make(store, tree, hasher)
    trio.run(settle, indexer, lambda: indexer.counts("a").pending == 0 and indexer.scanned("a"))
    assert indexer.counts("a") == Counts(files=3, bytes=4005, directories=2, links=1, pending=0)
    assert indexer.hash_of("a", b"a.txt") == blake3(b"alpha").digest()
    assert indexer.hash_of("a", b"d/e/deep") == blake3(b"deep" * 1000).digest()
    assert indexer.hash_of("a", b"fifo") is None and indexer.hash_of("a", b"d") is None
    root = indexer.index.arena_root("a")
    link = indexer.index.get(root, parts(b"link"))
    assert link is not None and link.kind == KIND_LINK and link.target == b"a.txt"
    assert hasher.calls == 3
    # a restart: nothing changed, nothing is read again
    again = make(store, tree, hasher)
    trio.run(settle, again, lambda: again.scanned("a") and again.counts("a").pending == 0)
    assert hasher.calls == 3
    # changes made while it was down
    (tree / "a.txt").write_bytes(b"alpha, longer")
    os.utime(tree / "a.txt", ns=(10**18, 10**18 + 1))
    os.unlink(tree / "d" / "e" / "deep")
    third = make(store, tree, hasher)
    trio.run(settle, third, lambda: third.hash_of("a", b"a.txt") == blake3(b"alpha, longer").digest())
    assert third.index.get(root, parts(b"d/e/deep")) is None
    assert hasher.calls == 4


def test_a_file_is_hashed_once_it_has_rested(store: Store, tree: Path) -> None:
    hasher = CountingHasher()
    indexer = make(store, tree, hasher, rest=0.3)

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(indexer.run)
            with trio.fail_after(10):
                while not indexer.scanned("a") or indexer.counts("a").pending:
                    await trio.sleep(0.01)
                for i in range(5):  # an append loop: never rested while it goes on
                    with open(tree / "log", "ab") as f:
                        f.write(b"line %d\n" % i)
                    indexer.changed("a", [Change(0, b"", b"log", 0x2)])
                    await trio.sleep(0.1)
                    assert indexer.hash_of("a", b"log") is None
                content = (tree / "log").read_bytes()
                while indexer.hash_of("a", b"log") != blake3(content).digest():
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    trio.run(scenario)


def test_renames_move_the_record_without_reading_again(store: Store, tree: Path) -> None:
    hasher = CountingHasher()
    indexer = make(store, tree, hasher)
    trio.run(settle, indexer, lambda: indexer.scanned("a") and indexer.counts("a").pending == 0)
    calls = hasher.calls
    os.rename(tree / "d", tree / "moved")
    indexer.changed("a", [Change(0, b"", b"moved", 0x80, moved_from=b"d")])
    trio.run(settle, indexer, lambda: indexer.hash_of("a", b"moved/e/deep") is not None)
    assert indexer.index.get(indexer.index.arena_root("a"), parts(b"d")) is None
    record = indexer.index.get(indexer.index.arena_root("a"), parts(b"moved"))
    assert record is not None and record.kind == KIND_DIR
    assert hasher.calls == calls


def test_unreadable_and_changing_files(store: Store, tree: Path) -> None:
    hasher = CountingHasher([PermissionError(13, "denied"), ChangedWhileHashingError("moving")])
    indexer = make(store, tree, hasher)
    trio.run(settle, indexer, lambda: indexer.scanned("a") and hasher.calls >= 3)
    assert len(indexer.stats.unreadable) == 1  # reported, still indexed (pending), not deleted
    [(arena, rel)] = indexer.stats.unreadable
    record = indexer.index.get(indexer.index.arena_root(arena), parts(rel))
    assert record is not None and record.pending
    # the file that changed while read is read again and gets its hash
    trio.run(settle, indexer, lambda: indexer.counts("a").pending <= 1)
    assert indexer.counts("a").files == 3


def history_ops(indexer: Indexer) -> list[tuple[str, bytes]]:
    return [(e.op, e.path) for e in indexer.history("a", 100)]


def test_the_daemons_own_changes_are_indexed_without_history(store: Store, tree: Path) -> None:
    indexer = make(store, tree, CountingHasher())
    trio.run(settle, indexer, lambda: indexer.scanned("a") and indexer.counts("a").pending == 0)
    before = history_ops(indexer)
    # "realize" a file: written by the daemon, announced before the watcher reports it
    (tree / "realized").write_bytes(b"from a peer")
    indexer.expect("a", b"realized", os.lstat(tree / "realized"))
    indexer.changed("a", [Change(0, b"", b"realized", 0x100)])
    # "apply a peer's rename" and "unrealize"
    os.rename(tree / "a.txt", tree / "renamed.txt")
    indexer.expect("a", b"renamed.txt", os.lstat(tree / "renamed.txt"))
    indexer.changed("a", [Change(0, b"", b"renamed.txt", 0x80, moved_from=b"a.txt")])
    os.unlink(tree / "empty")
    indexer.expect("a", b"empty", None)
    indexer.changed("a", [Change(0, b"", b"empty", 0x200)])
    trio.run(settle, indexer, lambda: indexer.hash_of("a", b"realized") == blake3(b"from a peer").digest())
    trio.run(settle, indexer, lambda: indexer.index.get(indexer.index.arena_root("a"), [b"empty"]) is None)
    assert indexer.hash_of("a", b"renamed.txt") == blake3(b"alpha").digest()
    assert history_ops(indexer) == before  # none of it is a local edit
    # a user's change after the daemon's is recorded as usual
    (tree / "realized").write_bytes(b"the user edited it")
    os.utime(tree / "realized", ns=(10**18, 10**18))
    indexer.changed("a", [Change(0, b"", b"realized", 0x8)])
    trio.run(settle, indexer, lambda: len(history_ops(indexer)) > len(before))
    assert history_ops(indexer)[-1] == ("overwrite", b"realized")


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
    indexer = make(store, tree, CountingHasher())
    trio.run(settle, indexer, lambda: indexer.scanned("a") and indexer.counts("a").pending == 0, 120)
    for name in odd:
        assert indexer.hash_of("a", name) == blake3(name).digest(), name
    assert indexer.hash_of("a", os.fsencode(deep.relative_to(tree)) + b"/f") == blake3(b"deep").digest()
    content = indexer.index.get(indexer.index.arena_root("a"), [b"sparse"])
    assert content is not None and content.size == 10 << 30 and content.hash is not None


def test_a_file_that_vanishes_before_it_is_read(store: Store, tree: Path) -> None:
    class Vanishing(CountingHasher):
        def __call__(self, fd: int) -> Content:
            if (tree / "a.txt").exists():  # gone between the look and the read: the fd still reads
                os.unlink(tree / "a.txt")
            return super().__call__(fd)

    indexer = make(store, tree, Vanishing())
    trio.run(settle, indexer, lambda: indexer.scanned("a") and indexer.counts("a").pending == 0)
    indexer.changed("a", [Change(0, b"", b"a.txt", 0x200)])
    root = indexer.index.arena_root("a")
    trio.run(settle, indexer, lambda: indexer.index.get(root, [b"a.txt"]) is None)


def test_a_directory_that_cannot_be_listed_is_reported_not_emptied(
    store: Store, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    indexer = make(store, tree, CountingHasher())
    trio.run(settle, indexer, lambda: indexer.scanned("a") and indexer.counts("a").pending == 0)

    class Refusing(Backing):
        """A filesystem that refuses even root (NFS with root_squash, FUSE, ...)."""

        def listdir(self, rel: bytes) -> list[tuple[bytes, os.stat_result]]:
            if rel == b"d":
                raise AccessDenied("Permission denied", errno=13)
            return super().listdir(rel)

    again = make(store, tree, CountingHasher())
    again.set_arenas({"a": Refusing(tree)})
    trio.run(settle, again, lambda: again.scanned("a") and again.counts("a").pending == 0)
    assert "a/d: cannot list" in caplog.text
    assert again.hash_of("a", b"d/e/deep") == blake3(b"deep" * 1000).digest()  # still indexed
    assert again.counts("a").files == 3
