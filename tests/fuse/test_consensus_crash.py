"""SIGKILL of a peer in the middle of consensus passes: nothing is lost, nothing is half-written.

Peer b is killed again and again, at seeded random moments, while a pass
fetches many files and a large one from a, moves what a renamed and removes
what a deleted; a keeps changing its tree between the kills. After each
kill, with b down, every file in b's Real is a content a wrote at that path
(never a half-written one); at the end b converges on a's tree, a's tree is
what a wrote (nothing of a's is lost or overwritten), and b's index and
history agree with its disk.

``REALIZEFS_CONSENSUS_KILLS`` sets the number of kills (CI runs a few; the
issue's hundred runs by hand: ``REALIZEFS_CONSENSUS_KILLS=100``).

After each kill b restarts and the two agree (a sees b hold every version it
holds) before a changes anything again: a kill between placing a peer's
version and recording it leaves the disk at that version and the index at
the one before; the restart records it as a change of b's, alike to a's,
which a pass merges, unless a changed the path again before: then it is a
false conflict, b keeps the old version, and the two never converge (a known
fault, not fixed yet). ``REALIZEFS_CONSENSUS_SETTLE=0`` lets a change come
while b is down, to show it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from realizefs.peers.identity import load_or_create
from realizefs.store.index import KIND_DIR, KIND_FILE, Index
from realizefs.store.schema import Store
from tests import support
from tests.fuse.test_consensus import facts, held_by, now
from tests.fuse.test_editors import settled
from tests.fuse.test_peers import connected
from tests.fuse.test_unreal import household
from tests.support import Daemon, wait_for

KILLS = int(os.environ.get("REALIZEFS_CONSENSUS_KILLS", "6"))
REST = '\n[consensus]\nrest = "2s"\n'
SETTLE = os.environ.get("REALIZEFS_CONSENSUS_SETTLE", "1") != "0"
OWN = {".realize-arena", ".realize-tmp"}


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path below *root* (the daemon's own names left out): a file's content hash, None
    for a directory, the target for a symlink."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        top = rel == "."
        dirnames[:] = [n for n in dirnames if not (top and n in OWN)]
        for n in dirnames:
            out[os.path.normpath(os.path.join(rel, n))] = None
        for n in (n for n in filenames if not (top and n in OWN)):
            p = Path(dirpath) / n
            key = os.path.normpath(os.path.join(rel, n))
            out[key] = os.readlink(p).encode() if p.is_symlink() else blake3(p.read_bytes()).digest()
    return out


def indexed(d: Daemon) -> tuple[dict[str, bytes | None], list[int]]:
    """*d*'s index of its Real, as `tree` shows a disk (*d* stopped), and its history's numbers."""
    out: dict[str, bytes | None] = {}
    with Store(d.data_dir) as store:
        index = Index(store, load_or_create(d.data_dir).public_key[:8])
        root = index.arena_root("a")

        def walk(path: list[bytes]) -> None:
            for name, r in index.children(root, path).items():
                if not r.here:
                    continue
                key = b"/".join([*path, name]).decode()
                if r.kind == KIND_DIR:
                    out[key] = None
                    walk([*path, name])
                else:
                    assert r.kind != KIND_FILE or not r.pending, f"{key}: not hashed"
                    out[key] = r.hash if r.kind == KIND_FILE else r.target

        walk([])
        seqs = [e.seq for e in index.history(root, 1_000_000)]
    return out, seqs


class Writer:
    """What a writes in its mount, and every content each path ever had."""

    def __init__(self, d: Daemon, rng: random.Random) -> None:
        self.d, self.rng = d, rng
        self.files: dict[str, bytes] = {}  # path -> content now
        self.seen: dict[str, set[bytes]] = {}  # path -> every content hash it had
        self.dirs: set[str] = set()  # directories made (a never removes one)

    def write(self, path: str, data: bytes) -> None:
        p = self.d.mnt() / path
        p.parent.mkdir(parents=True, exist_ok=True)
        parts = path.split("/")
        self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        p.write_bytes(data)
        self.files[path] = data
        self.seen.setdefault(path, set()).add(blake3(data).digest())

    def populate(self) -> None:
        for i in range(40):
            self.write(f"d{i % 4}/s{i % 3}/f{i}", self.rng.randbytes(self.rng.randrange(1, 200_000)))
        self.write("big.bin", self.rng.randbytes(24 << 20))  # three fetch blocks

    def churn(self) -> None:
        """A few renames, deletes, edits and new files."""
        names = sorted(p for p in self.files if p != "big.bin")
        if self.rng.random() < 0.5:
            self.write("big.bin", self.rng.randbytes(24 << 20))
        for _ in range(4):
            action = self.rng.random()
            path = self.rng.choice(names)
            if path not in self.files:
                continue
            if action < 0.35:  # a rename: b moves its copy
                new = f"{path}.r{self.rng.randrange(1000)}"
                os.rename(self.d.mnt() / path, self.d.mnt() / new)
                data = self.files.pop(path)
                self.files[new] = data
                self.seen.setdefault(new, set()).add(blake3(data).digest())
            elif action < 0.6 and len(names) > 20:
                os.remove(self.d.mnt() / path)
                del self.files[path]
            elif action < 0.85:
                self.write(path, self.rng.randbytes(self.rng.randrange(1, 100_000)))
            else:
                new = f"n{self.rng.randrange(4)}/new{self.rng.randrange(10_000)}"
                self.write(new, self.rng.randbytes(5000))

    def expected(self) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = dict.fromkeys(self.dirs)
        out.update((path, blake3(data).digest()) for path, data in self.files.items())
        return out

    def hashed(self) -> bool:
        return all(settled(self.d, p) for p in self.files)


def no_half_file(b: Daemon, w: Writer) -> None:
    """Every file in *b*'s Real is a content a wrote at that path."""
    for path, value in tree(b.root()).items():
        full = b.root() / path
        if value is None or full.is_symlink():
            continue
        assert stat.S_ISREG(full.lstat().st_mode)
        assert value in w.seen.get(path, set()), f"{path}: a content a never wrote there"


