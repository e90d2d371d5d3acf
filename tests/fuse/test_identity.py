"""What a reader gets through the mount is what is on disk: node identity and fresh pages.

A node is the backing object it was looked up as. These tests replace files
behind the kernel's back and through the mount, the way `rsync`, `cp -p`,
editors and consensus do, and check that no reader ever gets another file's
bytes, stale bytes, or a missing file that never was.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support import Daemon, wait_for

STORM_SECONDS = 2.0  # how long a storm of renames runs: more only finds more, never less


def read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Change content in place and put the old mtime back, as ``rsync --inplace -t`` does."""
    before = path.stat()
    assert len(data) == before.st_size
    while path.stat().st_ctime_ns == before.st_ctime_ns:  # a coarse clock may need a tick
        with open(path, "r+b") as f:
            f.write(data)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_content_changed_with_the_old_mtime_put_back_is_read_fresh(daemon: Daemon) -> None:
    """Same size, same mtime, new content: a new open reads the new bytes at once."""
    backing, mounted = daemon.root() / "f", daemon.mnt() / "f"
    mounted.write_bytes(b"A" * 8192)
    for round_ in range(5):
        assert read(mounted) == (b"A" if round_ == 0 else bytes([ord("a") + round_ - 1])) * 8192
        rewrite_keeping_size_and_mtime(backing, bytes([ord("a") + round_]) * 8192)
        assert read(mounted) == bytes([ord("a") + round_]) * 8192  # no waiting: the open decides


def test_an_open_file_rereads_content_changed_behind_it(daemon: Daemon) -> None:
    """A file kept open through the mount sees a change made in the backing tree (inotify drops its pages)."""
    backing, mounted = daemon.root() / "f", daemon.mnt() / "f"
    mounted.write_bytes(b"A" * 8192)
    with open(mounted, "rb") as f:
        assert os.pread(f.fileno(), 8192, 0) == b"A" * 8192
        rewrite_keeping_size_and_mtime(backing, b"B" * 8192)
        wait_for(lambda: os.pread(f.fileno(), 8192, 0) == b"B" * 8192, what="the new content")


@pytest.mark.parametrize("tool", ["cp -p", "rsync --inplace -t -I"])
def test_copying_tools_that_keep_mtimes_are_seen(daemon: Daemon, tool: str) -> None:
    backing, mounted = daemon.root() / "f", daemon.mnt() / "f"
    source = daemon.base / "source"
    mounted.write_bytes(b"1" * 4096)
    assert read(mounted) == b"1" * 4096
    source.write_bytes(b"2" * 4096)
    os.utime(source, ns=(backing.stat().st_atime_ns, backing.stat().st_mtime_ns))
    subprocess.run([*tool.split(), str(source), str(backing)], check=True)
    assert backing.read_bytes() == b"2" * 4096
    assert read(mounted) == b"2" * 4096


def test_a_descriptor_never_reads_the_file_that_replaced_it(daemon: Daemon) -> None:
    """Open f, replace f by rename in the backing tree, open f again: each descriptor reads its own file."""
    backing, mounted = daemon.root(), daemon.mnt()
    for trial in range(24):
        old, new = f"old {trial} ".encode() * 512, f"new {trial} ".encode() * 512
        (mounted / "f").write_bytes(old)
        with open(mounted / "f", "rb") as first:
            assert first.read() == old  # its pages are in the kernel's cache now
            (backing / "tmp").write_bytes(new)
            os.rename(backing / "tmp", backing / "f")

            def fresh(old: bytes = old, new: bytes = new) -> bool:
                data = read(mounted / "f")
                assert data in (old, new)  # the old file until the kernel is told, never a mix
                return data == new

            wait_for(fresh, what="the new file through the mount")
            assert os.pread(first.fileno(), len(old), 0) == old
            assert os.fstat(first.fileno()).st_nlink == 0  # it answers as a deleted file would


def _replace_forever(directory: str, seconds: float) -> None:
    """Write a temporary file and rename it over ``f``, again and again."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        tmp = os.path.join(directory, "tmp")
        with open(tmp, "wb") as f:
            f.write(b"%08d" % n)
        os.rename(tmp, os.path.join(directory, "f"))
        n += 1


def _open_while_replaced(target: Path, writer_dir: Path) -> tuple[int, Counter[str]]:
    (writer_dir / "f").write_bytes(b"%08d" % 0)
    writer = multiprocessing.get_context("spawn").Process(
        target=_replace_forever, args=(str(writer_dir), STORM_SECONDS)
    )
    writer.start()
    opens, failures = 0, Counter[str]()
    try:
        while writer.is_alive() or opens == 0:
            try:
                with open(target / "f", "rb") as f:
                    data = f.read()
                if len(data) != 8 or not data.isdigit():
                    failures[f"read {data!r}"] += 1
            except OSError as exc:
                failures[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
            opens += 1
    finally:
        writer.join()
    assert writer.exitcode == 0
    return opens, failures


@pytest.mark.parametrize("where", ["mount", "backing"])
def test_renaming_over_a_file_never_makes_it_missing(daemon: Daemon, where: str) -> None:
    """On ext4, ``rename(tmp, f)`` never makes ``f`` vanish for a reader: nor through the mount."""
    writer_dir = daemon.mnt() if where == "mount" else daemon.root()
    opens, failures = _open_while_replaced(daemon.mnt(), writer_dir)
    assert opens > 0
    assert not failures, f"{sum(failures.values())} of {opens} opens failed: {dict(failures)}"


def test_the_same_storm_on_the_backing_filesystem_never_fails(daemon: Daemon) -> None:
    """The baseline the test above holds the mount to, measured in the same run."""
    plain = daemon.base / "plain"
    plain.mkdir()
    opens, failures = _open_while_replaced(plain, plain)
    assert opens > 0 and not failures
    shutil.rmtree(plain)


def daemon_holds(daemon: Daemon, name: str) -> bool:
    """Whether the daemon holds a descriptor of a deleted file called *name* (it pins its space)."""
    assert daemon.proc is not None
    fds = Path(f"/proc/{daemon.proc.pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith(f"/{name} (deleted)"):
            return True
    return False


@pytest.mark.parametrize("where", ["mount", "backing"])
def test_a_deleted_file_gives_its_space_back(daemon: Daemon, where: str) -> None:
    """Pins hold objects, not names: once a file is deleted and unused, nothing keeps it on disk."""
    mounted = daemon.mnt() / "big"
    mounted.write_bytes(b"x" * 65536)
    assert read(mounted) == b"x" * 65536 and mounted.stat().st_size == 65536  # the kernel holds it
    (mounted if where == "mount" else daemon.root() / "big").unlink()
    wait_for(lambda: not daemon_holds(daemon, "big"), what="the deleted file let go")
    assert not os.path.exists(mounted)
