"""``user.realize.mode`` / ``user.realize.status`` and pass-through user attributes."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from blake3 import blake3

from tests.support import Daemon, wait_for

MODE = "user.realize.mode"


def getfattr(path: Path, name: str) -> str:
    return os.getxattr(path, name).decode()


def test_mode_is_inherited_set_and_removed(base: Path) -> None:
    d = Daemon(base, arenas=[("a", "unreal")])
    d.start()
    try:
        mnt, root = d.mnt(), d.root()
        (mnt / "x" / "y").mkdir(parents=True)
        (mnt / "x" / "y" / "f").write_text("f")
        assert getfattr(mnt / "x" / "y" / "f", MODE) == "unreal"  # the arena's default
        subprocess.run(["setfattr", "-n", MODE, "-v", "real", str(mnt / "x")], check=True)
        assert os.getxattr(root / "x", MODE) == b"real"  # stored on the backing directory
        assert getfattr(mnt / "x", MODE) == "real"
        assert getfattr(mnt / "x" / "y" / "f", MODE) == "real"  # nearest ancestor
        os.setxattr(mnt / "x" / "y" / "f", MODE, b"unreal")
        assert getfattr(mnt / "x" / "y" / "f", MODE) == "unreal"
        subprocess.run(["setfattr", "-x", MODE, str(mnt / "x")], check=True)
        assert getfattr(mnt / "x" / "y", MODE) == "unreal"
        with pytest.raises(OSError) as info:
            os.getxattr(root / "x", MODE)
        assert info.value.errno == errno.ENODATA
        with pytest.raises(OSError) as info:
            os.removexattr(mnt / "x", MODE)  # nothing set any more
        assert info.value.errno == errno.ENODATA
        os.setxattr(mnt, MODE, b"real")  # the arena root itself
        assert getfattr(mnt / "x" / "y", MODE) == "real"
        d.stop()
    finally:
        d.kill()


@pytest.mark.parametrize("value", [b"", b"REAL", b"realish", b"unreal now", b"\xff"])
def test_bad_mode_values_are_einval(daemon: Daemon, value: bytes) -> None:
    (daemon.mnt() / "f").write_text("x")
    with pytest.raises(OSError) as info:
        os.setxattr(daemon.mnt() / "f", MODE, value)
    assert info.value.errno == errno.EINVAL
    assert getfattr(daemon.mnt() / "f", MODE) == "real"


def test_mode_on_root_and_control_dir_is_eperm(base: Path) -> None:
    d = Daemon(base, arenas=[("family/photos", "real")])
    d.start()
    try:
        for path in (
            d.mountpoint,
            d.mountpoint / ".realize",
            d.mountpoint / ".realize" / "status",
            d.mountpoint / "family",
        ):
            with pytest.raises(OSError) as info:
                os.setxattr(path, MODE, b"real")
            assert info.value.errno == errno.EPERM, path
            with pytest.raises(OSError) as info:
                os.removexattr(path, MODE)
            assert info.value.errno == errno.EPERM, path
        d.stop()
    finally:
        d.kill()


def test_getfattr_dump_lists_realize_attributes_and_user_ones(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "f").write_text("x")
    subprocess.run(["setfattr", "-n", "user.color", "-v", "blue", str(mnt / "f")], check=True)
    assert os.getxattr(root / "f", "user.color") == b"blue"
    os.setxattr(root / "f", "user.direct", b"1")
    out = subprocess.run(["getfattr", "-d", str(mnt / "f")], capture_output=True, text=True, check=True)
    lines = set(out.stdout.splitlines())
    assert {
        'user.realize.mode="real"',
        'user.realize.status="real"',
        'user.color="blue"',
        'user.direct="1"',
    } <= lines
    assert getfattr(mnt / "f", "user.realize.status") == "real"
    os.removexattr(mnt / "f", "user.color")
    assert "user.color" not in os.listxattr(root / "f")
    with pytest.raises(OSError) as info:
        os.setxattr(mnt / "f", "user.realize.status", b"unreal")
    assert info.value.errno == errno.EPERM
    with pytest.raises(OSError) as info:
        os.getxattr(mnt / "f", "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.getxattr(mnt / "f", "security.capability")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(mnt / "f", "trusted.x", b"1")
    assert info.value.errno in (errno.EOPNOTSUPP, errno.EPERM)


def test_a_stored_mode_is_not_a_user_attribute(daemon: Daemon) -> None:
    """The raw stored xattr is never listed twice nor writable as an ordinary name."""
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "d").mkdir()
    os.setxattr(mnt / "d", MODE, b"unreal")
    names = os.listxattr(mnt / "d")
    assert names.count(MODE) == 1
    with pytest.raises(OSError) as info:
        os.setxattr(mnt / "d", "user.realize.other", b"x")
    assert info.value.errno == errno.EOPNOTSUPP
    assert os.getxattr(root / "d", MODE) == b"unreal"


def test_hash_appears_once_a_file_has_rested(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "300ms"\n')
    d.start()
    try:
        mnt = d.mnt()
        with open(mnt / "f", "wb") as f:
            f.write(b"some content")
        with pytest.raises(OSError) as info:  # just written: not rested, not hashed
            os.getxattr(mnt / "f", "user.realize.hash")
        assert info.value.errno == errno.ENODATA
        expected = blake3(b"some content").hexdigest()
        wait_for(lambda: hash_or_none(mnt / "f") == expected, 10, "the hash")
        assert "user.realize.hash" in os.listxattr(mnt / "f")
        os.rename(mnt / "f", mnt / "g")  # a rename keeps the indexed content
        wait_for(lambda: hash_or_none(mnt / "g") == expected, 10, "the hash after a rename")
        (d.root() / "g").write_bytes(b"changed directly")
        wait_for(lambda: hash_or_none(mnt / "g") == blake3(b"changed directly").hexdigest(), 10, "a new hash")
        with pytest.raises(OSError) as info:
            os.setxattr(mnt / "g", "user.realize.hash", b"00")
        assert info.value.errno == errno.EPERM
        d.stop()
    finally:
        d.kill()


def hash_or_none(path: Path) -> str | None:
    try:
        return os.getxattr(path, "user.realize.hash").decode()
    except OSError:
        return None
