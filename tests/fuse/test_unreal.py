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

from tests.fuse.test_peers import Pair, connected, peers
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


def test_realize_peers_shows_each_peers_following_and_transfers(bases: list[Path]) -> None:
    """``.realize/peers`` printed "pending history: -, transfers: none" whatever happened: it
    shows how far each side's following of the arena has come, and the chunks moved since
    the peer connected, both ways; a peer gone is shown disconnected, with why."""
    with household(bases) as pair:
        a, b = pair.daemons
        data = random.Random(5).randbytes(3 << 20)
        (a.mnt() / "one.bin").write_bytes(data)
        (a.mnt() / "two.txt").write_text("two")
        there = b.mnt() / "one.bin"
        wait_for(lambda: listed(b.mnt() / "two.txt"), 20, "listed on b")
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == len(data), 20, "listed on b")
        assert there.read_bytes() == data  # fetched from a
        seen = peers(b)["a"]
        moved = seen["transfers"]
        assert moved["lane_bytes_in"] + moved["control_bytes_in"] >= len(data)
        assert moved["lane_chunks_in"] + moved["control_chunks_in"] >= 40
        assert moved["lane_in_flight"] == moved["control_asking"] == 0
        given = peers(a)["b"]["transfers"]
        assert given["lane_bytes_out"] + given["control_bytes_out"] >= len(data)
        assert seen["lists"]["a"]["taken"]["records"] >= 2 and seen["lists"]["a"]["taken"]["last"] >= 2
        # a tells b everything it holds: nothing left to send, sent up to its latest number
        wait_for(lambda: peers(a)["b"]["lists"]["a"]["sent"]["not_sent"] == 0, 20, "a to have sent all")
        sent = peers(a)["b"]["lists"]["a"]["sent"]
        assert sent["last"] == sent["latest"] >= seen["lists"]["a"]["taken"]["last"] and sent["records"] >= 2
        text = (b.mountpoint / ".realize" / "peers").read_text()
        assert "pending history" not in text and "transfers: none" not in text
        assert "chunks since it connected: bulk lanes" in text and "arena a: took its records up to #" in text
        a.stop()
        wait_for(lambda: not connected(b, "a"), 20, "b to see a gone")
        gone = peers(b)["a"]
        assert gone["state"] == "disconnected" and gone["last_error"] and gone["connected_at"]
        assert gone["transfers"] is None and gone["lists"] == {}
        text = (b.mountpoint / ".realize" / "peers").read_text()
        assert "disconnected since" in text and f"last connected {gone['connected_at']}; last error: " in text


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


def test_truncating_an_unreal_file_to_a_non_zero_size_realizes_it(bases: list[Path]) -> None:
    """`truncate -s 5` (or ftruncate of a handle opened for writing) of an Unreal file
    failed with EIO ("changing an Unreal file is not possible yet"): only a truncate to
    0 and writes realize it, though a truncate is a change of its content like a write
    (docs/design.md lists only chmod and utime alone as refused)."""
    with household(bases) as pair:
        a, b = pair.daemons
        (a.mnt() / "log.txt").write_text("0123456789\n")
        (a.mnt() / "data.txt").write_text("abcdefghij\n")
        wait_for(lambda: listed(b.mnt() / "log.txt") and listed(b.mnt() / "data.txt"), 20, "listed on b")
        os.truncate(b.mnt() / "log.txt", 5)
        assert (b.root() / "log.txt").read_bytes() == b"01234"
        with open(b.mnt() / "data.txt", "r+b") as f:
            f.truncate(3)
        assert (b.root() / "data.txt").read_bytes() == b"abc"


MTIME = 1_400_000_000_000_000_000  # `touch -d @1400000000`


