"""Consensus applies a peer's change of kind at a path: a file replaced by a directory, a
directory by a file, a symlink by a file; with real daemons on loopback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.fuse.test_consensus import asked, history, now, shared
from tests.fuse.test_editors import settled
from tests.fuse.test_unreal import household
from tests.support import Daemon, wait_for


def real_on(d: Daemon, path: str, data: bytes) -> bool:
    try:
        return (d.root() / path).read_bytes() == data
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return False


def test_a_peers_change_of_kind_reaches_the_real(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        shared(a, b, "x", b"a file, then a directory")
        (a.mnt() / "d").mkdir()
        shared(a, b, "d/in.txt", b"in a directory, then the directory is a file")
        os.symlink("somewhere", a.mnt() / "l")
        wait_for(lambda: os.path.lexists(b.mnt() / "l"), 10, "the symlink listed on b")
        now(b)
        wait_for(lambda: os.path.islink(b.root() / "l"), 20, "the symlink made on b")

        os.remove(a.mnt() / "x")
        (a.mnt() / "x").mkdir()
        (a.mnt() / "x" / "inner.txt").write_bytes(b"inside x")
        shutil.rmtree(a.mnt() / "d")
        (a.mnt() / "d").write_bytes(b"d is a file now")
        os.remove(a.mnt() / "l")
        (a.mnt() / "l").write_bytes(b"l is a file now")
        for path in ("x/inner.txt", "d", "l"):
            wait_for(lambda path=path: settled(a, path), 20, f"{path} hashed on a")  # type: ignore[misc]
        wait_for(lambda: os.path.lexists(b.mnt() / "x" / "inner.txt"), 10, "listed on b")

        now(b)
        wait_for(lambda: real_on(b, "x/inner.txt", b"inside x"), 30, "x a directory on b")
        wait_for(lambda: real_on(b, "d", b"d is a file now"), 30, "d a file on b")
        wait_for(lambda: real_on(b, "l", b"l is a file now") and not os.path.islink(b.root() / "l"), 30, "l")
        assert (b.mnt() / "x" / "inner.txt").read_bytes() == b"inside x"
        assert (b.mnt() / "d").read_bytes() == b"d is a file now"
        assert asked(b) == [] and asked(a) == []
        assert history(b) == []  # taken from a, not changes of b's own
