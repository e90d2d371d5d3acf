"""The kernel-cache task: it never leaves a worker thread inside libfuse behind it, and
loses no change on its way to the indexer."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import trio

from realizefs.config import ArenaConfig
from realizefs.ops.invalidate import KernelCacheSync
from realizefs.real.indexer import Indexer
from realizefs.real.watcher import Change, Watcher
from realizefs.store.index import Index
from realizefs.store.schema import Store
from realizefs.types import Mode
from realizefs.vfs.changes import Invalidation
from realizefs.vfs.inodes import ROOT_INODE
from realizefs.vfs.namespace import Namespace


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[tuple[Namespace, Watcher, Indexer, Path]]:
    root = tmp_path / "real"
    root.mkdir()
    (tmp_path / "data").mkdir()
    ns = Namespace([ArenaConfig("a", root, Mode.REAL)], [])
    watcher = Watcher()
    with Store(tmp_path / "data") as store:
        indexer = Indexer(Index(store, b"me-peer!"), 30.0)
        indexer.set_arenas({a.name: a.backing for a in ns.arenas})
        yield ns, watcher, indexer, root
    watcher.close()
    ns.close()


def test_cancelling_waits_for_the_invalidation_under_way(
    parts: tuple[Namespace, Watcher, Indexer, Path],
) -> None:
    ns, watcher, indexer, root = parts
    inside = threading.Event()  # the worker is in the (here: blocked) invalidation
    release = threading.Event()
    left_behind: list[bool] = []
    returned = threading.Event()  # `run` has returned

    def invalidate(todo: Invalidation) -> None:
        inside.set()
        release.wait(30)
        left_behind.append(returned.is_set())  # was `run` already gone while this ran?

    sync = KernelCacheSync(ns, watcher, indexer, invalidate=invalidate)
    sync.watch_arenas()
    (root / "f").write_text("one")
    ns.lookup(ns.lookup(ROOT_INODE, b"a").ino, b"f")  # the kernel holds it

    async def main() -> None:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.run)
                (root / "f").write_text("two")  # behind the kernel's back
                await trio.to_thread.run_sync(inside.wait)
                threading.Timer(0.5, release.set).start()
                nursery.cancel_scope.cancel()
            returned.set()

    trio.run(main)
    release.wait(30)
    assert left_behind == [False]


class Refusing(Indexer):
    """An indexer that cannot take the watcher's changes (a bug, say)."""

    def changed(self, arena: str, changes: Iterable[Change]) -> None:
        raise RuntimeError("injected: cannot take changes")


@pytest.mark.expect_log(r"a: the indexer could not take \d+ changes; it walks the arenas again")
def test_changes_the_indexer_cannot_take_make_it_walk_again(
    parts: tuple[Namespace, Watcher, Indexer, Path],
) -> None:
    ns, watcher, plain, root = parts
    indexer = Refusing(plain.index, 30.0)
    indexer.set_arenas({a.name: a.backing for a in ns.arenas})
    sync = KernelCacheSync(ns, watcher, indexer, invalidate=lambda todo: None)
    sync.watch_arenas()
    arena = indexer.index.arena_root("a")

    async def main() -> None:
        with trio.fail_after(30):
            await indexer.reconcile("a")
            assert indexer.scanned("a")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sync.run)
                nursery.start_soon(indexer.run)
                (root / "f").write_text("made behind the mount's back")
                while indexer.index.get(arena, [b"f"]) is None:  # found by the walk
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    trio.run(main)
