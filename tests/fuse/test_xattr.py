"""``user.realize.mode`` / ``user.realize.status`` and pass-through user attributes."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from blake3 import blake3

from tests.support import NOBODY, Daemon, run_as, wait_for

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


def test_getfattr_dump_shows_what_is_set_and_by_name_what_is_in_effect(daemon: Daemon) -> None:
    """Computed attributes are read by name, never listed; a mode is listed only where it is set."""
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "d").mkdir()
    (mnt / "d" / "f").write_text("x")
    subprocess.run(["setfattr", "-n", MODE, "-v", "unreal", str(mnt / "d")], check=True)
    subprocess.run(["setfattr", "-n", "user.color", "-v", "blue", str(mnt / "d" / "f")], check=True)
    assert os.getxattr(root / "d" / "f", "user.color") == b"blue"
    os.setxattr(root / "d" / "f", "user.direct", b"1")

    def dump(path: Path) -> list[str]:
        out = subprocess.run(["getfattr", "-d", str(path)], capture_output=True, text=True, check=True)
        return [line for line in out.stdout.splitlines() if line.startswith("user.")]

    assert dump(mnt / "d") == ['user.realize.mode="unreal"']
    assert sorted(dump(mnt / "d" / "f")) == ['user.color="blue"', 'user.direct="1"']
    assert sorted(os.listxattr(mnt / "d" / "f")) == ["user.color", "user.direct"]
    assert os.listxattr(mnt) == []  # the arena root: the configured default is not a setting here
    assert getfattr(mnt / "d" / "f", MODE) == "unreal"  # in effect, inherited
    assert getfattr(mnt, MODE) == "real"
    f = mnt / "d" / "f"
    assert getfattr(f, "user.realize.status") == "unreal pending: no peer holds this version"  # alone
    os.removexattr(f, "user.color")
    assert "user.color" not in os.listxattr(root / "d" / "f")
    with pytest.raises(OSError) as info:
        os.getxattr(f, "user.missing")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.getxattr(f, "security.capability")
    assert info.value.errno == errno.ENODATA
    with pytest.raises(OSError) as info:
        os.setxattr(f, "trusted.x", b"1")
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
        assert "user.realize.hash" not in os.listxattr(mnt / "f")  # computed: read by name only
        os.rename(mnt / "f", mnt / "g")  # a rename keeps the indexed content
        wait_for(lambda: hash_or_none(mnt / "g") == expected, 10, "the hash after a rename")
        (d.root() / "g").write_bytes(b"changed directly")
        wait_for(lambda: hash_or_none(mnt / "g") == blake3(b"changed directly").hexdigest(), 10, "a new hash")
        d.stop()
    finally:
        d.kill()


def hash_or_none(path: Path) -> str | None:
    try:
        return os.getxattr(path, "user.realize.hash").decode()
    except OSError:
        return None


@pytest.mark.parametrize("uid", [0, NOBODY], ids=["root", "nobody"])
def test_a_computed_attribute_takes_only_the_value_it_has(base: Path, uid: int) -> None:
    """Writing the value a computed attribute has is a no-op (a copy of a file carrying it
    does not fail); any other value, or a hash where there is none, is EPERM; removing is EPERM."""
    d = Daemon(base, extra='\n[consensus]\nrest = "300ms"\n')
    d.start()
    try:
        mnt, root = d.mnt(), d.root()
        (mnt / "d").mkdir()
        (mnt / "f").write_bytes(b"some content")
        os.chown(mnt / "d", uid, uid)
        os.chown(mnt / "f", uid, uid)
        expected = blake3(b"some content").hexdigest()
        wait_for(lambda: hash_or_none(mnt / "f") == expected, 30, "the hash")

        def setfattr(path: Path, name: str, value: str) -> tuple[int, str]:
            args = ["setfattr", "-n", name, "-v", value, str(path)]
            result = (
                subprocess.run(args, capture_output=True, text=True, check=False)
                if uid == 0
                else run_as(args, check=False)
            )
            return result.returncode, result.stderr

        assert setfattr(mnt / "f", "user.realize.status", "real") == (0, "")
        assert setfattr(mnt / "f", "user.realize.hash", expected) == (0, "")
        for path, name, value in (
            (mnt / "f", "user.realize.status", "unreal"),
            (mnt / "f", "user.realize.hash", blake3(b"other").hexdigest()),
            (mnt / "f", "user.realize.hash", expected.upper()),
            (mnt / "d", "user.realize.hash", blake3(b"").hexdigest()),  # a directory has none
        ):
            code, err = setfattr(path, name, value)
            assert code == 1 and "Operation not permitted" in err, (path.name, name, value)
        for name in ("user.realize.status", "user.realize.hash"):
            with pytest.raises(OSError) as info:
                os.removexattr(mnt / "f", name)
            assert info.value.errno == errno.EPERM
        assert [n for n in os.listxattr(root / "f") if n.startswith("user.realize.")] == []  # nothing stored
        assert getfattr(mnt / "f", "user.realize.status") == "real"
        d.stop()
    finally:
        d.kill()
