"""The Unreal through real mounts: two daemons on loopback list each other's files.

What one peer writes, renames and deletes is listed on the other within
seconds (the rest period is long here: listing does not wait for it), with
its size, mtime and mode, as Unreal (no blocks, ``user.realize.status``
``unreal``); the lists survive restarts with every peer down; Unreal
entries keep their inode numbers across a restart.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.fuse.test_peers import Pair, connected
from tests.support import wait_for

REST = '\n[consensus]\nrest = "1h"\n'


def listed(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def connect(pair: Pair) -> None:
    """Make every daemon of *pair* a peer of every other, and wait until all are connected."""
    names = "abc"[: len(pair.daemons)]
    for d in pair.daemons:
        d.allowed_log.append("refused")  # whichever reloads first refuses the other's first dial
    entries = [pair.entry(i) for i in range(len(names))]
    for i in range(len(names)):
        pair.configure(i, *[e for j, e in enumerate(entries) if j != i])
    wait_for(
        lambda: all(
            connected(d, other)
            for d, me in zip(pair.daemons, names, strict=True)
            for other in names
            if other != me
        ),
        20,
        "every peer connected",
    )


@contextmanager
def household(bases: list[Path], n: int = 2, extra: str = REST) -> Iterator[Pair]:
    """*n* daemons, each the peer of every other, connected; stopped (their logs checked) after."""
    pair = Pair(bases[:n], extra=extra)
    try:
        connect(pair)
        yield pair
        pair.stop()
    finally:
        pair.kill()


def test_a_peers_files_are_listed_with_their_size_and_mtime(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
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
        assert st.st_size == 5000 and st.st_mtime_ns == 1_600_000_000_123_456_789 and st.st_blocks == 0
        wait_for(
            lambda: (s := listed(there)) is not None and stat.S_IMODE(s.st_mode) == 0o640, 10, "the mode"
        )
        # a change of attributes only reaches the kernel's cache too: once a later change is
        # listed (the list is in order), the kernel shows it, well within its cache lifetime
        report.chmod(0o600)
        (a.mnt() / "barrier").write_text("after the chmod")
        wait_for(lambda: listed(b.mnt() / "barrier"), 10, "a later change")
        assert stat.S_IMODE(there.stat().st_mode) == 0o600
        assert os.getxattr(there, "user.realize.status") == b"unreal 0% cached"
        assert os.getxattr(there, "user.realize.peers") == b"a"  # a holds it in its Real
        assert os.getxattr(report, "user.realize.peers") == b""  # nobody else does
        assert "user.realize.peers" not in os.listxattr(there)  # computed: not listed
        with pytest.raises(OSError) as no_acl:  # an Unreal entry has no ACL: its mode bits hold
            os.getxattr(there, "system.posix_acl_access")
        assert no_acl.value.errno == errno.ENODATA
        assert sorted(os.listdir(b.mnt())) == ["barrier", "docs"]
        assert os.listdir(b.mnt() / "docs") == ["report.txt"]
        assert not (b.root() / "docs").exists()  # nothing of it on b's disk
        assert there.read_bytes() == b"x" * 5000  # fetched from a
        assert os.getxattr(there, "user.realize.status") == b"unreal 100% cached"
        # an edit, a rename and a delete follow
        report.write_bytes(b"y" * 7000)
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == 7000, 10, "the edit")
        os.rename(report, a.mnt() / "docs" / "final.txt")
        wait_for(lambda: listed(there) is None and listed(b.mnt() / "docs" / "final.txt"), 10, "the rename")
        os.remove(a.mnt() / "docs" / "final.txt")
        wait_for(lambda: os.listdir(b.mnt() / "docs") == [], 10, "the delete")
        print(f"listed on the other peer after {created:.2f}s")


def test_the_lists_survive_restarts_with_every_peer_down(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
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


def test_making_a_file_in_an_unreal_directory_makes_the_directory_real(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        (a.mnt() / "shared" / "deep").mkdir(parents=True, mode=0o750)
        (a.mnt() / "shared" / "deep").chmod(0o750)
        (a.mnt() / "shared" / "deep" / "theirs").write_text("t")
        wait_for(lambda: listed(b.mnt() / "shared" / "deep" / "theirs"), 10, "listed on b")
        (b.mnt() / "shared" / "deep" / "mine").write_text("m")
        assert (b.root() / "shared" / "deep" / "mine").read_text() == "m"
        assert stat.S_IMODE((b.root() / "shared" / "deep").stat().st_mode) == 0o750
        assert sorted(os.listdir(b.mnt() / "shared" / "deep")) == ["mine", "theirs"]
        wait_for(lambda: listed(a.mnt() / "shared" / "deep" / "mine"), 10, "b's file listed on a")


def test_an_unreal_file_is_read_on_demand_and_again_from_the_cache(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        rng = random.Random(7)
        data = rng.randbytes(12 << 20)  # about 190 chunks
        (a.mnt() / "big.bin").write_bytes(data)
        there = b.mnt() / "big.bin"
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == len(data), 20, "listed on b")
        with open(there, "rb") as f:  # random reads fetch only what they cover
            for _ in range(40):
                offset = rng.randrange(len(data))
                size = rng.choice([1, 4096, 65536, 300_000])
                f.seek(offset)
                assert f.read(size) == data[offset : offset + size], offset
        status = os.getxattr(there, "user.realize.status").decode()
        assert status.startswith("unreal ") and status != "unreal 100% cached", status
        assert there.read_bytes() == data  # sequentially, all of it
        assert os.getxattr(there, "user.realize.status") == b"unreal 100% cached"
        a.stop()
        wait_for(lambda: not connected(b, "a"), 20, "b to see a gone")
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"], check=True)
        assert there.read_bytes() == data  # from b's cache alone


@pytest.mark.parametrize("others", [0, 1])
def test_a_corrupted_chunk_is_refused_and_taken_from_another_peer_or_eio(
    bases: list[Path],
    others: int,
) -> None:
    with household(bases, 2 + others) as pair:
        a, b = pair.daemons[:2]
        b.allowed_log.append("does not match its hash")
        data = random.Random(3).randbytes(300_000)
        (a.mnt() / "f").write_bytes(data)
        wait_for(lambda: listed(b.mnt() / "f"), 20, "listed on b")
        if others:  # c holds the same file, served honestly
            c = pair.daemons[2]
            wait_for(lambda: listed(c.mnt() / "f"), 20, "listed on c")
            (c.mnt() / "f").read_bytes()  # now in c's cache: c can serve it
        a.stop()
        a.start(env={"REALIZEFS_TEST_CORRUPT_CHUNKS": "1"})  # a now serves every chunk damaged
        wait_for(lambda: connected(b, "a"), 20, "b and a to connect again")
        if others:
            assert (b.mnt() / "f").read_bytes() == data
        else:
            with pytest.raises(OSError) as info:
                (b.mnt() / "f").read_bytes()
            assert info.value.errno == errno.EIO
        assert "does not match its hash" in b.log()


def test_the_cache_stays_within_its_quota(bases: list[Path]) -> None:
    with household(bases, extra=REST + '[cache]\nmax_size = "4M"\nmin_free = "0"\n') as pair:
        a, b = pair.daemons
        data = random.Random(5).randbytes(12 << 20)
        (a.mnt() / "big.bin").write_bytes(data)
        there = b.mnt() / "big.bin"
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == len(data), 20, "listed on b")
        assert there.read_bytes() == data
        assert there.read_bytes() == data  # again: partly evicted, fetched again

        def cache() -> dict[str, int]:
            stats: dict[str, int] = json.loads((b.mountpoint / ".realize" / "status.json").read_text())[
                "cache"
            ]
            return stats

        wait_for(lambda: cache()["evictions"] > 0, 10, "evictions")
        assert 0 < cache()["used"] <= 4 << 20
        assert "cache: " in (b.mountpoint / ".realize" / "status").read_text()


def test_a_delete_is_not_undone_by_a_peer_that_missed_it(bases: list[Path]) -> None:
    with household(bases, 3) as pair:
        a, b, c = pair.daemons
        (a.mnt() / "doomed").write_text("soon gone\n")
        wait_for(lambda: listed(b.mnt() / "doomed") and listed(c.mnt() / "doomed"), 20, "listed on b and c")
        c.stop()  # c misses the delete
        os.remove(a.mnt() / "doomed")
        wait_for(lambda: listed(b.mnt() / "doomed") is None, 20, "the delete on b")
        a.stop()  # c will hear only from b, which has the tombstone, and tells b its old version
        c.start()
        wait_for(lambda: connected(c, "b") and connected(b, "c"), 20, "c back")
        wait_for(lambda: listed(c.mnt() / "doomed") is None, 20, "the delete reaching c")
        a.start()
        wait_for(lambda: connected(a, "b") and connected(a, "c"), 20, "a back")
        (a.mnt() / "barrier").write_text("after\n")  # once this is everywhere, so is all before it
        wait_for(lambda: listed(b.mnt() / "barrier") and listed(c.mnt() / "barrier"), 20, "the barrier")
        for d in (a, b, c):
            assert listed(d.mnt() / "doomed") is None


def test_writing_to_an_unreal_file_makes_it_real_first(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        data = random.Random(11).randbytes(3 << 20)
        (a.mnt() / "doc").mkdir()
        (a.mnt() / "doc" / "edited.bin").write_bytes(data)
        os.utime(a.mnt() / "doc" / "edited.bin", ns=(1_500_000_000_000_000_000,) * 2)
        (a.mnt() / "doc" / "replaced.txt").write_text("old text\n")
        there = b.mnt() / "doc" / "edited.bin"
        wait_for(lambda: listed(there) and listed(b.mnt() / "doc" / "replaced.txt"), 20, "listed on b")
        wait_for(lambda: there.stat().st_mtime_ns == 1_500_000_000_000_000_000, 20, "the mtime on b")
        # a write in the middle: the whole content is fetched, placed, then written to
        with open(there, "r+b") as f:
            assert f.read(5) == data[:5]  # read as Unreal before the first change
            f.seek(1 << 20)
            f.write(b"CHANGED")
        expected = data[: 1 << 20] + b"CHANGED" + data[(1 << 20) + 7 :]
        assert (b.root() / "doc" / "edited.bin").read_bytes() == expected  # in b's Real now
        assert there.read_bytes() == expected
        assert os.getxattr(there, "user.realize.status") == b"real"
        assert ".realize-tmp" not in os.listdir(b.mnt())  # the staging directory is b's own
        assert os.listdir(b.root() / ".realize-tmp") == []  # nothing left staged
        # truncated on open: nothing is fetched (a is down) and the new content is b's
        a.stop()
        (b.mnt() / "doc" / "replaced.txt").write_text("new text\n")
        assert (b.root() / "doc" / "replaced.txt").read_text() == "new text\n"

        def history() -> list[dict[str, str]]:
            entries: list[dict[str, str]] = json.loads(
                (b.mountpoint / ".realize" / "history.json").read_text()
            )["arenas"]["a"]
            return entries

        # b's writes are b's changes, once hashed (the staged files are in no entry)
        wait_for(
            lambda: {"doc/edited.bin", "doc/replaced.txt"} <= {e["path"] for e in history()}, 20, "history"
        )
        assert not any(".realize-tmp" in e["path"] for e in history())
        # a staged file a crash left behind is removed at the next start, and never indexed
        leftover = b.root() / ".realize-tmp" / "0123456789abcdef"
        leftover.write_bytes(b"half a realize")
        os.utime(leftover, ns=(1_000_000_000_000_000_000,) * 2)
        b.stop()
        b.start()
        wait_for(lambda: not leftover.exists(), 20, "the leftover removed")


def test_two_handles_open_on_an_unreal_file_can_both_write(bases: list[Path]) -> None:
    """Two handles opened for writing while the file is Unreal: the first write realizes
    it; the second handle's write failed with EEXIST ("File exists": its own realize
    found the Real file the first one placed, `RENAME_NOREPLACE`) and its data was lost
    (after fetching the whole content again)."""
    with household(bases) as pair:
        a, b = pair.daemons
        data = random.Random(13).randbytes(300_000)
        (a.mnt() / "shared.bin").write_bytes(data)
        there = b.mnt() / "shared.bin"
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == len(data), 20, "listed on b")
        first = os.open(there, os.O_RDWR)
        second = os.open(there, os.O_RDWR)
        try:
            assert os.pwrite(first, b"FIRST", 1000) == 5
            assert os.pwrite(second, b"SECOND", 200_000) == 6
        finally:
            os.close(first)
            os.close(second)
        expected = bytearray(data)
        expected[1000:1005] = b"FIRST"
        expected[200_000:200_006] = b"SECOND"
        assert (b.root() / "shared.bin").read_bytes() == bytes(expected)
        assert os.listdir(b.root() / ".realize-tmp") == []


def test_a_handle_never_reads_a_newer_version_than_the_one_it_opened(bases: list[Path]) -> None:
    """A version replacing the one a handle has open (atomically, by a rename on a) is another
    object: what another reader reads of it never lands in the page cache the handle reads
    (found by the breaker: the first MiB was the old version, the rest the new one)."""
    with household(bases) as pair:
        a, b = pair.daemons
        old, new = random.Random(1).randbytes(8 << 20), random.Random(2).randbytes(8 << 20)
        (a.mnt() / "doc.tmp").write_bytes(old)
        os.rename(a.mnt() / "doc.tmp", a.mnt() / "doc")
        there = b.mnt() / "doc"
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == len(old), 20, "listed on b")
        with open(there, "rb", buffering=0) as handle:
            read = handle.read(1 << 20)
            assert read == old[: 1 << 20]
            (a.mnt() / "doc.tmp").write_bytes(new)
            os.utime(a.mnt() / "doc.tmp", ns=(1, 1))
            os.rename(a.mnt() / "doc.tmp", a.mnt() / "doc")
            wait_for(
                lambda: (s := listed(there)) is not None and s.st_mtime_ns == 1, 20, "the new version on b"
            )
            assert there.read_bytes() == new  # another reader
            with contextlib.suppress(OSError):  # EIO is allowed: the old version is gone from a's Real
                while part := handle.read(1 << 20):
                    read += part
        assert read == old[: len(read)], f"the handle read bytes of the new version (of {len(read)} read)"


def test_a_directory_made_real_stays_usable_through_handles_opened_on_it(bases: list[Path]) -> None:
    """A shell cd'd into an Unreal-only directory (or any open directory handle): writing a
    file there makes the directory Real; it is the same directory (found by the breaker:
    `ls` there failed with ESTALE, a directory handle listed nothing)."""
    with household(bases) as pair:
        a, b = pair.daemons
        (a.mnt() / "dir" / "sub").mkdir(parents=True)
        (a.mnt() / "dir" / "sub" / "f").write_text("one\n")
        (a.mnt() / "dir" / "sub" / "g").write_text("two\n")
        there = b.mnt() / "dir" / "sub"
        wait_for(lambda: listed(there / "f") and listed(there / "g"), 20, "listed on b")
        cwd = os.open(there, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with open(there / "f", "a") as f:  # makes dir/sub Real on b
                f.write("more\n")
            assert sorted(os.listdir(cwd)) == ["f", "g"]
            assert os.stat("g", dir_fd=cwd).st_size == 4
            fd = os.open("f", os.O_RDONLY, dir_fd=cwd)
            try:
                assert os.read(fd, 100) == b"one\nmore\n"
            finally:
                os.close(fd)
        finally:
            os.close(cwd)
