"""Pruning what peers acknowledged (real LMDB, two or three stores following each other in-process
as `realizefs.sync.lists` makes them: `changes` -> `receive`, then `acknowledge`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from realizefs.store import history
from realizefs.store.index import KIND_DELETED, KIND_DIR, KIND_FILE, Index, Outcome, Record
from realizefs.store.pruning import KEEP, Pruned, Pruning
from realizefs.store.schema import Store
from realizefs.sync.pruner import SWEEP_EVERY, Pruner

A, B, C = b"peer-a..", b"peer-b..", b"peer-c.."
SID_A, SID_B = b"a" * 16, b"b" * 16
BIG = 1 << 40  # a bound nothing reaches
H1, H2, H3 = bytes(range(32)), bytes(32), b"\x07" * 32


class Peer:
    """A store, its index (clock injected) and its pruning."""

    def __init__(self, path: Path, me: bytes) -> None:
        path.mkdir()
        self.store = Store(path)
        self.index = Index(self.store, me, clock=lambda: 1_000_000_000)
        self.pruning = Pruning(self.store, self.index)
        self.root = self.index.arena_root("a")

    def put(self, path: str, content: bytes = H1, op: str = "create") -> None:
        chunks = [(0, 5, content)]
        assert self.index.put(self.root, _p(path), Record(KIND_FILE, 5, 7, 0o644, content), chunks, op=op)

    def record(self, path: str) -> Record | None:
        return self.index.get(self.root, _p(path), unreal=True, tombstones=True)

    def history_seqs(self) -> list[int]:
        return [e.seq for e in self.index.history(self.root, 1 << 30)]

    def prune(self, peers: list[bytes], bound: int = BIG, limit: int = 1000) -> Pruned:
        total = Pruned()
        more = True
        while more:
            step = self.pruning.step("a", peers, bound, limit)
            more = step.more
            total = Pruned(
                total.history + step.history,
                total.tombstones + step.tombstones,
                total.views + step.views,
                total.manifests + step.manifests,
            )
        return total


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[Peer, Peer]]:
    a, b = Peer(tmp_path / "a", A), Peer(tmp_path / "b", B)
    try:
        yield a, b
    finally:
        a.store.close()
        b.store.close()


def _p(path: str) -> list[bytes]:
    return [part.encode() for part in path.split("/")]


def follow(taker: Peer, giver: Peer, giver_id: bytes, giver_store: bytes, ack: bool = True) -> list[Outcome]:
    """*taker* takes what *giver* numbered since it last did, and acknowledges it."""
    after = taker.index.following("a", giver_id, giver_store)
    told = giver.index.changes("a", after, 1 << 20)
    outcomes = [o.outcome for o in taker.index.receive("a", giver_id, giver_store, told)]
    if ack and told:
        giver.index.acknowledge("a", taker.index.me, told[-1].seq)
    return outcomes


def test_history_goes_once_every_configured_peer_acknowledged_it(peers: tuple[Peer, Peer]) -> None:
    a, _ = peers
    for i in range(150):
        a.put(f"f{i}")
    assert a.prune([B, C]) == Pruned()  # nobody acknowledged anything
    a.index.acknowledge("a", B, 150)
    a.index.acknowledge("a", C, 30)  # took the records of the first 30 creates
    assert a.prune([B, C]) == Pruned(history=30)
    assert a.history_seqs() == list(range(31, 151))
    a.index.acknowledge("a", C, 150)
    step = a.pruning.step("a", [B, C], BIG, 7)
    assert step == Pruned(history=7) and step.more  # at most *limit* a step
    assert a.prune([B, C]) == Pruned(history=150 - KEEP - 37)
    assert a.history_seqs() == list(range(151 - KEEP, 151))  # what `.realize/history` shows stays
    a.put("f0", H2, op="edit")
    assert a.history_seqs()[-1] == 151  # numbers go on


def test_history_beyond_the_bound_goes_anyway_and_a_lone_store_keeps_it_up_to_there(
    peers: tuple[Peer, Peer],
) -> None:
    a, _ = peers
    for i in range(150):
        a.put(f"f{i}")
    assert a.prune([]) == Pruned()  # no peer: no acknowledgement, the history is all there is
    assert a.prune([B], bound=120) == Pruned(history=29)  # changes 1..29 are > 120 behind 150
    assert a.prune([], bound=1) == Pruned(history=150 - KEEP - 29)
    assert len(a.history_seqs()) == KEEP


def test_a_tombstone_goes_only_once_every_peer_took_it_and_a_new_file_there_still_wins(
    peers: tuple[Peer, Peer],
) -> None:
    a, b = peers
    a.put("f")
    follow(b, a, A, SID_A)
    assert a.index.delete(a.root, _p("f"))
    stone = a.record("f")
    assert stone is not None and stone.kind == KIND_DELETED and stone.vv == {A: 2}
    assert a.prune([B, C]).tombstones == 0  # b did not take it yet
    assert follow(b, a, A, SID_A) == [Outcome.APPLIED]  # b deletes it too
    assert a.prune([B, C]).tombstones == 0  # c never took it: a full index must still tell c
    assert [t.path for t in a.index.changes("a", 0, 10)] == [(b"f",)]
    a.index.acknowledge("a", C, a.index.last_told(a.root))
    assert a.prune([B, C]).tombstones == 1
    assert a.record("f") is None and a.index.changes("a", 0, 10) == []
    # made again where the tombstone was pruned: dominates the tombstone b still holds
    a.put("f", H2)
    assert follow(b, a, A, SID_A) == [Outcome.APPLIED]
    again = b.record("f")
    assert again is not None and again.kind == KIND_FILE and again.hash == H2


def test_a_peer_that_missed_the_delete_learns_it_even_from_a_full_index(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    for i in range(3):
        a.put(f"f{i}")
    follow(b, a, A, SID_A)
    for i in range(3):
        assert a.index.delete(a.root, _p(f"f{i}"))
    for i in range(200):  # b is away: a moves far on
        a.put(f"g{i}")
    assert a.prune([B], bound=10).tombstones == 0  # the bound prunes history, never tombstones
    assert len(a.history_seqs()) == KEEP
    # b comes back too far behind: it takes a full index, which holds the tombstones
    assert a.index.last_told(a.root) - a.index.acknowledged("a", B) > 10
    b.index.following("a", A, SID_A, full=True)
    follow(b, a, A, SID_A)
    for i in range(3):
        gone = b.record(f"f{i}")
        assert gone is not None and gone.kind == KIND_DELETED
    assert a.prune([B]).tombstones == 3  # b took them now
    assert all(a.record(f"f{i}") is None for i in range(3))
    # what b tells of those paths (its tombstones) never makes a file there again on a
    follow(a, b, B, SID_B)
    assert all(r is None or r.kind == KIND_DELETED for r in (a.record(f"f{i}") for i in range(3)))


def test_a_peers_view_loses_the_tombstones_pruned_here(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    b.put("f")
    follow(a, b, B, SID_B)  # Unreal on a
    assert b.index.delete(b.root, _p("f"))
    assert follow(a, b, B, SID_B) == [Outcome.APPLIED]  # a's tombstone, and b's in a's view of b
    view = a.index.view_root("a", B)
    assert view is not None and b"f" in a.index.children(view, [], tombstones=True)
    assert a.prune([B]) == Pruned()
    follow(b, a, A, SID_A)  # b takes a's tombstone (stale there) and acknowledges it
    assert a.prune([B]) == Pruned(tombstones=1, views=1)
    assert a.index.children(view, [], tombstones=True) == {}
    assert a.record("f") is None


def test_a_tombstone_stays_while_a_peer_holds_a_concurrent_version(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    a.put("f")
    follow(b, a, A, SID_A)
    assert a.index.delete(a.root, _p("f"))
    b.index.put(b.root, _p("f"), Record(KIND_FILE, 5, 9, 0o644, H2, real=True), [(0, 5, H2)], op="edit")
    assert follow(a, b, B, SID_B) == [Outcome.CONFLICT]
    follow(b, a, A, SID_A)
    assert a.index.acknowledged("a", B) == a.index.last_told(a.root)
    assert a.prune([B]).tombstones == 0  # delete against edit: consensus keeps the edit first
    stone = a.record("f")
    assert stone is not None and stone.kind == KIND_DELETED


def test_a_deleted_directorys_tombstones_go_deepest_first(peers: tuple[Peer, Peer]) -> None:
    a, _ = peers
    assert a.index.put(a.root, _p("d"), Record(KIND_DIR, 0, 7, 0o755), op="mkdir")
    assert a.index.put(a.root, _p("d/e"), Record(KIND_DIR, 0, 7, 0o755), op="mkdir")
    a.put("d/e/f")
    a.put("d/g")
    assert a.index.delete(a.root, _p("d"))
    a.index.acknowledge("a", B, 7)  # took the tombstones of f, e and g (5, 6, 7), not d's
    assert a.prune([B], limit=1).tombstones == 3
    assert [(n, r.kind) for n, r in a.index.children(a.root, [], tombstones=True).items()] == [
        (b"d", KIND_DELETED)
    ]
    a.index.acknowledge("a", B, a.index.last_told(a.root))
    assert a.prune([B]).tombstones == 1
    assert a.index.children(a.root, [], tombstones=True) == {}
    assert a.index.changes("a", 0, 10) == []


def test_manifests_no_record_holds_are_swept_and_those_written_meanwhile_kept(
    peers: tuple[Peer, Peer],
) -> None:
    a, _ = peers
    a.put("f", H1)
    a.put("f", H2, op="overwrite")  # H1's manifest is no file's now
    assert a.index.manifest(H1) is not None
    with a.index.track_contents() as touched:
        keep = a.pruning.referenced()
        a.index.keep_manifest(H3, [(0, 5, H3)])  # a peer's content fetched meanwhile
        start: bytes | None = b""
        dropped = 0
        while start is not None:
            gone, start = a.pruning.sweep(keep, touched, start, 1)
            dropped += gone
    assert dropped == 1
    assert a.index.manifest(H1) is None
    assert a.index.manifest(H2) is not None and a.index.manifest(H3) is not None


def test_the_pruner_runs_when_an_acknowledgement_commits(peers: tuple[Peer, Peer]) -> None:
    a, _ = peers
    a.put("f")
    assert a.index.delete(a.root, _p("f"))

    async def main() -> None:
        pruner = Pruner(a.index, a.pruning, lambda: ["a"], lambda: [B], lambda: BIG)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pruner.run)
            await trio.testing.wait_all_tasks_blocked()
            while pruner.rounds < 1:
                await trio.sleep(1)
            assert a.record("f") is not None  # not acknowledged: kept
            await trio.to_thread.run_sync(a.index.acknowledge, "a", B, 2)
            while pruner.total.tombstones < 1:
                assert trio.current_time() < 1e6, "not pruned"  # (the clock jumps while threads work)
                await trio.sleep(1)  # the clock is the mock's: this is the pacing, not a wait for work
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert a.record("f") is None


def test_the_pruner_sweeps_manifests_on_its_schedule(peers: tuple[Peer, Peer]) -> None:
    a, _ = peers
    a.put("f", H1)
    a.put("f", H2, op="overwrite")

    async def main() -> None:
        pruner = Pruner(a.index, a.pruning, lambda: ["a"], lambda: [B], lambda: BIG)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pruner.run)
            await trio.sleep(SWEEP_EVERY - 1)
            assert pruner.total.manifests == 0  # not at start
            while pruner.total.manifests < 1:
                assert trio.current_time() < 1e6, "no sweep"
                await trio.sleep(1)
            assert trio.current_time() >= SWEEP_EVERY  # with no commit to wake it
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert a.index.manifest(H1) is None and a.index.manifest(H2) is not None


_KILLED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from realizefs.store.index import Index
    from realizefs.store.pruning import Pruning
    from realizefs.store.schema import Store

    with Store(Path(sys.argv[1])) as store:
        pruning = Pruning(store, Index(store, b"peer-a.."))
        while True:
            step = pruning.step("a", [b"peer-b.."], 1 << 40, 1)
            print(step.history + step.tombstones, flush=True)
    """
)


