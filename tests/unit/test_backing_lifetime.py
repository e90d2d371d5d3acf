"""A backing tree closed while calls are under way: its root descriptor outlives them, never more."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from realizefs.errors import NotFound
from realizefs.real.backing import Backing


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_close_waits_for_the_calls_under_way(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    backing = Backing(tmp_path)
    with backing._root.use() as root_fd:  # a call under way, e.g. an indexer walk in a worker
        backing.close()  # a reload stops serving the arena meanwhile
        assert is_open(root_fd)  # its number cannot be reused under the call
        assert os.path.samefile(f"/proc/self/fd/{root_fd}", tmp_path)
        with pytest.raises(NotFound):
            backing.stat(b"f")  # no new call starts
    assert not is_open(root_fd) or not os.path.samefile(f"/proc/self/fd/{root_fd}", tmp_path)
    backing.close()  # twice is harmless


def test_a_walk_in_another_thread_never_lists_another_directory(tmp_path: Path) -> None:
    """Close while a thread lists over and over, then open other directories to take the number."""
    root, other = tmp_path / "root", tmp_path / "other"
    root.mkdir()
    other.mkdir()
    (root / "mine").write_text("x")
    (other / "not-mine").write_text("x")
    backing = Backing(root)
    seen: set[bytes] = set()
    started = threading.Event()

    def walk() -> None:
        while True:
            try:
                seen.update(name for name, _ in backing.listdir(b""))
            except NotFound:
                return
            started.set()

    thread = threading.Thread(target=walk)
    thread.start()
    started.wait()
    backing.close()
    fds = [os.open(other, os.O_RDONLY | os.O_DIRECTORY) for _ in range(8)]  # reuse freed numbers
    thread.join()
    for fd in fds:
        os.close(fd)
    assert seen == {b"mine"}
