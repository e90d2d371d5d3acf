"""POSIX behaviour of Real files through the mount: it must match the backing filesystem."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import Daemon, wait_for

_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_root_lists_arenas_and_control_dir(base: Path) -> None:
    d = Daemon(base, arenas=[("docs", "real"), ("family/photos", "unreal")])
    d.start()
    try:
        assert sorted(os.listdir(d.mountpoint)) == [".realize", "docs", "family"]
        assert os.listdir(d.mountpoint / "family") == ["photos"]
        (d.root("family/photos") / "x.jpg").write_bytes(b"jpg")
        assert (d.mountpoint / "family" / "photos" / "x.jpg").read_bytes() == b"jpg"
        with pytest.raises(PermissionError):
            (d.mountpoint / "newdir").mkdir()
        with pytest.raises(PermissionError):
            (d.mountpoint / "family" / "f").write_text("x")
        with pytest.raises(OSError) as info:
            os.rmdir(d.mountpoint / "docs")
        assert info.value.errno == errno.EPERM
        d.stop()
    finally:
        d.kill()


def test_files_pass_through(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "hello.txt").write_text("hello\n")
    assert (root / "hello.txt").read_text() == "hello\n"
    (root / "direct.txt").write_text("direct\n")
    assert (mnt / "direct.txt").read_text() == "direct\n"
    with open(mnt / "hello.txt", "r+b") as f:
        f.seek(2)
        f.write(b"LL")
        f.flush()
        os.fsync(f.fileno())
    assert (root / "hello.txt").read_bytes() == b"heLLo\n"
    with open(mnt / "hello.txt", "ab") as f:
        f.write(b"more\n")
    assert (root / "hello.txt").read_bytes() == b"heLLo\nmore\n"
    os.truncate(mnt / "hello.txt", 3)
    assert (root / "hello.txt").read_bytes() == b"heL"
    with open(mnt / "hello.txt", "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert (root / "hello.txt").read_bytes() == b"new"


def test_attributes_match_backing(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "f").write_bytes(b"x" * 5000)
    os.chmod(mnt / "f", 0o640)
    os.utime(mnt / "f", ns=(1_000_000_123, 2_000_000_456))
    m, b = os.stat(mnt / "f"), os.stat(root / "f")
    assert stat.S_IMODE(m.st_mode) == stat.S_IMODE(b.st_mode) == 0o640
    assert (m.st_size, m.st_mtime_ns, m.st_atime_ns) == (b.st_size, b.st_mtime_ns, b.st_atime_ns)
    assert m.st_mtime_ns == 2_000_000_456
    assert (m.st_uid, m.st_gid, m.st_blocks) == (b.st_uid, b.st_gid, b.st_blocks)
    os.chown(mnt / "f", 1234, 5678)
    assert (os.stat(root / "f").st_uid, os.stat(root / "f").st_gid) == (1234, 5678)


def test_directories_and_large_listing(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "d" / "e").mkdir(parents=True)
    assert (root / "d" / "e").is_dir()
    big = root / "big"
    big.mkdir()
    names = {f"file-{i:05d}" for i in range(10_500)}
    for name in names:
        (big / name).touch()
    listed = os.listdir(mnt / "big")
    assert len(listed) == len(names) and set(listed) == names  # none twice, none skipped
    out = subprocess.run(["ls", "-l", str(mnt / "big")], capture_output=True, text=True, check=True)
    assert len(out.stdout.splitlines()) == len(names) + 1
    entries = subprocess.run(["ls", "-a", str(mnt / "d")], capture_output=True, text=True, check=True)
    assert entries.stdout.split() == [".", "..", "e"]
    with pytest.raises(OSError) as info:
        os.rmdir(mnt / "d")
    assert info.value.errno == errno.ENOTEMPTY
    os.rmdir(mnt / "d" / "e")
    os.rmdir(mnt / "d")
    assert not (root / "d").exists()


def test_directory_offsets_are_stable_while_it_changes(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    for i in range(3000):
        (root / f"f{i}").touch()
    seen: list[str] = []
    with os.scandir(mnt) as it:
        for n, entry in enumerate(it):
            seen.append(entry.name)
            if n == 100:  # churn while listing
                for i in range(3000, 3100):
                    (root / f"f{i}").touch()
                if "f2999" not in seen:
                    os.unlink(root / "f2999")
    assert len(seen) == len(set(seen))
    assert {f"f{i}" for i in range(2999)} <= set(seen)


def test_unlink_symlink_readlink(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "target").write_text("t")
    os.symlink("target", mnt / "link")
    assert os.readlink(mnt / "link") == "target"
    assert os.readlink(root / "link") == "target"
    assert (mnt / "link").read_text() == "t"
    assert stat.S_ISLNK(os.lstat(mnt / "link").st_mode)
    os.symlink("/etc/passwd", mnt / "abs")  # the kernel follows it on the client side
    assert os.readlink(mnt / "abs") == "/etc/passwd"
    os.unlink(mnt / "link")
    assert not os.path.lexists(root / "link")
    with pytest.raises(FileNotFoundError):
        os.unlink(mnt / "link")


def test_rename_variants(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "a").write_text("A")
    (mnt / "b").write_text("B")
    ino = os.stat(mnt / "a").st_ino
    os.rename(mnt / "a", mnt / "c")
    assert os.stat(mnt / "c").st_ino == ino  # keeps its inode
    assert (root / "c").read_text() == "A"
    with pytest.raises(FileExistsError):
        renameat2(mnt / "c", mnt / "b", RENAME_NOREPLACE)
    assert (root / "b").read_text() == "B"
    renameat2(mnt / "c", mnt / "b", RENAME_EXCHANGE)
    assert (mnt / "b").read_text() == "A" and (mnt / "c").read_text() == "B"
    assert (root / "b").read_text() == "A" and (root / "c").read_text() == "B"
    os.replace(mnt / "c", mnt / "b")  # over an existing file
    assert (mnt / "b").read_text() == "B" and not (root / "c").exists()
    (mnt / "dir" / "sub").mkdir(parents=True)
    (mnt / "dir" / "sub" / "f").write_text("deep")
    deep_ino = os.stat(mnt / "dir" / "sub" / "f").st_ino
    os.rename(mnt / "dir", mnt / "moved")
    assert (mnt / "moved" / "sub" / "f").read_text() == "deep"
    assert os.stat(mnt / "moved" / "sub" / "f").st_ino == deep_ino
    assert (root / "moved" / "sub" / "f").exists() and not (root / "dir").exists()


def test_rename_across_arenas_is_exdev(base: Path) -> None:
    d = Daemon(base, arenas=[("a", "real"), ("b", "real")])
    d.start()
    try:
        (d.mnt("a") / "f").write_text("x")
        with pytest.raises(OSError) as info:
            os.rename(d.mnt("a") / "f", d.mnt("b") / "f")
        assert info.value.errno == errno.EXDEV
        subprocess.run(["mv", str(d.mnt("a") / "f"), str(d.mnt("b") / "f")], check=True)
        assert (d.root("b") / "f").read_text() == "x" and not (d.root("a") / "f").exists()
        d.stop()
    finally:
        d.kill()


def test_inode_numbers_are_stable_for_a_path(daemon: Daemon) -> None:
    mnt = daemon.mnt()
    (mnt / "x").write_text("x")
    first = os.stat(mnt / "x").st_ino
    subprocess.run(["sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"], check=True)  # kernel forgets
    assert os.stat(mnt / "x").st_ino == first
    assert os.stat(mnt / "x").st_ino != os.stat(mnt).st_ino


def test_errors_carry_the_backing_errno(daemon: Daemon) -> None:
    mnt = daemon.mnt()
    with pytest.raises(FileNotFoundError):
        (mnt / "missing").read_text()
    (mnt / "d").mkdir()
    with pytest.raises(FileExistsError):
        (mnt / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        (mnt / "d").write_text("x")
    (mnt / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        (mnt / "f" / "g").write_text("x")
    with pytest.raises(OSError) as info:
        os.open(mnt / ("long" * 100), os.O_CREAT | os.O_WRONLY, 0o644)
    assert info.value.errno == errno.ENAMETOOLONG


def test_statfs_reports_the_backing_filesystem(daemon: Daemon) -> None:
    m, b = os.statvfs(daemon.mountpoint), os.statvfs(daemon.root())
    assert m.f_blocks * m.f_frsize == b.f_blocks * b.f_frsize
    assert abs(m.f_bavail * m.f_frsize - b.f_bavail * b.f_frsize) < 256 << 20
    assert m.f_namemax == b.f_namemax


def test_changes_in_the_backing_directory_show_up(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "f").write_text("one")
    assert (mnt / "f").read_text() == "one"
    (root / "f").write_text("two, longer")
    wait_for(lambda: (mnt / "f").read_text() == "two, longer", 5, "new content through the mount")
    os.chmod(root / "f", 0o600)
    wait_for(lambda: stat.S_IMODE(os.stat(mnt / "f").st_mode) == 0o600, 5, "new mode")
    (root / "f").unlink()
    wait_for(lambda: not (mnt / "f").exists(), 5, "deletion")
    (root / "f").mkdir()  # same name, another kind
    wait_for(lambda: (mnt / "f").is_dir(), 5, "a directory where a file was")
    (root / "f" / "inner").write_text("in")
    assert (mnt / "f" / "inner").read_text() == "in"


def test_open_file_survives_unlink_and_rename(daemon: Daemon) -> None:
    mnt = daemon.mnt()
    (mnt / "f").write_text("data")
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.rename(mnt / "f", mnt / "g")
        assert os.pread(fd, 4, 0) == b"data"
        os.unlink(mnt / "g")
        os.pwrite(fd, b"DATA", 0)
        assert os.pread(fd, 4, 0) == b"DATA"
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 4
        os.ftruncate(fd, 2)
        assert os.fstat(fd).st_size == 2
    finally:
        os.close(fd)


class Strace:
    """``strace`` attached to every thread of a process, recording some system calls with their fds' paths."""

    def __init__(self, pid: int, calls: str, output: Path) -> None:
        self.pid, self.output = pid, output
        self.proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-y", "-e", f"trace={calls}", "-o", str(output), "-p", str(pid)],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for(self._attached, 30, "strace to attach to every thread")

    def _attached(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"strace exited {self.proc.returncode}: {self.proc.stderr!r}")
        tasks = list(Path(f"/proc/{self.pid}/task").iterdir())
        return all(f"TracerPid:\t{self.proc.pid}\n" in (task / "status").read_text() for task in tasks)

    def stop(self) -> list[str]:
        """Detach (the daemon goes on); the calls recorded, one line each.

        A call another thread's call interrupted (``123 fsync(6</p> <unfinished ...>``,
        later ``123 <... fsync resumed>)          = 0``) is joined back into one line, without
        the padding strace puts before the result of a short line.
        """
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode in (0, -15), err
        lines: list[str] = []
        unfinished: dict[str, str] = {}
        for line in self.output.read_text().splitlines():
            pid, _, call = line.partition(" ")
            call = call.lstrip()  # strace pads the pid column
            if call.endswith(" <unfinished ...>"):
                unfinished[pid] = call.removesuffix(" <unfinished ...>")
            elif (resumed := re.match(r"<\.\.\. \w+ resumed>", call)) and pid in unfinished:
                rest = re.sub(r"^\) +=", ") =", call[resumed.end() :])
                lines.append(f"{pid} {unfinished.pop(pid)}{rest}")
            else:
                lines.append(line)
        return lines


