"""The chunk index filled by the real indexer from a real backing tree: each source's bytes are the chunk.

Uses the indexer test's clocks and helpers (`tests.component.test_indexer`): time
is a `MockClock`, the files' mtimes are long past, so each is hashed at the first look.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from realizefs.real.backing import Backing
from realizefs.real.indexer import Indexer, parts
from realizefs.store.index import Index
from realizefs.store.schema import Store
from tests.component.test_indexer import OLD, Clocks, make, running, settled, until

MIB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    (tmp_path / "data").mkdir()
    with Store(tmp_path / "data") as s:
        yield s


def names(rel: bytes) -> tuple[bytes, ...]:
    return tuple(parts(rel))


def chunk_hashes(index: Index, root: int, rel: bytes) -> list[bytes]:
    record = index.get(root, parts(rel))
    assert record is not None and record.hash is not None
    manifest = index.manifest(record.hash)
    assert manifest is not None
    return [chunk for _, _, chunk in manifest]


def read(tree: Path, path: tuple[bytes, ...], offset: int, length: int) -> bytes:
    with open(os.path.join(os.fsencode(tree), *path), "rb") as f:
        f.seek(offset)
        return f.read(length)


def walk(store: Store, clocks: Clocks, tree: Path) -> Indexer:
    indexer = make(store, clocks, Backing(tree))

    async def start(condition: Callable[[], object]) -> None:
        async with running(indexer):
            await until(condition)

    clocks.run(lambda: start(settled(indexer)))
    return indexer


def test_every_source_holds_its_chunk_and_shared_chunks_list_both_files(store: Store, tmp_path: Path) -> None:
    rng = random.Random(7)
    shared = rng.randbytes(2 * MIB)
    tree = tmp_path / "real"
    (tree / "d").mkdir(parents=True)
    (tree / "one").write_bytes(rng.randbytes(MIB // 2) + shared)
    (tree / "d" / "two").write_bytes(shared + rng.randbytes(MIB // 2))
    for path in (tree / "one", tree / "d" / "two"):
        os.utime(path, ns=(OLD, OLD))
    clocks = Clocks()
    indexer = walk(store, clocks, tree)
    index = indexer.index
    root = index.arena_root("a")
    one, two = chunk_hashes(index, root, b"one"), chunk_hashes(index, root, b"d/two")
    common = set(one) & set(two)
    assert len(common) >= 10  # FastCDC finds the shared run's cuts in both files
    for chunk in set(one) | set(two):
        sources = index.chunk_sources(chunk)
        holders = {s.path for s in sources}
        assert holders == {
            p for p, hashes in ((names(b"one"), one), (names(b"d/two"), two)) if chunk in hashes
        }
        for s in sources:
            assert s.root == root and blake3(read(tree, s.path, s.offset, s.length)).digest() == chunk
    # while the daemon is down, one file is replaced and the other renamed: the next walk
    # leaves no source of the old content, and the renamed file's sources under its new path
    (tree / "one").write_bytes(b"something else")
    os.utime(tree / "one", ns=(OLD, OLD + 1))
    os.rename(tree / "d", tree / "e")
    indexer = walk(store, clocks, tree)
    for chunk in set(one) - set(two):
        assert indexer.index.chunk_sources(chunk) == []
    for chunk in two:
        (source,) = indexer.index.chunk_sources(chunk)
        assert source.path == names(b"e/two")
        assert blake3(read(tree, source.path, source.offset, source.length)).digest() == chunk
