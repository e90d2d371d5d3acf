"""fallocate(2) through the mount: each call must do what it does on a plain file of the backing filesystem.

Every comparison runs the same call on a plain file next to the arena (the same
filesystem as the Real, in the same run), so the expected result is whatever
that filesystem does, not a hard-coded answer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import Daemon

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)

KEEP_SIZE = 0x01
PUNCH_HOLE = 0x02
COLLAPSE_RANGE = 0x08
ZERO_RANGE = 0x10
INSERT_RANGE = 0x20
UNSHARE_RANGE = 0x40
BLOCK = 4096
CONTENT = bytes(range(256)) * 96  # 24 KiB, six blocks, no zeros in a row


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """0, or the errno the call failed with."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        return ctypes.get_errno()
    return 0


def prepared(path: Path) -> int:
    """*path* holding CONTENT on disk, open read-write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, CONTENT, 0)
    os.fsync(fd)  # allocated now: st_blocks does not depend on delayed allocation
    return fd


def outcome(fd: int, path: Path, mode: int, offset: int, length: int) -> tuple[int, int, int, bytes]:
    """(errno, size, blocks, content) after the call, content read back through *path*."""
    err = fallocate(fd, mode, offset, length)
    os.fsync(fd)
    st = os.fstat(fd)
    return err, st.st_size, st.st_blocks, path.read_bytes()


CASES = [
    pytest.param(0, BLOCK, 2 * BLOCK, id="mode0-inside"),
    pytest.param(0, 5 * BLOCK, 8 * BLOCK, id="mode0-extends"),
    pytest.param(0, 0, 1, id="mode0-one-byte"),
    pytest.param(KEEP_SIZE, 4 * BLOCK, 16 * BLOCK, id="keep-size-past-eof"),
    pytest.param(PUNCH_HOLE | KEEP_SIZE, BLOCK, 2 * BLOCK, id="punch-blocks"),
    pytest.param(PUNCH_HOLE | KEEP_SIZE, 100, 5000, id="punch-unaligned"),
    pytest.param(ZERO_RANGE, 1000, 3 * BLOCK, id="zero-range"),
    pytest.param(ZERO_RANGE, 5 * BLOCK, 4 * BLOCK, id="zero-range-extends"),
    pytest.param(ZERO_RANGE | KEEP_SIZE, 5 * BLOCK, 4 * BLOCK, id="zero-range-keep-size"),
    pytest.param(0, 1 << 44, BLOCK, id="past-the-backing-max-size"),  # EFBIG from the backing fs
]


@pytest.mark.parametrize(("mode", "offset", "length"), CASES)
def test_fallocate_matches_the_backing_filesystem(
    daemon: Daemon, base: Path, mode: int, offset: int, length: int
) -> None:
    plain = base / "plain"
    plain_fd, fd = prepared(plain), prepared(daemon.mnt() / "f")
    try:
        expected = outcome(plain_fd, plain, mode, offset, length)
        got = outcome(fd, daemon.mnt() / "f", mode, offset, length)
        assert got == expected
        backing = daemon.root() / "f"
        assert backing.read_bytes() == expected[3]
        assert (os.stat(backing).st_size, os.stat(backing).st_blocks) == expected[1:3]
    finally:
        os.close(plain_fd)
        os.close(fd)


def test_modes_the_kernel_keeps_from_fuse_are_refused_and_change_nothing(daemon: Daemon, base: Path) -> None:
    """FUSE passes only KEEP_SIZE, PUNCH_HOLE and ZERO_RANGE: collapse and insert range,
    which ext4 does, are EOPNOTSUPP before any request; what the VFS refuses for every
    filesystem is refused alike; realizefs's own files refuse it; mode 0 on the same
    descriptor works."""
    plain = base / "plain"
    plain_fd, fd = prepared(plain), prepared(daemon.mnt() / "f")
    try:
        for mode in (COLLAPSE_RANGE, INSERT_RANGE, UNSHARE_RANGE):
            assert fallocate(fd, mode, BLOCK, BLOCK) == errno.EOPNOTSUPP, hex(mode)
        for mode in (PUNCH_HOLE, PUNCH_HOLE | ZERO_RANGE | KEEP_SIZE, 0x1000):
            assert fallocate(fd, mode, BLOCK, BLOCK) == fallocate(plain_fd, mode, BLOCK, BLOCK), hex(mode)
        assert (daemon.root() / "f").read_bytes() == CONTENT
        control = os.open(daemon.mountpoint / ".realize" / "consensus", os.O_WRONLY)
        try:  # realizefs's own files have no blocks to allocate
            assert fallocate(control, 0, 0, BLOCK) == errno.EOPNOTSUPP
        finally:
            os.close(control)
        assert fallocate(fd, 0, len(CONTENT), BLOCK) == 0
        assert os.fstat(fd).st_size == len(CONTENT) + BLOCK
    finally:
        os.close(plain_fd)
        os.close(fd)


def test_read_only_descriptor_is_ebadf_and_a_writable_one_works(daemon: Daemon, base: Path) -> None:
    (base / "plain").write_bytes(CONTENT)
    (daemon.mnt() / "f").write_bytes(CONTENT)
    for path in (base / "plain", daemon.mnt() / "f"):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert fallocate(fd, 0, 0, 2 * len(CONTENT)) == errno.EBADF
        finally:
            os.close(fd)
    fd = os.open(daemon.mnt() / "f", os.O_WRONLY)
    try:
        assert fallocate(fd, 0, 0, 2 * len(CONTENT)) == 0
    finally:
        os.close(fd)
    assert os.stat(daemon.mnt() / "f").st_size == 2 * len(CONTENT)
    assert (daemon.root() / "f").read_bytes() == CONTENT + bytes(len(CONTENT))


def test_the_fallocate_command(daemon: Daemon) -> None:
    f = daemon.mnt() / "u.dat"
    subprocess.run(["fallocate", "-l", "1MiB", str(f)], check=True, capture_output=True)
    assert os.stat(f).st_size == 1 << 20
    assert os.stat(daemon.root() / "u.dat").st_blocks * 512 >= 1 << 20
    with open(f, "r+b") as out:
        out.write(b"x" * BLOCK)
    subprocess.run(["fallocate", "--dig-holes", str(f)], check=True, capture_output=True)  # SEEK_DATA + punch
    assert f.read_bytes() == b"x" * BLOCK + bytes((1 << 20) - BLOCK)
    assert os.stat(daemon.root() / "u.dat").st_blocks * 512 == BLOCK


def test_fio_lays_out_its_file_with_fallocate(daemon: Daemon) -> None:
    f = daemon.mnt() / "fio.dat"
    common = [f"--filename={f}", "--size=4M", "--bs=64k", "--ioengine=sync", "--fallocate=native"]
    subprocess.run(
        ["fio", "--name=layout", *common, "--rw=write", "--create_only=1"], check=True, capture_output=True
    )
    st = os.stat(f)
    assert st.st_size == 4 << 20  # fio lays the file out with fallocate alone
    assert st.st_blocks * 512 >= 4 << 20
    assert f.read_bytes() == bytes(4 << 20)
    run = subprocess.run(
        ["fio", "--name=verify", *common, "--rw=randwrite", "--verify=crc32c", "--do_verify=1"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "fallocate" not in run.stdout + run.stderr
