"""SIGKILL at any moment: after a restart the index matches the disk and the history is whole."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from pathlib import Path

from blake3 import blake3

from realizefs.peers.identity import load_or_create
from realizefs.store.index import KIND_FILE, Index
from realizefs.store.schema import Store
from tests.support import Daemon, wait_for


def writer(root: Path, stop: threading.Event, seed: int) -> None:
    """Create, rewrite, append to and delete small files as fast as it can."""
    rng = random.Random(seed)
    while not stop.is_set():
        name = root / f"f{rng.randrange(40)}"
        action = rng.random()
        try:
            if action < 0.15:
                name.unlink()
            elif action < 0.5:
                with open(name, "ab") as f:
                    f.write(rng.randbytes(rng.randrange(1, 5000)))
            else:
                name.write_bytes(rng.randbytes(rng.randrange(0, 70_000)))
        except FileNotFoundError:
            pass


def test_repeated_kills_during_a_burst_of_writes(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "100ms"\n')
    d.allowed_log.append("detached a dead mount")
    root = d.root()
    try:
        for round_ in range(4):
            d.start()
            stop = threading.Event()
            thread = threading.Thread(target=writer, args=(root, stop, round_))
            thread.start()
            wait_for(lambda: json.loads((d.mountpoint / ".realize" / "status.json").read_text()), 5, "status")
            threading.Event().wait(0.3 + 0.2 * round_)
            d.signal(signal.SIGKILL)
            assert d.proc is not None
            d.proc.wait()
            stop.set()
            thread.join()
        d.start()

        def settled() -> bool:
            real = json.loads((d.mountpoint / ".realize" / "status.json").read_text())["arenas"][0]["real"]
            return bool(real["scanned"]) and real["pending"] == 0

        wait_for(settled, 30, "the index to settle")
        d.stop()
    finally:
        d.kill()
    on_disk = {p.name.encode(): blake3(p.read_bytes()).digest() for p in root.iterdir()}
    with Store(d.data_dir) as store:
        index = Index(store, load_or_create(d.data_dir).public_key[:8])
        arena = index.arena_root("a")
        indexed = index.children(arena, [])
        assert {name: r.hash for name, r in indexed.items() if r.kind == KIND_FILE} == on_disk
        entries = index.history(arena, 1_000_000)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))  # no gap, no duplicate
    last: dict[bytes, bytes | None] = {}
    for e in entries:
        if e.op in ("create", "edit", "overwrite"):
            assert e.new is not None
            assert last.get(e.path) != e.new.hash, f"a duplicate entry for {e.path!r}"
            last[e.path] = e.new.hash
        elif e.op == "delete":
            last.pop(e.path, None)
    assert last == on_disk  # every present file's content reached the history; nothing deleted lingers
    assert os.stat(d.data_dir / "identity.key").st_mode & 0o777 == 0o600
