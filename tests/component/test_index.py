"""The content index on a real LMDB environment."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Counts, Index, Record
from realizefs.store.schema import SCHEMA_VERSION, Store

H1, H2 = bytes(range(32)), bytes(32)
ME = b"me-peer!"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path) as s:
        yield s


def p(path: str) -> list[bytes]:
    return [part.encode() for part in path.split("/")] if path else []


def test_records_live_under_their_directories(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("photos")
    assert index.arena_root("photos") == root and index.arena_root("docs") != root
    assert index.put(root, p("2024"), Record(KIND_DIR))
    assert index.put(root, p("2024/a.jpg"), Record(KIND_FILE, 3, 7, 0o644, H1), [(0, 3, H2)])
    assert index.put(root, p("link"), Record(KIND_LINK, target=b"2024/a.jpg"))
    assert not index.put(root, p("missing/b.jpg"), Record(KIND_FILE))  # parent not indexed
    assert not index.put(root, p("2024/a.jpg/b.jpg"), Record(KIND_FILE))  # parent not a directory
    assert index.get(root, p("2024/a.jpg")) == Record(KIND_FILE, 3, 7, 0o644, H1)
    assert index.get(root, p("link")) == Record(KIND_LINK, target=b"2024/a.jpg")
    assert index.manifest(H1) == [(0, 3, H2)]
    assert set(index.children(root, [])) == {b"2024", b"link"}
    assert index.get(index.arena_root("docs"), p("2024")) is None  # arenas are apart
    assert index.counts(root) == Counts(files=1, bytes=3, directories=1, links=1, pending=0)


def test_a_directory_rename_is_one_update_and_keeps_everything(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("d"), Record(KIND_DIR))
    index.put(root, p("d/e"), Record(KIND_DIR))
    index.put(root, p("d/e/f"), Record(KIND_FILE, 1, hash=H1))
    index.put(root, p("x"), Record(KIND_FILE, 2))
    assert index.rename(root, p("d"), p("x"))  # over a file
    assert index.get(root, p("x/e/f")) == Record(KIND_FILE, 1, hash=H1)
    assert index.get(root, p("d")) is None
    assert index.counts(root) == Counts(files=1, bytes=1, directories=2)
    assert not index.rename(root, p("nothing"), p("y"))
    assert not index.rename(root, p("x"), p("x/e/g")) and not index.rename(root, p("x/e/f"), p("x"))
    assert index.rename(root, p("x"), p("x")) and index.counts(root) == Counts(
        files=1, bytes=1, directories=2
    )


def test_delete_forgets_everything_below(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("d"), Record(KIND_DIR))
    for i in range(50):
        index.put(root, p(f"d/f{i}"), Record(KIND_FILE, 1))
    index.put(root, p("dd"), Record(KIND_FILE, 5))  # a sibling whose key shares the prefix
    assert index.delete(root, p("d"))
    assert index.get(root, p("d/f1")) is None
    assert index.counts(root) == Counts(files=1, bytes=5, pending=1)
    assert not index.delete(root, p("d"))


def test_a_file_replaced_by_a_directory_loses_nothing_else(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("d"), Record(KIND_DIR))
    index.put(root, p("d/f"), Record(KIND_FILE, 1))
    index.put(root, p("d"), Record(KIND_FILE, 9))  # the directory became a file
    assert index.children(root, p("d")) == {}
    index.put(root, p("d"), Record(KIND_DIR))
    assert index.get(root, p("d/f")) is None


def test_long_paths_and_odd_names(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    path: list[bytes] = []
    for depth in range(40):  # about 10 KiB of path, far above LMDB's key limit
        path.append(b"\xff\n" + bytes([65 + depth % 26]) * 250)
        assert index.put(root, path, Record(KIND_DIR))
    path.append(b"f")
    index.put(root, path, Record(KIND_FILE, 1))
    assert index.get(root, path) == Record(KIND_FILE, 1)


def test_a_version_1_store_is_upgraded(tmp_path: Path) -> None:
    Store(tmp_path).close()
    env = lmdb.open(str(tmp_path / "store"), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", struct.pack(">I", 1), db=meta)
    env.close()
    with Store(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        index = Index(store, ME)
        root = index.arena_root("a")
        assert index.put(root, p("f"), Record(KIND_FILE))


def test_a_version_2_store_gets_its_counts_once(tmp_path: Path) -> None:
    with Store(tmp_path) as store:
        index = Index(store, ME)
        a, b = index.arena_root("a"), index.arena_root("b")
        index.put(a, p("d"), Record(KIND_DIR))
        index.put(a, p("d/f"), Record(KIND_FILE, 3, hash=H1))
        index.put(a, p("g"), Record(KIND_FILE, 4))
        index.put(b, p("l"), Record(KIND_LINK, target=b"x"))
    env = lmdb.open(str(tmp_path / "store"), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:  # as version 2 left it: no kept counts
        txn.put(b"schema_version", struct.pack(">I", 2), db=meta)
        for key in [bytes(k) for k, _ in txn.cursor(db=meta) if bytes(k).startswith(b"counts:")]:
            txn.delete(key, db=meta)
    env.close()
    with Store(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        index = Index(store, ME)
        a, b = index.arena_root("a"), index.arena_root("b")
        assert index.counts(a) == Counts(files=2, bytes=7, directories=1, links=0, pending=1)
        assert index.counts(b) == Counts(links=1)
        assert index.counts(index.arena_root("new")) == Counts()


names = st.lists(st.sampled_from([b"a", b"b"]), min_size=1, max_size=3)
records = st.builds(
    Record,
    st.sampled_from([KIND_FILE, KIND_DIR, KIND_LINK]),
    st.integers(0, 1000),
    hash=st.sampled_from([None, H1]),
    changed=st.booleans(),
)
operations = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 1), names, records, st.booleans()),
    st.tuples(st.just("delete"), st.integers(0, 1), names, st.booleans()),
    st.tuples(st.just("rename"), st.integers(0, 1), names, names, st.booleans()),
)


def test_kept_counts_always_equal_a_recount(store: Store) -> None:
    index = Index(store, ME)
    runs = itertools.count()

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(operations, max_size=30), st.booleans())
    def check(steps: list[tuple[Any, ...]], batched: bool) -> None:
        run = next(runs)
        roots = (index.arena_root(f"a{run}"), index.arena_root(f"b{run}"))
        with index.batch() if batched else nullcontext():
            for op, arena, path, *args in steps:
                root = roots[arena]
                if op == "put":  # mkdir -p, then the record: trees grow deep quickly
                    record, logged = args
                    for depth in range(1, len(path)):
                        parent = index.get(root, path[:depth])
                        if parent is None or parent.kind != KIND_DIR:
                            index.put(root, path[:depth], Record(KIND_DIR))
                    index.put(root, path, record, op="create" if logged else None)
                elif op == "delete":
                    index.delete(root, path, logged=args[0])
                else:
                    new, logged = args
                    index.rename(root, path, new, logged=logged)
                assert [index.counts(r) for r in roots] == [index.recount(r) for r in roots]

    check()


def ops(index: Index, root: int) -> list[tuple[str, bytes, bytes | None]]:
    return [(e.op, e.path, e.old_path) for e in index.history(root, 100)]


def test_history_is_written_with_the_change(store: Store) -> None:
    index = Index(store, ME, clock=lambda: 42)
    root = index.arena_root("a")
    other = index.arena_root("b")
    index.put(root, p("d"), Record(KIND_DIR, mode=0o755), op="mkdir")
    index.put(root, p("d/f"), Record(KIND_FILE, 1, 1, 0o644, H1), op="create")
    index.put(root, p("d/f"), Record(KIND_FILE, 2, 2, 0o644, H1, changed=True))  # pending: no entry
    index.put(root, p("d/f"), Record(KIND_FILE, 2, 2, 0o644, H2), op="edit")
    index.put(other, p("x"), Record(KIND_FILE), op="create")  # another arena's log
    assert index.rename(root, p("d"), p("e"))
    assert index.delete(root, p("e"))
    assert ops(index, root) == [
        ("mkdir", b"d", None),
        ("create", b"d/f", None),
        ("edit", b"d/f", None),
        ("rename", b"e", b"d"),  # one entry for a directory, whatever it holds
        ("delete", b"e/f", None),  # deepest first
        ("rmdir", b"e", None),
    ]
    entries = index.history(root, 100)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5, 6]
    edit = entries[2]
    assert edit.old is not None and edit.old.hash == H1 and edit.new is not None and edit.new.hash == H2
    assert edit.vv == {ME: 2} and edit.time_ns == 42  # create, edit: the pending write counts not
    assert ops(index, other) == [("create", b"x", None)]
    assert [e.seq for e in index.history(root, 2)] == [5, 6]


def test_an_atomic_save_keeps_the_version_vector_growing(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    for _ in range(3):
        index.put(root, p("doc"), Record(KIND_FILE, 1, hash=H1), op="edit")
    index.put(root, p("doc.tmp"), Record(KIND_FILE, 1, hash=H2), op="create")
    index.rename(root, p("doc.tmp"), p("doc"))
    rename = index.history(root, 1)[0]
    assert rename.op == "rename" and rename.vv == {ME: 4}  # dominates what doc had
    assert rename.old is not None and rename.old.hash == H1
    record = index.get(root, p("doc"))
    assert record is not None and record.vv == {ME: 4} and record.hash == H2
