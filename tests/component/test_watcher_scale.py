"""A directory moved among many watched ones costs the watcher what its own subtree holds.

Speed is not measured: the watcher's tables are replaced by copies that count the
entries read from them (looked up, or passed while iterating), and the same move
is made in a tree of a few directories and in one of 20,000. A scan of all the
watches reads each of them; an index reads the same entries in both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from realizefs.real import watcher as module
from realizefs.real.backing import Backing
from realizefs.real.watcher import Watcher

OTHERS = 20_000


class Counting(dict[Any, Any]):
    """A dict that counts the entries read from it."""

    touched = 0

    def __getitem__(self, key: Any) -> Any:
        self.touched += 1
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.touched += 1
        return super().__contains__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self.touched += 1
        return super().get(key, default)

    def __iter__(self) -> Iterator[Any]:
        for key in super().__iter__():
            self.touched += 1
            yield key

    def keys(self) -> Any:
        return list(self)

    def values(self) -> Any:
        return [super(Counting, self).__getitem__(key) for key in self]

    def items(self) -> Any:
        return [(key, super(Counting, self).__getitem__(key)) for key in self]


def counted(obj: object) -> list[Counting]:
    """Replace every dict *obj* holds (and those of the watcher's own objects in it) by a counting copy."""
    found: list[Counting] = []
    for name, value in vars(obj).items():
        inner = value.values() if isinstance(value, dict) else [value]
        for item in inner:
            if type(item).__module__ == module.__name__:
                found += counted(item)
        if isinstance(value, dict):
            copy = Counting(value)
            setattr(obj, name, copy)
            found.append(copy)
    return found


def touched_by_a_move(root: Path) -> int:
    """Entries of the watcher's tables read while it takes the move of m (3 directories) to n."""
    (root / "m" / "a" / "b").mkdir(parents=True)
    w = Watcher()
    try:
        assert w.add_tree("t", Backing(root))
        os.rename(root / "m", root / "n")
        events = list(w._inotify.read(timeout=0))  # queued during the rename
        tables = counted(w)
        changes = w._interpret(events)
        touched = sum(t.touched for t in tables)
        assert changes is not None
        assert [(c.name, c.moved_from) for c in changes] == [(b"m", None), (b"n", b"m")]
        assert len(w._below("t", b"n")) == 3 and not w._below("t", b"m")  # the watches followed
        (root / "n" / "a" / "b" / "new").write_bytes(b"")
        assert any(c.directory == b"n/a/b" for c in w._interpret(list(w._inotify.read(timeout=0))) or [])
        return touched
    finally:
        w.close()


def test_a_directory_move_reads_no_watch_outside_its_subtree(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    for i in range(3):
        (small / f"d{i}").mkdir(parents=True)
    for i in range(OTHERS):
        (big / f"d{i // 100}" / f"e{i}").mkdir(parents=True)
    few = touched_by_a_move(small)
    assert few < 100  # a scan would read every watch: 20,204 in the big tree
    assert touched_by_a_move(big) == few