def test_changing_an_unreal_files_attributes_makes_it_real_first(bases: list[Path]) -> None:
    """chmod, chown, touch -d and truncate -s (larger, smaller) of a file b holds only in
    its Unreal failed with EIO; each now fetches it, places it in b's Real, and changes
    that: the content is the version's, the change b's, and a peer holding it only in
    its Unreal (c) lists b's new version."""
    with household(bases, 3) as pair:
        a, b, c = pair.daemons
        data = random.Random(17).randbytes(200_000)
        names = ["chmod", "chown", "touch", "longer", "shorter"]
        for name in names:
            (a.mnt() / name).write_bytes(data)
            (a.mnt() / name).chmod(0o644)
        wait_for(lambda: all(listed(d.mnt() / n) for d in (b, c) for n in names), 20, "listed on b and c")
        held = {n: os.open(b.mnt() / n, os.O_PATH) for n in ("chmod", "chown", "touch")}  # kept known
        inodes = {n: os.fstat(fd).st_ino for n, fd in held.items()}
        os.chmod(b.mnt() / "chmod", 0o600)
        os.chown(b.mnt() / "chown", 1234, 5678)
        subprocess.run(["touch", "-d", f"@{MTIME // 10**9}", b.mnt() / "touch"], check=True)
        subprocess.run(["truncate", "-s", "300000", b.mnt() / "longer"], check=True)
        subprocess.run(["truncate", "-s", "1000", b.mnt() / "shorter"], check=True)
        content = {n: data for n in names} | {"longer": data + bytes(100_000), "shorter": data[:1000]}
        for n in names:
            for where in (b.mnt() / n, b.root() / n):
                assert where.read_bytes() == content[n], where
            assert os.getxattr(b.mnt() / n, "user.realize.status") == b"real"
        for where in (b.mnt(), b.root()):
            assert stat.S_IMODE((where / "chmod").stat().st_mode) == 0o600
            assert (st := (where / "chown").stat()).st_uid == 1234 and st.st_gid == 5678
            assert (where / "touch").stat().st_mtime_ns == MTIME
            assert (where / "longer").stat().st_size == 300_000
            assert (where / "shorter").stat().st_size == 1000
        assert os.listdir(b.root() / ".realize-tmp") == []
        # b's changes are its own versions: c lists them (ownership is each peer's own)
        there = c.mnt()
        wait_for(lambda: stat.S_IMODE((there / "chmod").stat().st_mode) == 0o600, 20, "the mode on c")
        wait_for(lambda: (there / "touch").stat().st_mtime_ns == MTIME, 20, "the mtime on c")
        wait_for(lambda: (there / "longer").stat().st_size == 300_000, 20, "the longer size on c")
        wait_for(lambda: (there / "shorter").stat().st_size == 1000, 20, "the shorter size on c")
        assert (there / "longer").read_bytes() == content["longer"]  # from b
        assert (there / "shorter").read_bytes() == content["shorter"]
        assert (there / "chown").read_bytes() == data
        # a change of attributes alone leaves the file the same object, as on a disk (once the
        # watcher had seen the Real file, its name was dropped and looked up as another file)
        for n, fd in held.items():
            assert os.stat(b.mnt() / n).st_ino == inodes[n] == os.fstat(fd).st_ino, n
            os.close(fd)
        # with a handle reading it as Unreal open meanwhile, the attributes are the Real file's
        # (were the handle's Unreal ones, the old mode, once the kernel asked the daemon again)
        (a.mnt() / "reading").write_bytes(data)
        wait_for(lambda: listed(b.mnt() / "reading"), 20, "listed on b")
        with open(b.mnt() / "reading", "rb") as reading:
            assert reading.read(1000) == data[:1000]
            os.chmod(b.mnt() / "reading", 0o600)
            asked = ["stat", "--cached=never", "-c", "%a %u", str(b.mnt() / "reading")]  # the daemon asked
            assert subprocess.run(asked, capture_output=True, text=True, check=True).stdout == "600 0\n"
            assert reading.read() == data[1000:]


def test_setting_a_user_xattr_on_an_unreal_file_makes_it_real_first(bases: list[Path]) -> None:
    """``setfattr -n user.x`` of a file b holds only in its Unreal failed with EIO: it is made
    Real (fetched, placed), then set, as a chmod does; reading or listing user attributes,
    or removing one, answers without fetching (a peer's attributes are not carried: there
    are none to find); ``user.realize.mode`` keeps its answer."""
    with household(bases) as pair:
        a, b = pair.daemons
        data = random.Random(23).randbytes(300_000)
        (a.mnt() / "tagged").write_bytes(data)
        (a.mnt() / "dir").mkdir()
        (a.mnt() / "dir" / "inside").write_text("in dir\n")
        there = b.mnt() / "tagged"
        wait_for(lambda: listed(b.mnt() / "dir" / "inside") and listed(there), 20, "listed on b")
        held = os.open(there, os.O_PATH)
        inode = os.fstat(held).st_ino
        for attempt in (
            lambda: os.getxattr(there, "user.x"),
            lambda: os.removexattr(there, "user.x"),
            lambda: os.removexattr(b.mnt() / "dir", "user.x"),
        ):
            with pytest.raises(OSError) as nothing:
                attempt()
            assert nothing.value.errno == errno.ENODATA
        assert [n for n in os.listxattr(there) if n.startswith("user.")] == []
        with pytest.raises(OSError) as mode:  # as before: a mode on an Unreal file comes with consensus
            os.setxattr(there, "user.realize.mode", b"real")
        assert mode.value.errno == errno.EPERM
        assert os.getxattr(there, "user.realize.status") == b"unreal 0% cached"  # nothing fetched
        assert not (b.root() / "tagged").exists()
        subprocess.run(["setfattr", "-n", "user.x", "-v", "y", there], check=True)
        assert os.getxattr(there, "user.x") == b"y" == os.getxattr(b.root() / "tagged", "user.x")
        assert (b.root() / "tagged").read_bytes() == data == there.read_bytes()
        assert os.getxattr(there, "user.realize.status") == b"real"
        assert os.stat(there).st_ino == inode == os.fstat(held).st_ino  # the same object, as after a chmod
        os.close(held)
        assert "user.x" in os.listxattr(there)
        os.removexattr(there, "user.x")
        assert "user.x" not in os.listxattr(b.root() / "tagged")
        # an Unreal directory is made (only it: what it holds stays Unreal) to hold one
        os.setxattr(b.mnt() / "dir", "user.d", b"1")
        assert os.getxattr(b.root() / "dir", "user.d") == b"1" == os.getxattr(b.mnt() / "dir", "user.d")
        assert os.listdir(b.root() / "dir") == [] and os.listdir(b.mnt() / "dir") == ["inside"]


