"""The watcher over real backing trees: moves whose two halves arrive in two reads.

The kernel queues a move's MOVED_FROM and MOVED_TO together, and a read can end
between them when its buffer fills. The tests make that split happen where they
choose: they read the real events (queued during the rename itself, so all there
when it returns) and hand them to the watcher in two parts, as two reads would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from inotify_simple import Event
from inotify_simple import flags as F  # noqa: N812

from realizefs.real.backing import Backing
from realizefs.real.watcher import Change, Watcher


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, Path]:
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    for root in (a, b, out):
        root.mkdir()
    (a / "x").write_bytes(b"x")
    (a / "d" / "e").mkdir(parents=True)
    (a / "d2" / "e").mkdir(parents=True)
    return a, b, out


@pytest.fixture
def watcher(roots: tuple[Path, Path, Path]) -> Iterator[Watcher]:
    w = Watcher()
    assert w.add_tree("A", Backing(roots[0]))
    assert w.add_tree("B", Backing(roots[1]))
    yield w
    w.close()


def read(watcher: Watcher) -> list[Event]:
    """What the kernel queued so far (the events of a call are queued before it returns)."""
    return list(watcher._inotify.read(timeout=0))


def split(events: list[Event], mask: int) -> tuple[list[Event], list[Event]]:
    """The events before the first one with *mask*, and the rest."""
    i = next(i for i, e in enumerate(events) if e.mask & mask)
    return events[:i], events[i:]


def reported(changes: list[Change] | None, tree: str, directory: bytes, name: bytes) -> bool:
    assert changes is not None
    return any((c.tree, c.directory, c.name) == (tree, directory, name) for c in changes)


def test_a_move_split_across_two_reads_is_paired(watcher: Watcher, roots: tuple[Path, Path, Path]) -> None:
    a = roots[0]
    os.rename(a / "x", a / "y")
    first, second = split(read(watcher), F.MOVED_TO)
    assert [c.moved_from for c in watcher._interpret(first) or []] == [None]
    assert [(c.name, c.moved_from) for c in watcher._interpret(second) or []] == [(b"y", b"x")]
    # a directory: paired too, and its watches follow it
    os.rename(a / "d", a / "m")
    first, second = split(read(watcher), F.MOVED_TO)
    watcher._interpret(first)
    assert [(c.name, c.moved_from) for c in watcher._interpret(second) or []] == [(b"m", b"d")]
    (a / "m" / "e" / "new").write_bytes(b"")
    assert reported(watcher._interpret(read(watcher)), "A", b"m/e", b"new")


def test_a_directory_moved_out_loses_only_the_watches_it_had(
    watcher: Watcher, roots: tuple[Path, Path, Path]
) -> None:
    a, _, out = roots
    os.rename(a / "d", out / "d")
    watcher._interpret(read(watcher))  # a MOVED_FROM alone: the MOVED_TO may be in the next read
    (a / "d").mkdir()  # a new directory of the same name, seen in the next read
    assert reported(watcher._interpret(read(watcher)), "A", b"", b"d")
    (a / "d" / "new").write_bytes(b"")  # the new one is watched
    (out / "d" / "e" / "gone").write_bytes(b"")  # the one that left is not
    changes = watcher._interpret(read(watcher))
    assert reported(changes, "A", b"d", b"new")
    assert changes is not None and not any(c.name == b"gone" for c in changes)


def test_a_directory_moved_into_the_other_arena_keeps_its_watches(
    watcher: Watcher, roots: tuple[Path, Path, Path]
) -> None:
    a, b, out = roots
    # straight from A to B, the two halves in two reads
    os.rename(a / "d", b / "d")
    first, second = split(read(watcher), F.MOVED_TO)
    watcher._interpret(first)
    assert reported(watcher._interpret(second), "B", b"", b"d")
    (b / "d" / "e" / "new").write_bytes(b"")
    assert reported(watcher._interpret(read(watcher)), "B", b"d/e", b"new")
    # out of A, and (in the next read) from outside into B: the first half is never paired
    os.rename(a / "d2", out / "d2")
    watcher._interpret(read(watcher))
    os.rename(out / "d2", b / "d2")
    assert reported(watcher._interpret(read(watcher)), "B", b"", b"d2")
    (b / "d2" / "e" / "new").write_bytes(b"")
    assert reported(watcher._interpret(read(watcher)), "B", b"d2/e", b"new")
