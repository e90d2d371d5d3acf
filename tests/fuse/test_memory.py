"""The daemon's memory comes back once the kernel forgets what it was shown.

A tree of 30,000 files is shown through the mount (every inode looked up, so
the daemon holds a node and a pin for each), then deleted through it; once the
kernel has dropped its caches and the indexer has forgotten the deletes, the
daemon's anonymous memory is back within 20 MB of where it was before the
tree existed. Before the daemon ran on the system allocator and gave freed
pages back, 33 MB of freed memory stayed in pymalloc's arenas at this size.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from realizefs.memory import TRIM_LAZY, anonymous_bytes
from tests.support import Daemon, serving, wait_for

FILES = 30_000
DIRS = 100
MARGIN = 20 << 20


def anonymous(pid: int) -> int:
    return anonymous_bytes(Path(f"/proc/{pid}/status"))


def drop_kernel_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("2\n")  # dentries and inodes: the kernel forgets


@pytest.fixture
def daemon(base: Path) -> Iterator[Daemon]:
    yield from serving(Daemon(base, extra='\n[consensus]\nrest = "1s"\n'))


def test_the_daemon_runs_on_the_system_allocator(daemon: Daemon) -> None:
    assert daemon.proc is not None
    environ = Path(f"/proc/{daemon.proc.pid}/environ").read_bytes().split(b"\0")
    assert b"PYTHONMALLOC=malloc" in environ and b"MALLOC_ARENA_MAX=1" in environ


def test_memory_returns_after_a_large_tree_is_deleted(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid

    def indexer_idle() -> bool:
        [arena] = json.loads((daemon.mountpoint / ".realize" / "status.json").read_text())["arenas"]
        real = arena["real"]
        return bool(real["pending"] == 0 and real["gone"] == 0)

    wait_for(indexer_idle, 30, "the indexer idle")
    drop_kernel_caches()
    start = anonymous(pid)

    tree = daemon.root() / "tree"
    for d in range(DIRS):
        (tree / f"d{d}").mkdir(parents=True)
    for i in range(FILES):
        (tree / f"d{i % DIRS}" / f"f{i}").write_bytes(b"x" * 100)
    shown = 0
    for top, _, names in os.walk(daemon.mnt() / "tree"):  # the kernel looks every inode up
        for name in names:
            os.stat(os.path.join(top, name))
            shown += 1
    assert shown == FILES
    wait_for(
        lambda: (
            json.loads((daemon.mountpoint / ".realize" / "status.json").read_text())["arenas"][0]["real"][
                "files"
            ]
            == FILES
        ),
        120,
        "the tree indexed",
    )
    grown = anonymous(pid)
    subprocess.run(["rm", "-rf", str(daemon.mnt() / "tree")], check=True)
    drop_kernel_caches()
    wait_for(indexer_idle, 120, "the deletes forgotten")
    wait_for(lambda: anonymous(pid) <= start + MARGIN, TRIM_LAZY + 30, "the memory given back")
    assert grown > start + MARGIN  # the tree did take memory: the test measures something
