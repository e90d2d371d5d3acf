"""A burst that overflows inotify's queue: the daemon walks again and misses nothing."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import Daemon, wait_for

QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")
DEFAULT_QUEUE = 16384  # the kernel's


@contextmanager
def small_queue() -> Iterator[None]:
    """inotify instances created meanwhile get a 64-event queue (the machine's own setting after)."""
    before = max(int(QUEUE.read_text()), DEFAULT_QUEUE)  # never leave another run's 64 behind
    QUEUE.write_text("64\n")
    try:
        yield
    finally:
        QUEUE.write_text(f"{before}\n")


def start_with_a_small_queue(d: Daemon) -> None:
    with small_queue():  # only the daemon's inotify instance, made at its start, gets it
        d.start()


def test_nothing_is_missed_when_the_queue_overflows(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "100ms"\n')
    d.allowed_log.append("overflowed")
    start_with_a_small_queue(d)
    try:
        root = d.root()
        for i in range(20):
            directory = root / f"d{i}"
            directory.mkdir()
            for j in range(100):
                (directory / f"f{j}").write_bytes(b"%d-%d" % (i, j))
        with socket.socket(socket.AF_UNIX) as sock:  # a socket in the tree is not indexed
            sock.bind(str(root / "sock"))
        os.unlink(root / "d0" / "f0")

        def counts() -> tuple[int, int, int]:
            real = json.loads((d.mountpoint / ".realize" / "status.json").read_text())["arenas"][0]["real"]
            return real["files"], real["directories"], real["pending"]

        wait_for(lambda: counts() == (1999, 20, 0), 60, "every file indexed")
        assert "overflowed" in d.log()
        assert os.getxattr(d.mnt() / "d19" / "f99", "user.realize.hash")
        d.stop()
    finally:
        d.kill()
