"""SIGKILL at any moment: a restart takes the mount back, the index matches the disk, the history is whole.

And what the restart must not take: a live, a stuck or a foreign mount on the mountpoint.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

from blake3 import blake3

from realizefs import mounttable
from realizefs.peers.identity import load_or_create
from realizefs.store.index import KIND_FILE, Index
from realizefs.store.schema import Store
from tests.support import Daemon, run_daemon, wait_for


def on_the_same_mountpoint(d: Daemon) -> Daemon:
    """A second daemon with its own data_dir and Real, configured to mount where *d* does."""
    other = Daemon(d.base / "other")
    other.config_path.write_text(
        other.config_path.read_text().replace(str(other.mountpoint), str(d.mountpoint))
    )
    return other


def test_restart_after_sigkill_detaches_the_dead_mount_the_kernel_still_stats(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        (d.mnt() / "f").write_text("kept")
        os.stat(d.mountpoint)  # the root's attributes are cached for an hour from here on
        d.signal(signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait()
        assert os.stat(d.mountpoint).st_ino == 1  # answered from the cache: stat cannot tell it is dead
        try:
            os.listdir(d.mountpoint)
            raise AssertionError("the mount still answers")
        except OSError as exc:
            assert exc.errno == errno.ENOTCONN
        d.allowed_log.append(f"detached a dead mount on {d.mountpoint} ")
        d.start()
        assert (d.mnt() / "f").read_text() == "kept"
        assert d.stop() == 0
        warnings = [line for line in d.log().splitlines() if " WARNING " in line]
        assert len(warnings) == 1 and str(d.mountpoint) in warnings[0]
    finally:
        d.kill()


def test_a_live_mount_is_refused_before_anything_is_created(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        other = on_the_same_mountpoint(d)
        result = run_daemon(other)
        assert result.returncode == 1
        assert d.proc is not None
        running = f"{d.mountpoint} is already a mount point: another realizefs (pid {d.proc.pid}) runs there"
        assert running in result.stderr
        assert sorted(os.listdir(other.data_dir)) == []  # no store, no lock, no identity key
        (d.mnt() / "still").write_text("works")
        assert (d.root() / "still").read_text() == "works"
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_stuck_realizefs_is_refused_not_detached(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        os.listdir(d.mountpoint)  # the root's cached attributes are stale now: a stat would wait
        d.signal(signal.SIGSTOP)
        try:
            result = run_daemon(on_the_same_mountpoint(d))
        finally:
            d.signal(signal.SIGCONT)
        assert result.returncode == 1
        assert d.proc is not None
        assert f"another realizefs (pid {d.proc.pid})" in result.stderr
        assert f"fusermount3 -u {d.mountpoint}" in result.stderr
        (d.mnt() / "still").write_text("works")
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_stuck_mount_no_daemon_holds_is_probed_and_refused(base: Path) -> None:
    """A realizefs mount whose daemon does not hold the mountpoint (one from before the lock)."""
    d = Daemon(base)
    d.start()
    try:
        lock = mounttable.lock_path(d.mountpoint)
        assert lock.exists()
        lock.unlink()  # as if it had never taken it
        os.listdir(d.mountpoint)
        d.signal(signal.SIGSTOP)
        try:
            result = run_daemon(on_the_same_mountpoint(d))
        finally:
            d.signal(signal.SIGCONT)
        assert result.returncode == 1
        assert "does not answer" in result.stderr and f"fusermount3 -u {d.mountpoint}" in result.stderr
        (d.mnt() / "still").write_text("works")
        assert d.stop() == 0
    finally:
        d.kill()


def test_two_daemons_starting_at_once_cannot_both_mount(base: Path) -> None:
    """The check and the mount are one step: while another process holds the mountpoint, nobody mounts."""
    d = Daemon(base)
    d.mountpoint.mkdir()
    held = mounttable.lock(d.mountpoint)  # another daemon, between its check and its mount
    try:
        result = run_daemon(d)
        assert result.returncode == 1
        assert f"another realizefs (pid {os.getpid()}) runs there" in result.stderr
        assert not os.path.ismount(d.mountpoint)
    finally:
        os.close(held)
    d.start()  # once it lets go, the mountpoint is free
    try:
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_foreign_filesystem_on_the_mountpoint_is_refused_and_left_alone(base: Path) -> None:
    d = Daemon(base)
    d.mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "elsewhere", str(d.mountpoint)], check=True)
    try:
        result = run_daemon(d)
        assert result.returncode == 1
        assert f"{d.mountpoint} is already a mount point (tmpfs from elsewhere)" in result.stderr
        assert os.path.ismount(d.mountpoint)
        assert not (d.data_dir / "store").exists()
    finally:
        subprocess.run(["umount", str(d.mountpoint)], check=True)


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
    on_disk = {
        p.name.encode(): blake3(p.read_bytes()).digest() for p in root.iterdir() if p.name != ".realize-arena"
    }
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