def test_a_kill_between_two_steps_leaves_a_consistent_store(tmp_path: Path) -> None:
    a = Peer(tmp_path / "a", A)
    for i in range(120):
        a.put(f"f{i}")
    for i in range(60):
        assert a.index.delete(a.root, _p(f"f{i}"))
    a.index.acknowledge("a", B, a.index.last_told(a.root))
    a.store.close()
    kills = 0
    while True:
        child = subprocess.Popen(
            [sys.executable, "-c", _KILLED, str(tmp_path / "a")], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # at least one step committed (or found nothing)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        kills += 1
        _check_consistent(tmp_path / "a")
        if first.strip() == "0":
            break
    assert kills > 10
    with Store(tmp_path / "a") as store:
        index = Index(store, A)
        root = index.arena_root("a")
        assert index.children(root, [], tombstones=True).keys() == {f"f{i}".encode() for i in range(60, 120)}
        assert len(index.history(root, 1 << 30)) == KEEP


def _check_consistent(path: Path) -> None:
    """Every sequence number names a record carrying it, every record is numbered and its way
    back leads to it; the history is whole from its first entry kept to its last."""
    with Store(path) as store:
        index = Index(store, A)
        root = index.arena_root("a")
        told = index.changes("a", 0, 1 << 20)  # raises if a number names no record
        assert {t.path for t in told} == {(n,) for n in index.children(root, [], tombstones=True)}
        for name in index.children(root, [], tombstones=True):
            found = index.entry(root, [name]) or None
            assert found is None or index.at_node(root, found[0]) is not None
        seqs = [e.seq for e in index.history(root, 1 << 30)]
        assert seqs == list(range(seqs[0], 181))
        with store.env.begin() as txn:
            assert history.first_seq(txn, store.dbs[b"history"], root) == seqs[0]


def test_a_full_index_asked_for_being_behind_keeps_the_view_it_refreshes(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    b.put("f")  # Real on b; a takes it, and b takes a's delete of it: for b's consensus to apply
    follow(a, b, B, SID_B)
    assert a.index.delete(a.root, _p("f"), unreal=True)
    assert follow(b, a, A, SID_A) == [Outcome.NOTED]
    assert a.prune([B]).tombstones == 1  # b took it
    view = b.index.view_root("a", A)
    assert view is not None
    b.index.following("a", A, SID_A, full=True)
    assert follow(b, a, A, SID_A) == []  # the full index no longer tells it
    held = b.index.children(view, [], tombstones=True).get(b"f")
    assert held is not None and held.kind == KIND_DELETED  # still there for b's consensus
    b.index.following("a", A, b"another store id")  # a store made anew: a view starts over
    assert b.index.children(view, [], tombstones=True) == {}


def test_a_views_directory_delete_waiting_for_consensus_stays_when_what_was_below_goes(
    peers: tuple[Peer, Peer],
) -> None:
    a, b = peers
    assert b.index.put(b.root, _p("d"), Record(KIND_DIR, 0, 7, 0o755), op="mkdir")
    b.put("d/g")
    follow(a, b, B, SID_B)
    assert a.index.put(a.root, _p("d"), Record(KIND_DIR, 0, 7, 0o755))  # realized on a
    assert b.index.delete(b.root, _p("d"))  # g, then d
    assert follow(a, b, B, SID_B) == [Outcome.APPLIED, Outcome.NOTED]  # d is Real on a: consensus
    follow(b, a, A, SID_A)  # b took a's tombstone of g
    assert a.prune([B]) == Pruned(tombstones=1, views=1)  # g's, here and in a's view of b
    view = a.index.view_root("a", B)
    assert view is not None
    held = a.index.children(view, [], tombstones=True).get(b"d")
    assert held is not None and held.kind == KIND_DELETED  # for a's consensus to apply
