"""A storm of random changes, through the mount and directly in the backing trees: once quiet,
the index holds exactly what is on disk (nothing lost, no ghost, nothing left waiting)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import random
from pathlib import Path

from blake3 import blake3

from realizefs.peers.identity import load_or_create
from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Index
from realizefs.store.schema import Store
from tests.support import Daemon, wait_for

OPS_PER_WORKER = 2500
_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2

Listing = dict[bytes, tuple[int, bytes | None]]  # path -> (kind, hash of a file)
Wrong = tuple[bytes, tuple[int, bytes | None], tuple[int, bytes | None]]  # path, on disk, indexed


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two paths atomically."""
    if _libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def storm(roots: list[str], seed: int, count: int) -> None:
    """*count* random creates, writes, renames, exchanges, deletes, mkdirs and directory moves."""
    rng = random.Random(seed)
    bases = [Path(r) for r in roots]

    def path() -> Path:
        p = rng.choice(bases)
        for _ in range(rng.randrange(0, 3)):
            p = p / f"d{rng.randrange(4)}"
        return p / rng.choice([f"d{rng.randrange(4)}", f"f{rng.randrange(6)}"])

    for _ in range(count):
        action = rng.random()
        a, b = path(), path()
        try:
            if action < 0.25:
                a.write_bytes(rng.randbytes(rng.randrange(0, 3000)))
            elif action < 0.35:
                with open(a, "ab") as f:
                    f.write(rng.randbytes(100))
            elif action < 0.5:
                a.mkdir()
            elif action < 0.7:
                os.rename(a, b)  # files and directories, within an arena or across the two trees
            elif action < 0.75:
                exchange(a, b)
            elif action < 0.85:
                a.unlink()
            else:
                a.rmdir()
        except OSError:
            pass  # missing, not empty, a directory into itself, across the mount...


def listing(root: Path) -> Listing:
    out: Listing = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        rel = os.path.relpath(dirpath, os.fsencode(root))
        prefix = b"" if rel == b"." else rel + b"/"
        for name in dirnames:
            out[prefix + name] = (KIND_DIR, None)
        for name in filenames:
            if not prefix and name == b".realize-arena":
                continue  # the arena's marker: not indexed
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                out[prefix + name] = (KIND_LINK, None)
            else:
                with open(full, "rb") as f:
                    out[prefix + name] = (KIND_FILE, blake3(f.read()).digest())
    return out


def indexed(index: Index, arena: str) -> Listing:
    out: Listing = {}
    todo: list[list[bytes]] = [[]]
    root = index.arena_root(arena)
    while todo:
        path = todo.pop()
        for name, record in index.children(root, path).items():
            out[b"/".join([*path, name])] = (record.kind, record.settled_hash)
            if record.kind == KIND_DIR:
                todo.append([*path, name])
    return out


def counts_match(d: Daemon) -> bool:
    status = json.loads((d.mountpoint / ".realize" / "status.json").read_text())
    for arena in status["arenas"]:
        disk = listing(d.root(arena["name"])).values()
        real = arena["real"]
        files = sum(1 for kind, _ in disk if kind == KIND_FILE)
        dirs = sum(1 for kind, _ in disk if kind == KIND_DIR)
        if (real["files"], real["directories"], real["pending"], real["gone"]) != (files, dirs, 0, 0):
            return False
    return True


def test_a_storm_of_changes_leaves_the_index_true_to_the_disk(base: Path) -> None:
    d = Daemon(base, arenas=(("a", "real"), ("b", "real")), extra='\n[consensus]\nrest = "50ms"\n')
    d.start()
    try:
        roots = [str(d.mnt("a")), str(d.root("a")), str(d.root("b")), str(d.mnt("b"))]
        workers = [
            multiprocessing.get_context("fork").Process(target=storm, args=(roots, seed, OPS_PER_WORKER))
            for seed in range(4)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
            assert w.exitcode == 0
        with contextlib.suppress(AssertionError):  # if it never does, the comparison below says how
            wait_for(lambda: counts_match(d), 30, "the index to catch up with the disk")
        d.stop()
    finally:
        d.kill()
    with Store(d.data_dir) as store:
        index = Index(store, load_or_create(d.data_dir).public_key[:8])
        found: dict[str, tuple[int, list[bytes], list[bytes], list[Wrong]]] = {}
        for arena in ("a", "b"):
            disk, known = listing(d.root(arena)), indexed(index, arena)
            lost = sorted(disk.keys() - known.keys())
            ghosts = sorted(known.keys() - disk.keys())
            wrong = sorted((p, disk[p], known[p]) for p in disk.keys() & known.keys() if disk[p] != known[p])
            found[arena] = (len(disk), lost, ghosts, wrong)
    assert all(not lost and not ghosts and not wrong for _, lost, ghosts, wrong in found.values()), found
