"""History pruning through real daemons: what b acknowledged is pruned on a, a delete b missed
still reaches b when it comes back, and b, beyond the bound, resyncs from a full index."""

from __future__ import annotations

import os
import re
from pathlib import Path

from realizefs.peers.identity import load_or_create
from realizefs.store.index import KIND_DELETED, Index
from realizefs.store.pruning import KEEP
from realizefs.store.schema import Store
from tests.fuse.test_peers import connected
from tests.fuse.test_unreal import REST, household, listed
from tests.support import Daemon, wait_for

BOUND = 60


def pruned(d: Daemon) -> tuple[int, int]:
    """History entries and tombstones *d*'s pruner says it dropped so far."""
    found = re.findall(r"pruned (\d+) history entries, (\d+) tombstones", d.log())
    return sum(int(h) for h, _ in found), sum(int(t) for _, t in found)


def names(d: Daemon) -> set[str]:
    return {n for n in os.listdir(d.mnt()) if n.startswith("f")}


def test_what_b_acknowledged_is_pruned_and_no_delete_comes_back(bases: list[Path]) -> None:
    with household(bases, 2, REST + f"history_bound = {BOUND}\n") as pair:
        a, b = pair.daemons
        for i in range(130):
            (a.mnt() / f"f{i:03}").write_text(f"file {i}\n")
        wait_for(lambda: len(names(b)) == 130, 60, "b to list a's 130 files")
        for i in range(10):
            os.remove(a.mnt() / f"f{i:03}")
        wait_for(lambda: len(names(b)) == 120, 30, "b to list the deletes")
        # b acknowledged all it took: a's history keeps its last entries, its tombstones go
        wait_for(lambda: pruned(a)[0] >= 140 - KEEP and pruned(a)[1] >= 10, 30, "a to prune")

        b.stop()  # b misses deletes, and a moves on more than the bound meanwhile
        for i in range(10, 15):
            os.remove(a.mnt() / f"f{i:03}")
        for i in range(130, 130 + BOUND + 20):
            (a.mnt() / f"f{i:03}").write_text(f"file {i}\n")
        expected = {f"f{i:03}" for i in range(15, 130 + BOUND + 20)}
        wait_for(lambda: names(a) == expected, 60, "a to hold what it made")
        wait_for(
            lambda: pruned(a)[0] >= 140 + 5 + BOUND + 20 - KEEP - 1, 60, "a's history beyond the bound pruned"
        )
        assert pruned(a)[1] < 15  # the tombstones b did not take stay

        b.start()
        wait_for(lambda: connected(a, "b") and connected(b, "a"), 20, "b back")
        wait_for(
            lambda: "takes a full index" in a.log() and "taking a full index" in b.log(), 20, "a full index"
        )
        wait_for(lambda: names(b) == expected, 60, "b to resync from the full index")
        wait_for(lambda: pruned(a)[1] >= 15, 30, "a to prune the tombstones b took now")
        (b.mnt() / "barrier").write_text("after\n")  # once a lists it, a took all b told before it
        wait_for(lambda: listed(a.mnt() / "barrier") is not None, 30, "the barrier")
        assert names(a) == expected and names(b) == expected  # no delete undone, nothing lost
        pair.stop()
    with Store(a.data_dir) as store:
        index = Index(store, load_or_create(a.data_dir).public_key[:8])
        root = index.arena_root("a")
        kept = [e.seq for e in index.history(root, 1 << 30)]
        assert KEEP <= len(kept) < 225 - BOUND and kept == list(range(kept[0], kept[-1] + 1))
        stones = [n for n, r in index.children(root, [], tombstones=True).items() if r.kind == KIND_DELETED]
        assert len(stones) < 15  # at most those told back by b after a pruned its own
