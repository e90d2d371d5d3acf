"""The chunk index (`realizefs.store.chunks`): which indexed files hold a chunk, kept by the index's writes.

A hypothesis state machine drives `Index` (records, content changes, deletes,
renames, exchanges, kinds replacing kinds, in two arenas) and compares
`Index.chunk_sources` for every chunk with what a plain dict model of the tree
says, and the kept entries with those derived from the records alone. The
entries are written in the write transaction of the record they follow (an
aborted transaction leaves neither: tested below), so a crash between two
commits cannot leave them out of step.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from realizefs.store import chunks
from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Index, RealSource, Record
from realizefs.store.schema import SCHEMA_VERSION, Store

ME = b"me-peer!"
X, Y, Z, W = (bytes([i]) * 32 for i in range(1, 5))
LENGTH = {X: 10, Y: 20, Z: 30, W: 5}
# contents: their chunks, in order; some share chunks, one repeats one, one is empty
CONTENTS = {"c0": [X, Y], "c1": [Y, Z], "c2": [X, X, W], "c3": [], "c4": [Z]}
HASH = {name: bytes([0x80 + i]) * 32 for i, name in enumerate(CONTENTS)}
CONTENT = {h: name for name, h in HASH.items()}


def manifest(content: str) -> list[tuple[int, int, bytes]]:
    out, offset = [], 0
    for chunk in CONTENTS[content]:
        out.append((offset, LENGTH[chunk], chunk))
        offset += LENGTH[chunk]
    return out


def settled(content: str) -> Record:
    size = sum(length for _, length, _ in manifest(content))
    return Record(KIND_FILE, size, 1, 0o644, HASH[content])


def p(path: str) -> tuple[bytes, ...]:
    return tuple(part.encode() for part in path.split("/"))


def where(sources: list[RealSource]) -> set[tuple[int, tuple[bytes, ...], int, int]]:
    return {(s.root, s.path, s.offset, s.length) for s in sources}


def kept_matches_derived(store: Store) -> bool:
    with store.env.begin() as txn:
        derived = dict(chunks.derive(txn, store.dbs[b"nodes"], store.dbs[b"manifests"]))
        return chunks.dump(txn, store.dbs[b"chunks"]) == derived


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path) as s:
        yield s


# ---------------------------------------------------------------- the model

Path_ = tuple[bytes, ...]
Entry = tuple[str, str | None, bool]  # kind, content (files), changed since
PATHS = [p(x) for x in ("a", "b", "d", "a/a", "d/a", "d/b", "d/d", "d/d/a")]
arenas, paths, contents = st.sampled_from([0, 1]), st.sampled_from(PATHS), st.sampled_from(sorted(CONTENTS))


def below(tree: dict[Path_, Entry], top: Path_) -> list[Path_]:
    """*top* and every path under it in the model."""
    return [path for path in tree if path[: len(top)] == top]


class ChunkIndexModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="realizefs-chunks-"))
        self.store = Store(self.dir)
        self.index = Index(self.store, ME)
        self.roots = [self.index.arena_root("one"), self.index.arena_root("two")]
        self.trees: list[dict[Path_, Entry]] = [{}, {}]
        self.stored: set[str] = set()  # contents whose manifest is stored

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir)

    def parent_is_dir(self, arena: int, path: Path_) -> bool:
        return len(path) == 1 or self.trees[arena].get(path[:-1], ("",))[0] == "dir"

    def place(self, arena: int, path: Path_, entry: Entry) -> None:
        """What `Index.put` does to the tree: a directory replaced by another kind goes with all it held."""
        tree = self.trees[arena]
        if entry[0] != "dir":
            for gone in below(tree, path):
                del tree[gone]
        tree[path] = entry

    @rule(arena=arenas, path=paths, content=contents)
    def settle(self, arena: int, path: Path_, content: str) -> None:
        """The indexer records a file's content with its chunks."""
        ok = self.index.put(self.roots[arena], path, settled(content), manifest(content), op="create")
        assert ok == self.parent_is_dir(arena, path)
        if ok:
            self.stored.add(content)
            self.place(arena, path, ("file", content, False))

    @rule(arena=arenas, path=paths, content=contents)
    def record_known(self, arena: int, path: Path_, content: str) -> None:
        """A content whose manifest is stored, recorded without chunks (as a chmod keeps the hash)."""
        if content not in self.stored:
            return
        ok = self.index.put(self.roots[arena], path, replace(settled(content), mode=0o600))
        assert ok == self.parent_is_dir(arena, path)
        if ok:
            self.place(arena, path, ("file", content, False))

    @rule(arena=arenas, path=paths)
    def change(self, arena: int, path: Path_) -> None:
        """A file written to: pending until hashed again, its last hash kept (as the indexer records it)."""
        old = self.trees[arena].get(path)
        last = old[1] if old is not None and old[0] == "file" else None
        record = Record(KIND_FILE, 7, 2, 0o644, HASH[last] if last else None, changed=last is not None)
        ok = self.index.put(self.roots[arena], path, record)
        assert ok == self.parent_is_dir(arena, path)
        if ok:
            self.place(arena, path, ("file", last, last is not None))

    @rule(arena=arenas, path=paths, kind=st.sampled_from(["dir", "link"]))
    def make(self, arena: int, path: Path_, kind: str) -> None:
        record = Record(KIND_DIR) if kind == "dir" else Record(KIND_LINK, 1, target=b"t")
        ok = self.index.put(self.roots[arena], path, record)
        assert ok == self.parent_is_dir(arena, path)
        if ok:
            self.place(arena, path, (kind, None, False))

    def pick(self, data: st.DataObject, arena: int) -> Path_:
        """Mostly a path the arena holds (so that renames and deletes mostly take), else any."""
        known = sorted(self.trees[arena])
        choice: st.SearchStrategy[Path_] = paths
        if known and data.draw(st.integers(0, 3)) > 0:
            choice = st.sampled_from(known)
        return data.draw(choice)

    @rule(arena=arenas, data=st.data(), logged=st.booleans())
    def delete(self, arena: int, data: st.DataObject, logged: bool) -> None:
        tree, path = self.trees[arena], self.pick(data, arena)
        assert self.index.delete(self.roots[arena], path, logged=logged) == (path in tree)
        for gone in below(tree, path):
            del tree[gone]

    @rule(arena=arenas, data=st.data())
    def rename(self, arena: int, data: st.DataObject) -> None:
        tree, old, new = self.trees[arena], self.pick(data, arena), self.pick(data, arena)
        shorter = min(len(old), len(new))
        ok = self.index.rename(self.roots[arena], old, new)
        refused = old[:shorter] == new[:shorter] and len(old) != len(new)
        expected = not refused and old in tree and self.parent_is_dir(arena, new)
        assert ok == expected
        if not ok or old == new:
            return
        replaced = tree.get(new)
        moved = {path[len(old) :]: tree.pop(path) for path in below(tree, old)}
        for gone in below(tree, new):
            del tree[gone]
        for rest, entry in moved.items():
            tree[new + rest] = entry
        if moved[()][:2] == ("file", None) and replaced is not None and replaced[1] is not None:
            tree[new] = ("file", replaced[1], True)  # an atomic save: follows the replaced version

    @rule(arena=arenas, data=st.data())
    def exchange(self, arena: int, data: st.DataObject) -> None:
        tree, one, other = self.trees[arena], self.pick(data, arena), self.pick(data, arena)
        shorter = min(len(one), len(other))
        ok = self.index.exchange(self.roots[arena], one, other)
        assert ok == (one[:shorter] != other[:shorter] and one in tree and other in tree)
        if ok:
            first = {path[len(one) :]: tree.pop(path) for path in below(tree, one)}
            second = {path[len(other) :]: tree.pop(path) for path in below(tree, other)}
            tree.update({other + rest: entry for rest, entry in first.items()})
            tree.update({one + rest: entry for rest, entry in second.items()})

    @invariant()
    def sources_are_the_models(self) -> None:
        expected: dict[bytes, set[tuple[int, Path_, int, int]]] = {chunk: set() for chunk in LENGTH}
        for arena, tree in enumerate(self.trees):
            for path, (kind, content, changed) in tree.items():
                if kind == "file" and content is not None and not changed:
                    seen = set()
                    for offset, length, chunk in manifest(content):
                        if chunk not in seen:  # the first occurrence in a file
                            seen.add(chunk)
                            expected[chunk].add((self.roots[arena], path, offset, length))
        for chunk, want in expected.items():
            found = self.index.chunk_sources(chunk)
            assert len(found) == len(want)  # no duplicates
            assert where(found) == want

    @invariant()
    def kept_entries_are_derived_ones(self) -> None:
        assert kept_matches_derived(self.store)


ChunkIndexModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_chunk_index_model = ChunkIndexModel.TestCase


# ---------------------------------------------------------------- examples


def test_identical_chunks_in_two_files_are_both_listed(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("d"), Record(KIND_DIR))
    index.put(root, p("d/f"), settled("c0"), manifest("c0"))  # X at 0, Y at 10
    index.put(root, p("g"), settled("c1"), manifest("c1"))  # Y at 0, Z at 20
    index.put(root, p("h"), settled("c0"), manifest("c0"))  # the same content as d/f
    assert where(index.chunk_sources(Y)) == {
        (root, p("d/f"), 10, 20),
        (root, p("g"), 0, 20),
        (root, p("h"), 10, 20),
    }
    assert where(index.chunk_sources(X)) == {(root, p("d/f"), 0, 10), (root, p("h"), 0, 10)}
    assert index.chunk_sources(W) == []
    index.rename(root, p("d"), p("e"))  # a directory rename: the sources follow, no entry rewritten
    assert where(index.chunk_sources(X)) == {(root, p("e/f"), 0, 10), (root, p("h"), 0, 10)}
    index.delete(root, p("h"))
    assert where(index.chunk_sources(X)) == {(root, p("e/f"), 0, 10)}


def test_a_chunk_repeated_in_a_file_is_its_first_occurrence(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("f"), settled("c2"), manifest("c2"))  # X at 0 and 10, W at 20
    assert index.chunk_sources(X) == [RealSource(root, index.chunk_sources(W)[0].node, p("f"), 0, 10)]


