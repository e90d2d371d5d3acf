"""The watcher's index of its watches by path, against a model that scans them all.

Watches are put (new, or found again elsewhere, perhaps in another tree), dropped,
moved with a directory (every watch below it renamed, as `Watcher._moved` does)
and dropped with a directory (as `Watcher._forget` does); after every step the
watches below each path agree with a scan of all of them, and the index holds
only watched paths and the paths leading to them.
"""

from __future__ import annotations

from collections.abc import Hashable

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from realizefs.real.watcher import _under, _Watches

trees = st.sampled_from(["A", "B"])
wds = st.integers(1, 8)
paths = st.lists(st.sampled_from([b"a", b"b", b"c"]), max_size=3).map(b"/".join)


def chain(path: bytes) -> set[bytes]:
    """*path* and every path above it, up to the root (b"")."""
    found = {path}
    while path:
        path = path.rpartition(b"/")[0]
        found.add(path)
    return found


class WatchIndex(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.watches = _Watches()
        self.model: dict[int, tuple[Hashable, bytes]] = {}

    def scan(self, tree: Hashable, top: bytes) -> list[int]:
        return sorted(wd for wd, (t, rel) in self.model.items() if t == tree and _under(rel, top))

    @rule(wd=wds, tree=trees, path=paths)
    def put(self, wd: int, tree: str, path: bytes) -> None:
        self.watches.put(wd, tree, path)
        self.model[wd] = (tree, path)

    @rule(wd=wds)
    def pop(self, wd: int) -> None:
        self.watches.pop(wd)
        self.model.pop(wd, None)

    @precondition(lambda self: self.model)
    @rule(tree=trees, old=paths, new=paths)
    def move(self, tree: str, old: bytes, new: bytes) -> None:
        if _under(new, old):
            return  # a directory is never moved into itself
        moving = self.scan(tree, old)
        for wd in self.watches.below(tree, old):
            self.watches.put(wd, tree, new + self.model[wd][1][len(old) :])
        for wd in moving:
            self.model[wd] = (tree, new + self.model[wd][1][len(old) :])

    @rule(tree=trees, top=paths)
    def drop_below(self, tree: str, top: bytes) -> None:
        for wd in self.watches.below(tree, top):
            self.watches.pop(wd)
        for wd in self.scan(tree, top):
            del self.model[wd]

    @invariant()
    def below_agrees_with_a_scan(self) -> None:
        assert {wd: self.watches.get(wd) for wd in self.watches} == self.model
        assert len(self.watches) == len(self.model)
        for tree in ("A", "B"):
            tops = {b"x", b"a/x"}.union(*(chain(rel) for t, rel in self.model.values() if t == tree))
            for top in tops:
                assert sorted(self.watches.below(tree, top)) == self.scan(tree, top), (tree, top)

    @invariant()
    def the_index_holds_only_watched_paths_and_their_ancestors(self) -> None:
        index = self.watches._trees
        assert set(index) == {tree for tree, _ in self.model.values()}  # no tree left without watches
        for tree, paths in index.items():
            watched = {rel for t, rel in self.model.values() if t == tree}
            assert set(paths.wds) == watched
            leading = set().union(*(chain(rel) for rel in watched))
            assert set(paths.kids) <= leading
            assert all(kids and set(kids) <= leading for kids in paths.kids.values())


test_the_watch_index_agrees_with_a_scan = WatchIndex.TestCase
