"""RENAME_EXCHANGE of two directories and of two files, through the mount and in the backing
tree: afterwards the index holds both sides, and the history tells what each path holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from blake3 import blake3

from realizefs.peers.identity import load_or_create
from realizefs.store.index import Index
from realizefs.store.schema import Store
from tests.fuse.test_index_stress import exchange, indexed, listing
from tests.support import Daemon, wait_for


def replay(entries: list[tuple[str, bytes, bytes | None, bytes | None]]) -> dict[bytes, bytes | None]:
    """What the history says each path holds: file -> hash, directory -> None."""
    state: dict[bytes, bytes | None] = {}
    for op, path, old_path, new in entries:
        if op in ("create", "edit", "overwrite"):
            state[path] = new
        elif op == "mkdir":
            state[path] = None
        elif op in ("delete", "rmdir"):
            state.pop(path, None)
        elif op == "rename" and old_path is not None:
            for p in [p for p in state if p == path or p.startswith(path + b"/")]:
                del state[p]
            for p in [p for p in state if p == old_path or p.startswith(old_path + b"/")]:
                state[path + p[len(old_path) :]] = state.pop(p)
        elif op == "exchange" and old_path is not None:  # the two paths swap, with all below them
            here = {p: state.pop(p) for p in [q for q in state if q == path or q.startswith(path + b"/")]}
            there = {
                p: state.pop(p) for p in [q for q in state if q == old_path or q.startswith(old_path + b"/")]
            }
            state.update({old_path + p[len(path) :]: h for p, h in here.items()})
            state.update({path + p[len(old_path) :]: h for p, h in there.items()})
    return state


@pytest.mark.parametrize("where", ["mount", "backing"])
def test_exchanges_lose_neither_side(base: Path, where: str) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "50ms"\n')
    d.start()
    try:
        top = d.mnt() if where == "mount" else d.root()
        for name in ("A", "B"):
            (top / name).mkdir()
            (top / name / f"{name.lower()}1").write_bytes(name.encode() * 10)
        (top / "F1").write_bytes(b"one")
        (top / "F2").write_bytes(b"two!")
        status = d.mountpoint / ".realize" / "status.json"

        def settled(files: int) -> bool:
            real = json.loads(status.read_text())["arenas"][0]["real"]
            return bool(real["files"] == files and real["pending"] == 0)

        wait_for(lambda: settled(4), 20, "the files to be indexed")
        exchange(top / "A", top / "B")
        exchange(top / "F1", top / "F2")

        def hash_of(rel: str) -> bytes | None:
            try:
                return bytes.fromhex(_xattr(d.mnt() / rel))
            except OSError:
                return None

        wait_for(lambda: hash_of("B/a1") == blake3(b"A" * 10).digest(), 20, "B/a1 to be indexed")
        wait_for(lambda: hash_of("A/b1") == blake3(b"B" * 10).digest(), 20, "A/b1 to be indexed")
        wait_for(lambda: hash_of("F2") == blake3(b"one").digest(), 20, "F2 to be indexed")
        wait_for(lambda: hash_of("F1") == blake3(b"two!").digest(), 20, "F1 to be indexed")
        d.stop()
    finally:
        d.kill()
    with Store(d.data_dir) as store:
        index = Index(store, load_or_create(d.data_dir).public_key[:8])
        assert indexed(index, "a") == listing(d.root())
        history = index.history(index.arena_root("a"), 1000)
    replayed = replay([(e.op, e.path, e.old_path, e.new.hash if e.new else None) for e in history])
    assert replayed == {path: content for path, (_, content) in listing(d.root()).items()}


def _xattr(path: Path) -> str:
    return os.getxattr(path, "user.realize.hash").decode()
