"""The walks the watcher's events ask for run in a worker thread, not on the event loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from realizefs.real.backing import Backing
from realizefs.real.watcher import Watcher

DIRS = 10_000


@pytest.fixture
def watcher() -> Iterator[Watcher]:
    w = Watcher()
    yield w
    w.close()


def test_a_tree_moved_in_is_walked_off_the_event_loop(tmp_path: Path, watcher: Watcher) -> None:
    """Moving in a tree of 10,000 directories: the walk that watches them costs the loop next to nothing."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    for i in range(DIRS):
        (outside / f"d{i // 100}" / f"e{i}").mkdir(parents=True)
    backing = Backing(root)
    watcher.add_tree("t", backing)

    async def main() -> float:
        outside.rename(root / "moved")  # one event: the tree must be walked to be watched
        started = time.thread_time()  # this thread's CPU: whatever else the machine does
        batch = await watcher.changes()
        spent = time.thread_time() - started
        assert batch is not None and [c.name for c in batch] == [b"moved"]
        return spent

    spent = trio.run(main)
    print(f"loop CPU for a 10,000-directory walk: {spent * 1000:.1f} ms")
    (root / "moved" / "d99" / "e9999" / "new").write_text("x")  # the deepest directory is watched
    batch = trio.run(watcher.changes)
    assert batch is not None and {(c.directory, c.name) for c in batch} == {(b"moved/d99/e9999", b"new")}
    assert spent < 0.05, f"{spent:.3f} s of the loop's CPU for the walk"
    backing.close()


QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")


def test_an_overflow_is_not_followed_by_another(tmp_path: Path) -> None:
    """Re-watching after lost events queues nothing: it must not overflow a small queue again, for ever."""
    root = tmp_path / "root"
    for i in range(300):
        (root / f"d{i}").mkdir(parents=True)
    before = QUEUE.read_text()
    QUEUE.write_text("64\n")
    try:
        watcher = Watcher()  # its queue holds 64 events
    finally:
        QUEUE.write_text(before)
    backing = Backing(root)
    try:
        watcher.add_tree("t", backing)
        for i in range(300):
            (root / f"d{i}" / "f").write_text("x")  # far more events than the queue holds
        assert trio.run(watcher.changes) is None  # lost: everything was watched anew
        left = watcher._inotify.read(timeout=0)
        assert not [e for e in left if e.mask & 0x4000], "the re-watch overflowed the queue again"
        (root / "d299" / "g").write_text("x")  # and every directory is still watched
        batch = trio.run(watcher.changes)
        assert batch is not None and (b"d299", b"g") in {(c.directory, c.name) for c in batch}
    finally:
        watcher.close()
        backing.close()
