"""POSIX ACLs through the mount, as two unprivileged users.

The mount supports POSIX ACLs: the kernel enforces them (``default_permissions``
alone checks mode bits only), ``setfacl``/``getfacl`` through the mount act on
the backing object's ACLs, and a directory's default ACL is inherited by what
is created in it through the mount. ``nobody`` owns the files; ``OTHER`` is a
second unprivileged user with no name. Commands run through `run_as` with
``setfacl``/``getfacl`` (the ``acl`` package, installed by ``make setup``).
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.fuse.test_unreal import household, listed
from tests.support import NOBODY, Daemon, run_as, wait_for

OTHER = 65533  # a second unprivileged user (and group), in no group of nobody's

if shutil.which("setfacl") is None or shutil.which("getfacl") is None:
    pytest.skip("needs setfacl/getfacl (the acl package: make setup)", allow_module_level=True)


def try_as(uid: int, statement: str, path: Path) -> str:
    """Run one shell *statement* on *path* ($1) as *uid*: "ok", or "denied"."""
    result = run_as(["sh", "-c", statement, "sh", str(path)], uid=uid, gid=uid, check=False)
    if result.returncode == 0:
        return "ok"
    assert "Permission denied" in result.stderr, result.stderr
    return "denied"


def can_read(uid: int, path: Path) -> str:
    return try_as(uid, 'cat "$1" >/dev/null', path)


def can_write(uid: int, path: Path) -> str:
    return try_as(uid, 'echo more >>"$1"', path)


def facl(uid: int, *args: str | Path) -> str:
    """Run setfacl or getfacl (args[0]) as *uid*; its output."""
    result = run_as([str(a) for a in args], uid=uid, gid=uid, check=False)
    assert result.returncode == 0, f"{args} as {uid}: {result.stderr}"
    return result.stdout


def getfacl(path: Path) -> list[str]:
    """The ACL as getfacl shows it (numeric ids, without the file name line)."""
    out = facl(0, "getfacl", "-n", path)
    return [line for line in out.splitlines() if line and not line.startswith("# file:")]


def nobodys_dir(daemon: Daemon, name: str) -> Path:
    """A directory of nobody's, made through the mount, that everyone may enter."""
    path = daemon.mnt() / name
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o755)
    return path