def test_changing_an_unreal_directorys_attributes_makes_it_real(bases: list[Path]) -> None:
    """chmod and touch -d of a directory b holds only in its Unreal failed with EIO: each
    makes the directory (and those above it) in b's Real, then changes it."""
    with household(bases, 3) as pair:
        a, b, c = pair.daemons
        (a.mnt() / "top" / "moded").mkdir(parents=True)
        (a.mnt() / "top" / "touched").mkdir()
        (a.mnt() / "top" / "moded" / "f").write_text("in moded\n")
        wait_for(
            lambda: all(listed(d.mnt() / "top" / "moded" / "f") for d in (b, c)), 20, "listed on b and c"
        )
        os.chmod(b.mnt() / "top" / "moded", 0o700)
        subprocess.run(["touch", "-d", f"@{MTIME // 10**9}", b.mnt() / "top" / "touched"], check=True)
        for where in (b.mnt(), b.root()):
            assert stat.S_IMODE((where / "top" / "moded").stat().st_mode) == 0o700
            assert (where / "top" / "touched").stat().st_mtime_ns == MTIME
        assert os.listdir(b.root() / "top" / "moded") == []  # the directory only: its file stays Unreal
        assert os.listdir(b.mnt() / "top" / "moded") == ["f"]
        assert (b.mnt() / "top" / "moded" / "f").read_text() == "in moded\n"
        wait_for(
            lambda: stat.S_IMODE((c.mnt() / "top" / "moded").stat().st_mode) == 0o700, 20, "the mode on c"
        )


def test_the_chunks_of_an_open_file_stay_in_the_cache_until_it_is_closed(bases: list[Path]) -> None:
    """Under a small quota, reading another file evicted the chunks of a file still open:
    read again through the same handle once its only peer was gone, it failed with EIO.
    The chunks a handle has read are now pinned until it is closed."""
    with household(bases, extra=REST + '[cache]\nmax_size = "1M"\nmin_free = "0"\n') as pair:
        a, b = pair.daemons
        kept, other = random.Random(21).randbytes(400_000), random.Random(22).randbytes(8 << 20)
        (a.mnt() / "kept").write_bytes(kept)
        (a.mnt() / "other").write_bytes(other)
        there = b.mnt() / "kept"
        wait_for(lambda: listed(there) and listed(b.mnt() / "other"), 20, "listed on b")

        def cache() -> dict[str, int]:
            stats: dict[str, int] = json.loads((b.mountpoint / ".realize" / "status.json").read_text())[
                "cache"
            ]
            return stats

        fd = os.open(there, os.O_RDONLY)
        try:
            assert os.pread(fd, len(kept), 0) == kept
            assert cache()["pinned"] > 0
            for at in range(0, len(other), 1 << 19):  # 8 times the quota: evicts all it can
                with open(b.mnt() / "other", "rb") as f:  # (a handle's own chunks stay while open)
                    f.seek(at)
                    assert f.read(1 << 19) == other[at : at + (1 << 19)]
            wait_for(lambda: cache()["evictions"] > 0, 10, "evictions")
            a.stop()
            wait_for(lambda: not connected(b, "a"), 20, "b to see a gone")
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the kernel's pages: read from b again
            assert os.pread(fd, len(kept), 0) == kept  # from b's cache alone
        finally:
            os.close(fd)
        wait_for(lambda: cache()["pinned"] == 0, 10, "the pins released")
        assert 0 < cache()["used"] <= 1 << 20


def test_a_file_made_real_by_a_write_or_truncate_reads_as_changed_at_once(bases: list[Path]) -> None:
    """Written to (or truncated) through one handle, then opened again at once by the name
    the kernel still held: the new open went to the Unreal inode, and read the old version
    (found by probing: 39 of 40 writes, 40 of 40 truncates) until the watcher dropped the name."""
    with household(bases) as pair:
        a, b = pair.daemons
        data = random.Random(23).randbytes(100_000)
        names = [f"{how}{i}" for how in ("written", "truncated") for i in range(4)]
        for name in names:
            (a.mnt() / name).write_bytes(data)
        wait_for(lambda: all(listed(b.mnt() / n) for n in names), 20, "listed on b")
        for name in names:
            there = b.mnt() / name
            there.stat()  # the kernel holds the name: its Unreal inode
            if name.startswith("written"):
                with open(there, "r+b") as f:
                    f.write(b"NEW")
                assert there.read_bytes() == b"NEW" + data[3:], name
            else:
                os.truncate(there, 150_000)
                assert there.read_bytes() == data + bytes(50_000), name