def test_a_changed_file_is_no_source_until_hashed_again(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("f"), settled("c0"), manifest("c0"))
    index.put(root, p("f"), Record(KIND_FILE, 9, 2, 0o644, HASH["c0"], changed=True))
    assert index.chunk_sources(X) == []
    index.put(root, p("f"), settled("c4"), manifest("c4"))
    assert index.chunk_sources(X) == [] and where(index.chunk_sources(Z)) == {(root, p("f"), 0, 30)}


def test_a_hash_recorded_before_its_manifest_is_listed_once_recorded_with_it(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("f"), settled("c4"))  # no chunks, none stored: no source
    assert index.chunk_sources(Z) == []
    index.put(root, p("f"), settled("c4"), manifest("c4"))
    assert where(index.chunk_sources(Z)) == {(root, p("f"), 0, 30)}


def test_an_aborted_transaction_leaves_record_and_sources_as_they_were(store: Store) -> None:
    index = Index(store, ME)
    root = index.arena_root("a")
    index.put(root, p("f"), settled("c0"), manifest("c0"))
    with pytest.raises(RuntimeError), index.batch():
        index.put(root, p("g"), settled("c1"), manifest("c1"))
        index.delete(root, p("f"))
        assert where(index.chunk_sources(Y)) == {(root, p("g"), 0, 20)}  # the batch sees its own
        raise RuntimeError("crash before the commit")
    assert where(index.chunk_sources(Y)) == {(root, p("f"), 10, 20)}
    assert index.get(root, p("g")) is None and kept_matches_derived(store)


def test_a_version_3_store_gets_its_chunk_index(tmp_path: Path) -> None:
    with Store(tmp_path) as store:  # built by today's code, then taken back to version 3
        index = Index(store, ME)
        a, b = index.arena_root("a"), index.arena_root("b")
        index.put(a, p("d"), Record(KIND_DIR))
        index.put(a, p("d/f"), settled("c0"), manifest("c0"))
        index.put(a, p("g"), settled("c2"), manifest("c2"))
        index.put(b, p("h"), settled("c1"), manifest("c1"))
        index.put(b, p("h"), Record(KIND_FILE, 9, 2, 0o644, HASH["c1"], changed=True))  # pending
        index.put(b, p("k"), settled("c1"), manifest("c1"))
        before = {chunk: index.chunk_sources(chunk) for chunk in LENGTH}
    assert before[Y] and before[W]
    env = lmdb.open(str(tmp_path / "store"), max_dbs=16)
    meta, table = env.open_db(b"meta"), env.open_db(b"chunks")
    with env.begin(write=True) as txn:  # as version 3 left it: no chunk index
        txn.put(b"schema_version", struct.pack(">I", 3), db=meta)
        txn.drop(table, delete=True)
    env.close()
    with Store(tmp_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        index = Index(store, ME)
        assert {chunk: index.chunk_sources(chunk) for chunk in LENGTH} == before
        assert kept_matches_derived(store)
