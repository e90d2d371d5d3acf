"""Entries from peers, tombstones and peers' views in the content index (real LMDB)."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lmdb
import msgpack
import pytest

from realizefs.errors import StoreError
from realizefs.store.history import Entry, Version
from realizefs.store.index import (
    KIND_DELETED,
    KIND_DIR,
    KIND_FILE,
    Counts,
    Index,
    Outcome,
    Record,
    SyncState,
)
from realizefs.store.schema import SCHEMA_VERSION, Store

ME, A, B = b"me-peer!", b"peer-a..", b"peer-b.."
H1, H2 = bytes(range(32)), bytes(32)
SID = b"s" * 16


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path) as s:
        yield s


def p(path: str) -> list[bytes]:
    return [part.encode() for part in path.split("/")] if path else []


def made(
    op: str, path: str, vv: dict[bytes, int], content: bytes | None = H1, seq: int = 0, **kw: object
) -> Entry:
    kind = {"mkdir": KIND_DIR, "rmdir": KIND_DIR}.get(op, KIND_FILE)
    new = None if op in ("delete", "rmdir") else Version(content if kind == KIND_FILE else None, 5, 7, 0o644)
    entry = Entry(seq, op, path.encode(), None, None, new, vv, 1, next(iter(vv)), kind)
    return replace(entry, **kw)  # type: ignore[arg-type]


def test_a_peers_version_is_taken_only_if_it_is_newer(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    first = index.accept(root, made("create", "f", {A: 1}))
    assert first.outcome is Outcome.APPLIED and first.held is None
    record = index.get(root, p("f"), unreal=True)
    assert record is not None and not record.real and record.hash == H1 and record.vv == {A: 1}
    assert index.get(root, p("f")) is None and index.children(root, []) == {}  # not Real
    assert index.counts(root) == Counts() == index.recount(root)
    assert index.accept(root, made("create", "f", {A: 1})).outcome is Outcome.STALE  # equal: its own, back
    newer = index.accept(root, made("edit", "f", {A: 2}, H2))
    assert newer.outcome is Outcome.APPLIED and newer.held is not None and newer.held.vv == {A: 1}
    assert index.accept(root, made("edit", "f", {A: 1})).outcome is Outcome.STALE  # older
    other = index.accept(root, made("edit", "f", {A: 1, B: 1}))
    assert other.outcome is Outcome.CONFLICT and other.held is not None and other.held.vv == {A: 2}
    record = index.get(root, p("f"), unreal=True)
    assert record is not None and record.hash == H2 and record.vv == {A: 2}  # never overwritten
    # the history holds what was applied, with its origin and its vector as it came
    assert [(e.op, e.vv, e.origin) for e in index.history(root, 10)] == [
        ("create", {A: 1}, A),
        ("edit", {A: 2}, A),
    ]


def test_missing_directories_are_made_and_a_deleted_one_is_not_brought_back(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    assert index.accept(root, made("create", "d/e/f", {A: 1})).outcome is Outcome.APPLIED
    d = index.get(root, p("d"), unreal=True)
    assert d is not None and d.kind == KIND_DIR and d.vv == {}  # its own mkdir will dominate it
    assert index.accept(root, made("mkdir", "d", {A: 1})).outcome is Outcome.APPLIED
    assert index.accept(root, made("delete", "d/e/f", {A: 2})).outcome is Outcome.APPLIED
    assert index.accept(root, made("rmdir", "d/e", {A: 1}, None)).outcome is Outcome.APPLIED
    assert index.accept(root, made("rmdir", "d", {A: 2}, None)).outcome is Outcome.APPLIED
    assert index.children(root, [], unreal=True) == {}
    stone = index.get(root, p("d/e/f"), tombstones=True)
    assert stone is not None and stone.kind == KIND_DELETED and stone.vv == {A: 2}
    # a peer that missed the delete sends the old versions: nothing comes back
    assert index.accept(root, made("create", "d/e/f", {A: 1})).outcome is Outcome.STALE
    assert index.accept(root, made("mkdir", "d", {A: 1})).outcome is Outcome.STALE
    # made anew below the deleted directory, not knowing of the delete: a conflict
    assert index.accept(root, made("create", "d/g", {B: 1})).outcome is Outcome.CONFLICT
    # the directory made again by one who knew of the delete, then a file in it
    assert index.accept(root, made("mkdir", "d", {A: 3})).outcome is Outcome.APPLIED
    assert index.accept(root, made("create", "d/g", {B: 1})).outcome is Outcome.APPLIED
    assert set(index.children(root, p("d"), unreal=True)) == {b"g"}  # the tombstone of e is not listed
    assert set(index.children(root, p("d"), unreal=True, tombstones=True)) == {b"e", b"g"}


def test_a_directory_deleted_while_it_holds_what_the_deleter_did_not_know_is_a_conflict(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.accept(root, made("mkdir", "d", {A: 1}))
    index.accept(root, made("create", "d/new", {B: 1}))
    assert index.accept(root, made("rmdir", "d", {A: 2}, None)).outcome is Outcome.CONFLICT
    assert index.get(root, p("d/new"), unreal=True) is not None


def test_a_real_path_is_not_changed_and_the_newer_version_is_passed_on_once(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("f"), Record(KIND_FILE, 1, hash=H1), op="create")
    mine = index.get(root, p("f"))
    assert mine is not None and mine.vv == {ME: 1}
    entry = made("edit", "f", {ME: 1, A: 1}, H2, seq=1, origin=A)
    assert index.receive("a", A, SID, [entry])[0].outcome is Outcome.NOTED
    assert index.get(root, p("f")) == mine  # consensus applies it, later
    assert index.holders("a", p("f"), {ME: 1, A: 1}, H2) == [A]
    # the same version relayed by another peer: already noted, not passed on again
    assert index.receive("a", B, SID, [replace(entry, seq=5)])[0].outcome is Outcome.STALE
    assert [(e.op, e.origin) for e in index.history(root, 10)] == [("create", ME), ("edit", A)]
    assert index.holders("a", p("f"), content=H2) == [A, B] and index.holders("a", p("f"), {ME: 1}) == []


def test_deleting_real_entries_keeps_what_peers_hold_below(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("d"), Record(KIND_DIR), op="mkdir")
    index.put(root, p("d/mine"), Record(KIND_FILE, 1, hash=H1), op="create")
    index.accept(root, made("create", "d/theirs", {A: 1}))
    assert index.delete(root, p("d"))  # the Real part went (rm -r on the disk)
    d = index.get(root, p("d"), unreal=True)
    assert d is not None and not d.real and d.vv == {ME: 1}  # no rmdir: the directory is still listed
    assert index.get(root, p("d/theirs"), unreal=True) is not None
    mine = index.get(root, p("d/mine"), tombstones=True)
    assert mine is not None and mine.kind == KIND_DELETED and mine.vv == {ME: 2}
    assert [e.op for e in index.history(root, 10)][-1] == "delete"
    assert not index.delete(root, p("d/theirs"))  # not Real: not the indexer's to delete
    assert index.delete(root, p("d"), unreal=True)  # through the mount: everything goes
    assert [e.op for e in index.history(root, 2)] == ["delete", "rmdir"]
    assert index.counts(root) == Counts() == index.recount(root)


def test_a_rename_leaves_a_tombstone_and_a_peers_rename_moves_the_unreal_tree(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("f"), Record(KIND_FILE, 1, hash=H1), op="create")
    assert index.rename(root, p("f"), p("g"))
    stone = index.get(root, p("f"), tombstones=True)
    assert stone is not None and stone.kind == KIND_DELETED and stone.vv == {ME: 2}
    index.put(root, p("f"), Record(KIND_FILE, 1, hash=H2), op="create")
    made_again = index.get(root, p("f"))
    assert made_again is not None and made_again.vv == {ME: 3}  # dominates the rename's tombstone
    index.accept(root, made("mkdir", "d", {A: 1}))
    index.accept(root, made("create", "d/x", {A: 1}))
    rename = Entry(0, "rename", b"e", b"d", None, Version(None, 0, 7, 0o755), {A: 2}, 1, A, KIND_DIR)
    assert index.accept(root, rename).outcome is Outcome.APPLIED
    x = index.get(root, p("e/x"), unreal=True)
    assert x is not None and x.vv == {A: 1}
    assert index.get(root, p("d/x"), unreal=True) is None
    # an old version of d/x, from a peer that has not heard of the rename: entries name paths,
    # so it is not known as the file now at e/x; it is no resurrection either (issue 11 decides)
    assert index.accept(root, made("create", "d/x", {A: 1})).outcome is Outcome.CONFLICT


def test_views_are_kept_per_peer_resume_and_survive_a_restart(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        index = Index(store, ME)
        entries = [made("mkdir", "d", {A: 1}, seq=1), made("create", "d/f", {A: 1}, seq=2)]
        index.receive("a", A, SID, entries)
        index.receive(
            "a", A, SID, [*entries, made("edit", "d/f", {A: 2}, H2, seq=3)]
        )  # a resend, then one new
        assert index.sync_state("a", A) == SyncState(SID, 3)
        with pytest.raises(StoreError, match="store changed"):
            index.receive("a", A, b"t" * 16, [made("edit", "d/f", {A: 3}, seq=4)])
        assert index.sync_state("a", A) == SyncState(SID, 3)  # nothing of it was taken
    with Store(tmp_path) as store:
        index = Index(store, ME)
        view = index.view_root("a", A)
        assert view is not None and index.view_root("a", B) is None and index.view_root("b", A) is None
        f = index.get(view, p("d/f"), unreal=True)
        assert f is not None and f.hash == H2 and f.vv == {A: 2}
        assert index.holders("a", p("d/f"), {A: 2}) == [A]
        assert index.sync_state("a", A) == SyncState(SID, 3)


def test_a_full_index_replaces_a_view_and_matches_the_senders_index(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with Store(tmp_path / "a") as sa, Store(tmp_path / "b") as sb:
        alice, bob = Index(sa, A), Index(sb, B)
        root = alice.arena_root("x")
        alice.put(root, p("d"), Record(KIND_DIR, mode=0o755), op="mkdir")
        alice.put(root, p("d/f"), Record(KIND_FILE, 3, 4, 0o644, H1), op="create")
        alice.put(root, p("g"), Record(KIND_FILE, 3, 4, 0o644, H2), op="create")
        alice.put(root, p("pending"), Record(KIND_FILE, 9))  # never hashed: not told
        alice.delete(root, p("g"))
        bob.receive(
            "x", A, sa.store_id, [made("create", "old", {A: 9}, seq=1)]
        )  # from a store since recreated
        last, entries = alice.snapshot(root)
        assert last == alice.last_seq(root) == 4
        outcomes = bob.replace_view("x", A, b"n" * 16, last, entries)
        assert [o.outcome for o in outcomes] == [Outcome.APPLIED] * 3
        assert bob.sync_state("x", A) == SyncState(b"n" * 16, 4)
        view = bob.view_root("x", A)
        assert view is not None
        assert set(bob.children(view, [], unreal=True, tombstones=True)) == {b"d", b"g"}  # "old" went
        for path in ("d", "d/f", "g"):
            theirs = alice.get(root, p(path), tombstones=True)
            for mine in (
                bob.get(view, p(path), unreal=True, tombstones=True),
                bob.get(bob.arena_root("x"), p(path), unreal=True, tombstones=True),
            ):
                assert mine is not None and theirs is not None
                assert (mine.kind, mine.hash, mine.vv) == (theirs.kind, theirs.hash, theirs.vv), path


def test_a_version_4_store_is_migrated(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        index = Index(store, ME)
        root = index.arena_root("a")
        index.put(root, p("d"), Record(KIND_DIR), op="mkdir")
        index.put(root, p("d/f"), Record(KIND_FILE, 3, hash=H1), op="create")
        index.put(root, p("d/f"), Record(KIND_FILE, 3, mode=0o600, hash=H1), op="chmod")
        index.rename(root, p("d/f"), p("d/g"))
        index.put(root, p("d/h"), Record(KIND_FILE, 3, hash=H2), op="create")
        index.delete(root, p("d/h"))
    env = lmdb.open(str(tmp_path / "store"), max_dbs=16)
    meta, nodes, hist = (env.open_db(name) for name in (b"meta", b"nodes", b"history"))
    with env.begin(write=True) as txn:  # as version 4 wrote them
        txn.put(b"schema_version", struct.pack(">I", 4), db=meta)
        for key, raw in list(txn.cursor(db=nodes)):
            value = msgpack.unpackb(raw, strict_map_key=False)
            if value[1] == KIND_DELETED:
                txn.delete(key, db=nodes)  # version 4 kept no tombstones
            else:
                txn.put(key, msgpack.packb(value[:9]), db=nodes)
        for key, raw in list(txn.cursor(db=hist)):
            txn.put(key, msgpack.packb(msgpack.unpackb(raw, strict_map_key=False)[:7]), db=hist)
    env.close()
    with Store(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION == 5
        index = Index(store, ME)
        root = index.arena_root("a")
        g = index.get(root, p("d/g"))
        assert g is not None and g.real and g.hash == H1
        assert [(e.op, e.origin, e.kind) for e in index.history(root, 10)] == [
            ("mkdir", ME, KIND_DIR),
            ("create", ME, KIND_FILE),
            ("chmod", ME, 0),  # its path is gone (renamed since): not known
            ("rename", ME, KIND_FILE),  # what the path holds now
            ("create", ME, KIND_FILE),
            ("delete", ME, KIND_FILE),
        ]
