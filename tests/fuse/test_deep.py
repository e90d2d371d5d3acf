"""Paths of any depth: a tree three times PATH_MAX deep works as on ext4, and the index holds it."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import Daemon, serving, wait_for

NAME = "d" * 200
LEVELS = 3 * 4096 // (len(NAME) + 1) + 1  # deeper than three PATH_MAX


@contextmanager
def descend(top: str, levels: int, make: bool) -> Iterator[int]:
    """A descriptor of the directory *levels* below *top*, walked one name at a time."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            if make:
                os.mkdir(NAME, 0o755, dir_fd=fd)
            step = os.open(NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


@pytest.fixture
def daemon(base: Path) -> Iterator[Daemon]:
    d = Daemon(base, extra='\n[consensus]\nrest = "100ms"\n')
    yield from serving(d)


def hashed(path: str) -> bool:
    try:
        return bool(os.getxattr(path, "user.realize.hash"))
    except OSError:
        return False  # ENODATA until it is indexed


def test_a_tree_three_path_max_deep_works_as_on_disk(daemon: Daemon) -> None:
    with descend(str(daemon.mnt()), LEVELS, make=True) as deep:
        fd = os.open("f", os.O_CREAT | os.O_RDWR, 0o644, dir_fd=deep)
        try:
            os.write(fd, b"deep down")
        finally:
            os.close(fd)
        os.chmod("f", 0o600, dir_fd=deep)
        os.truncate(f"/proc/self/fd/{deep}/f", 4)  # truncate by path, below PATH_MAX through /proc
        os.setxattr(f"/proc/self/fd/{deep}/f", "user.note", b"x")
        assert os.getxattr(f"/proc/self/fd/{deep}/f", "user.note") == b"x"
        os.rename("f", "g", src_dir_fd=deep, dst_dir_fd=deep)
        os.symlink("g", "l", dir_fd=deep)
        assert os.readlink("l", dir_fd=deep) == "g"
        st = os.stat("g", dir_fd=deep)
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_size == 4
        assert sorted(os.listdir(deep)) == ["g", "l"]
        fd = os.open("g", os.O_RDONLY, dir_fd=deep)
        try:
            assert os.read(fd, 100) == b"deep"
        finally:
            os.close(fd)
        wait_for(lambda: hashed(f"/proc/self/fd/{deep}/g"), 60, "the deep file hashed")
    with descend(str(daemon.root()), LEVELS, make=False) as backing:
        assert os.stat("g", dir_fd=backing).st_size == 4  # on the disk, where it belongs
    assert "File name too long" not in daemon.log()
    subprocess.run(["rm", "-rf", str(daemon.mnt() / NAME)], check=True)
    assert not os.path.exists(daemon.root() / NAME)