def test_an_acl_set_through_the_mount_is_enforced_for_another_user(daemon: Daemon) -> None:
    home = nobodys_dir(daemon, "home")
    run_as(["sh", "-c", 'umask 077 && echo secret >"$1"', "sh", str(home / "f")])
    f, backing = home / "f", daemon.root() / "home" / "f"
    assert stat.S_IMODE(os.stat(backing).st_mode) == 0o600
    assert (can_read(OTHER, f), can_write(OTHER, f)) == ("denied", "denied")

    facl(NOBODY, "setfacl", "-m", f"u:{OTHER}:r", f)
    assert (can_read(OTHER, f), can_write(OTHER, f)) == ("ok", "denied")
    assert can_write(NOBODY, f) == "ok"
    assert f"user:{OTHER}:r--" in getfacl(backing)
    assert getfacl(f) == getfacl(backing)
    # setting the access ACL set the group bits to its mask, on the disk and in the mount
    assert stat.S_IMODE(os.stat(backing).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o640

    # chmod sets the mask: taking the group's read away takes OTHER's away too
    run_as(["chmod", "600", str(f)])
    assert can_read(OTHER, f) == "denied"
    assert getfacl(f) == getfacl(backing)
    run_as(["chmod", "640", str(f)])
    assert can_read(OTHER, f) == "ok"

    facl(NOBODY, "setfacl", "-b", f)
    assert can_read(OTHER, f) == "denied"
    assert getfacl(f) == getfacl(backing)
    assert not any(line.startswith(f"user:{OTHER}") for line in getfacl(backing))
    assert (backing.read_text(), can_read(NOBODY, f)) == ("secret\nmore\n", "ok")


def test_an_acl_set_on_the_backing_file_is_enforced_through_the_mount(daemon: Daemon) -> None:
    home = nobodys_dir(daemon, "home")
    run_as(["sh", "-c", 'umask 077 && echo secret >"$1"', "sh", str(home / "f")])
    f, backing = home / "f", daemon.root() / "home" / "f"
    assert can_read(OTHER, f) == "denied"  # the kernel now caches the (empty) ACL

    facl(0, "setfacl", "-m", f"u:{OTHER}:rw", backing)
    wait_for(lambda: can_read(OTHER, f) == "ok", what="the ACL set on the disk to reach the mount")
    assert can_write(OTHER, f) == "ok"
    facl(0, "setfacl", "-x", f"u:{OTHER}", backing)
    wait_for(lambda: can_read(OTHER, f) == "denied", what="the ACL removed on the disk to reach the mount")


def test_a_default_acl_is_inherited_by_what_is_created_through_the_mount(daemon: Daemon) -> None:
    shared = nobodys_dir(daemon, "shared")
    facl(NOBODY, "setfacl", "-m", f"d:u:{OTHER}:rwx,d:o::-", shared)
    assert getfacl(shared) == getfacl(daemon.root() / "shared")

    run_as(["sh", "-c", 'echo for other >"$1/f" && mkdir "$1/d"', "sh", str(shared)])
    backing = daemon.root() / "shared"
    for name in ("f", "d"):
        acl = getfacl(backing / name)
        assert f"user:{OTHER}:rwx" in " ".join(acl), (name, acl)
        assert getfacl(shared / name) == acl
        assert os.stat(backing / name).st_uid == NOBODY
    # the default ACL's "other: nothing" holds for the new objects, mode bits and all
    assert stat.S_IMODE(os.stat(backing / "f").st_mode) & 0o007 == 0
    assert stat.S_IMODE(os.stat(backing / "d").st_mode) & 0o007 == 0
    assert "default:user:" + str(OTHER) + ":rwx" in getfacl(backing / "d")
    assert can_read(OTHER, shared / "f") == "ok"
    assert can_read(NOBODY + 0, shared / "f") == "ok"
    assert try_as(OTHER, 'touch "$1/by-other"', shared / "d") == "ok"
    assert os.stat(backing / "d" / "by-other").st_uid == OTHER
    assert can_read(1234, shared / "f") == "denied"  # a third user: "other" has nothing


def test_a_default_acl_that_takes_the_owners_write_away_still_lets_the_owner_create(daemon: Daemon) -> None:
    """The daemon makes a directory or FIFO private first, then hands it over; a default ACL
    may leave it fewer bits than that private mode, which is still the object it made."""
    ro = nobodys_dir(daemon, "ro")
    facl(NOBODY, "setfacl", "-m", "d:u::r-x,d:g::r-x,d:o::r-x", ro)
    run_as(["sh", "-c", 'mkdir "$1/d" && mkfifo "$1/p" && touch "$1/f"', "sh", str(ro)])
    backing = daemon.root() / "ro"
    modes = {name: stat.S_IMODE(os.stat(backing / name).st_mode) for name in ("d", "p", "f")}
    assert modes == {"d": 0o555, "p": 0o444, "f": 0o444}
    assert {os.stat(backing / name).st_uid for name in modes} == {NOBODY}


def test_a_file_from_a_peer_keeps_its_versions_mode_under_a_default_acl(bases: list[Path]) -> None:
    """Only what users create through the mount is masked by a default ACL: a file realized
    from a peer has its version's mode (else the mode would change here, and that change
    would go back to every peer as a chmod)."""
    with household(bases) as pair:
        a, b = pair.daemons
        for where in (b.root(), b.root() / ".realize-tmp"):  # the staging directory, if made yet
            if where.exists():
                facl(0, "setfacl", "-m", "d:g::-,d:o::-", where)
        (a.mnt() / "f").write_bytes(b"from a")
        (a.mnt() / "f").chmod(0o644)
        wait_for(lambda: listed(b.mnt() / "f") is not None, 20, "listed on b")
        os.setxattr(b.mnt(), "user.realize.mode", b"real")
        (b.mountpoint / ".realize" / "consensus").write_text("now\n")
        wait_for(lambda: (b.root() / "f").exists() and (b.root() / "f").read_bytes() == b"from a", 20, "on b")
        assert stat.S_IMODE(os.stat(b.root() / "f").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(b.mnt() / "f").st_mode) == 0o644