@pytest.mark.timeout(max(300, 20 * KILLS))
def test_kills_during_busy_passes_lose_nothing_and_converge(
    bases: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(support, "WATCHDOG_SECONDS", max(support.WATCHDOG_SECONDS, 18.0 * KILLS))
    rng = random.Random(11)
    staged = 0  # kills that found a fetch under way (something staged)
    with household(bases, extra=REST) as pair:  # what a restart finds changed is hashed soon
        a, b = pair.daemons
        b.allowed_log += ["detached a dead mount", "consensus: "]  # a pass cut short logs its failures
        a.allowed_log += ["consensus: "]
        w = Writer(a, rng)
        w.populate()
        wait_for(w.hashed, 60, "a's files hashed")
        for kill in range(KILLS):
            if b.proc is None or b.proc.poll() is not None:
                b.start()
                wait_for(lambda: connected(b, "a"), 20, "b connected to a")
                if SETTLE:
                    converge(b, w)
                    agree(a, b, w)
            if kill:
                w.churn()
                wait_for(w.hashed, 60, "a's changes hashed")
            now(b)
            threading.Event().wait(rng.uniform(0.0, 0.5))  # a moment of the pass, not a condition
            b.signal(signal.SIGKILL)
            assert b.proc is not None
            b.proc.wait()
            no_half_file(b, w)
            staged += bool(staging(b))
        b.start()
        wait_for(lambda: connected(b, "a"), 20, "b connected to a")
        converge(b, w)
        assert tree(a.root()) == w.expected()  # nothing of a's lost or overwritten
        wait_for(lambda: quiet(b), 30, "b's index settled")
        b.stop()
        b.start()  # a clean restart: its walk clears what the kills left staged
        wait_for(lambda: quiet(b), 30, "b's index settled")
        assert tree(b.root()) == w.expected()
        assert staging(b) == []
        b.stop()
    held, seqs = indexed(b)
    assert held == w.expected()  # b's index holds what its disk holds
    first = seqs[0] if seqs else 1  # pruning may have taken what a acknowledged
    assert seqs == list(range(first, first + len(seqs)))  # no gap, no duplicate
    print(f"{KILLS} kills of b, {staged} with a fetch under way; converged, nothing lost")


def converge(b: Daemon, w: Writer) -> None:
    """Wait until *b*'s Real is what a wrote (asking for passes)."""

    def converged() -> bool:
        if tree(b.root()) == w.expected() and facts(b)["last_full"]:
            return True
        now(b)
        return False

    try:
        wait_for(converged, 60, "b converged on a's tree")
    except AssertionError:
        t, e = tree(b.root()), w.expected()
        diff = {k: (t.get(k), e.get(k)) for k in sorted(set(t) | set(e)) if t.get(k) != e.get(k)}
        last = facts(b)["last"]
        raise AssertionError(f"b differs from a (b's, a's): {diff}; b's last pass: {last}") from None


def agree(a: Daemon, b: Daemon, w: Writer) -> None:
    """Wait until *a* knows *b* to hold, in its Real, the version of each file it holds."""

    def agreed() -> bool:
        if all(held_by(a, p) == b"b" for p in w.files):
            return True
        now(a)
        now(b)
        return False

    wait_for(agreed, 60, "a and b agreeing on every version")


def staging(d: Daemon) -> list[str]:
    try:
        return os.listdir(d.root() / ".realize-tmp")
    except FileNotFoundError:
        return []


def quiet(d: Daemon) -> bool:
    real = json.loads((d.mountpoint / ".realize" / "status.json").read_text())["arenas"][0]["real"]
    return bool(real["scanned"]) and real["pending"] == 0