def test_fsync_and_fsyncdir_reach_the_backing_objects(daemon: Daemon, base: Path) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "d").mkdir()
    assert daemon.proc is not None
    trace = Strace(daemon.proc.pid, "fsync,fdatasync", base / "strace.out")
    try:
        fd = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"x" * 100_000)
            os.fsync(fd)
            os.write(fd, b"y")
            os.fdatasync(fd)
        finally:
            os.close(fd)
        for directory in (mnt, mnt / "d"):
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        lines = trace.stop()
    assert (root / "f").read_bytes() == b"x" * 100_000 + b"y"
    # "[pid N] fsync(7</path>) = 0", or "<... fsync resumed>) = 0" after another thread's line
    calls = {
        (m["call"], m["path"])
        for line in lines
        if (m := re.search(r"\b(?P<call>fsync|fdatasync)\(\d+<(?P<path>[^>]*)>\)\s+= 0$", line))
    }
    for expected in [
        ("fsync", root / "f"),
        ("fdatasync", root / "f"),
        ("fsync", root),
        ("fsync", root / "d"),
    ]:
        assert (expected[0], str(expected[1])) in calls, (expected, lines)


def test_rewinddir_shows_the_directory_as_it_is_now(daemon: Daemon) -> None:
    """rewinddir(3) refreshes a directory stream (os.listdir of a descriptor rewinds it)."""
    mnt = daemon.mnt()
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.listdir(fd) == []
        (mnt / "new").write_text("x")
        (daemon.root() / "direct").write_text("x")
        assert sorted(os.listdir(fd)) == ["direct", "new"]
    finally:
        os.close(fd)
