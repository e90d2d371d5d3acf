"""The Unreal through real mounts: two daemons on loopback list each other's files.

What one peer writes, renames and deletes is listed on the other within
seconds (the rest period is long here: listing does not wait for it), with
its size, mtime and mode, as Unreal (no blocks, ``user.realize.status``
``unreal``); the lists survive restarts with every peer down; Unreal
entries keep their inode numbers across a restart.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from tests.fuse.test_peers import Pair, bases, connected  # noqa: F401 (bases: a fixture)
from tests.support import wait_for

REST = '\n[consensus]\nrest = "1h"\n'


def listed(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def connect(pair: Pair) -> None:
    for d in pair.daemons:
        d.allowed_log.append("refused")  # whichever reloads first refuses the other's first dial
    pair.configure(0, pair.entry(1))
    pair.configure(1, pair.entry(0))
    a, b = pair.daemons
    wait_for(lambda: connected(a, "b") and connected(b, "a"), 15, "a and b to connect")


def test_a_peers_files_are_listed_with_their_size_and_mtime(bases: list[Path]) -> None:  # noqa: F811
    pair = Pair(bases[:2], extra=REST)
    a, b = pair.daemons
    try:
        connect(pair)
        (a.mnt() / "docs").mkdir()
        report = a.mnt() / "docs" / "report.txt"
        report.write_bytes(b"x" * 5000)
        os.utime(report, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
        report.chmod(0o640)
        started = time.monotonic()
        there = b.mnt() / "docs" / "report.txt"
        st = wait_for(lambda: listed(there), 10, "the file listed on b")
        created = time.monotonic() - started
        assert st is not None
        assert st.st_size == 5000 and st.st_mtime_ns == 1_600_000_000_123_456_789
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_blocks == 0
        assert os.getxattr(there, "user.realize.status") == b"unreal"
        assert sorted(os.listdir(b.mnt())) == ["docs"] and os.listdir(b.mnt() / "docs") == ["report.txt"]
        assert not (b.root() / "docs").exists()  # nothing of it on b's disk
        # reading waits for the transfer of content (not yet): a clear error, never wrong bytes
        with pytest.raises(OSError) as info:
            there.read_bytes()
        assert info.value.errno == errno.EIO
        # an edit, a rename and a delete follow
        report.write_bytes(b"y" * 7000)
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == 7000, 10, "the edit")
        os.rename(report, a.mnt() / "docs" / "final.txt")
        wait_for(lambda: listed(there) is None and listed(b.mnt() / "docs" / "final.txt"), 10, "the rename")
        os.remove(a.mnt() / "docs" / "final.txt")
        wait_for(lambda: os.listdir(b.mnt() / "docs") == [], 10, "the delete")
        print(f"listed on the other peer after {created:.2f}s")
        pair.stop()
    finally:
        pair.kill()


def test_the_lists_survive_restarts_with_every_peer_down(bases: list[Path]) -> None:  # noqa: F811
    pair = Pair(bases[:2], extra=REST)
    a, b = pair.daemons
    try:
        connect(pair)
        (a.mnt() / "kept").write_bytes(b"k" * 123)
        st = wait_for(lambda: listed(b.mnt() / "kept"), 10, "the file listed on b")
        assert st is not None
        a.stop()
        b.stop()
        b.start()  # alone
        again = listed(b.mnt() / "kept")
        assert again is not None and again.st_size == 123 and again.st_ino == st.st_ino
        # b's own changes to the Unreal: a delete is recorded and kept
        os.remove(b.mnt() / "kept")
        assert listed(b.mnt() / "kept") is None
        b.stop()
        b.start()
        assert listed(b.mnt() / "kept") is None
        pair.stop()
    finally:
        pair.kill()


def test_making_a_file_in_an_unreal_directory_makes_the_directory_real(bases: list[Path]) -> None:  # noqa: F811
    pair = Pair(bases[:2], extra=REST)
    a, b = pair.daemons
    try:
        connect(pair)
        (a.mnt() / "shared" / "deep").mkdir(parents=True, mode=0o750)
        (a.mnt() / "shared" / "deep").chmod(0o750)
        (a.mnt() / "shared" / "deep" / "theirs").write_text("t")
        wait_for(lambda: listed(b.mnt() / "shared" / "deep" / "theirs"), 10, "listed on b")
        (b.mnt() / "shared" / "deep" / "mine").write_text("m")
        assert (b.root() / "shared" / "deep" / "mine").read_text() == "m"
        assert stat.S_IMODE((b.root() / "shared" / "deep").stat().st_mode) == 0o750
        assert sorted(os.listdir(b.mnt() / "shared" / "deep")) == ["mine", "theirs"]
        wait_for(lambda: listed(a.mnt() / "shared" / "deep" / "mine"), 10, "b's file listed on a")
        pair.stop()
    finally:
        pair.kill()
