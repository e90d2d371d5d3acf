"""The mount serves every local user: ownership, modes, umask, setgid, permissions.

The daemon runs as root with ``allow_other`` and ``default_permissions``. What
a user creates through the mount must be that user's, with the mode the user
asked for after the user's own umask, following the directory's setgid rule;
the kernel refuses what the user may not do. Commands run as ``nobody`` through
`run_as` (no supplementary groups). Ownership and modes are checked on the
backing directory, where they are stored, with ``os.lstat`` as root.
"""

from __future__ import annotations

import functools
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import NOBODY, Daemon, run_as, wait_for

USERS_GID = 100  # "users" on Debian; any group nobody does not belong to would do
OTHER_UID = 1234


@functools.cache
def python() -> str:
    """A Python interpreter that nobody may run (the virtualenv may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            if run_as([candidate, "-I", "-c", "pass"], check=False).returncode == 0:
                return candidate
        except OSError:  # not there, or nobody may not run it
            continue
    raise AssertionError("no Python interpreter that user nobody can run")


def py_as(code: str, *args: str | Path, uid: int = NOBODY, gid: int = NOBODY, umask: int = 0o022) -> str:
    """Run Python *code* (``sys.argv[1:]`` = *args*) as another user; its standard output."""
    result = run_as(
        [python(), "-I", "-c", textwrap.dedent(code), *map(str, args)],
        uid=uid,
        gid=gid,
        umask=umask,
        check=False,
    )
    assert result.returncode == 0, f"as uid {uid}, umask {umask:03o}:\n{result.stderr}"
    return result.stdout


def attempt(statement: str, *args: str | Path, uid: int = NOBODY, gid: int = NOBODY) -> str:
    """Run one Python statement as another user: "ok", or the name of the errno it failed with."""
    code = f"""
import errno, os, sys
try:
    {statement}
except OSError as exc:
    print(errno.errorcode[exc.errno])
else:
    print("ok")
"""
    return py_as(code, *args, uid=uid, gid=gid).strip()


def sh_as(command: str, cwd: Path, uid: int = NOBODY, gid: int = NOBODY, umask: int = 0o022) -> None:
    """Run a shell command in *cwd* as another user; it must succeed."""
    result = run_as(
        ["sh", "-c", f'cd "$0" && {command}', str(cwd)], uid=uid, gid=gid, umask=umask, check=False
    )
    assert result.returncode == 0, f"{command!r} as uid {uid}, umask {umask:03o}: {result.stderr}"


def owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def shared_dir(daemon: Daemon, name: str, uid: int = 0, gid: int = 0, mode: int = 0o1777) -> Path:
    """A directory made through the mount by root, then given *uid*:*gid* and *mode*."""
    path = daemon.mnt() / name
    path.mkdir()
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    assert owner_mode(daemon.root() / name) == (uid, gid, mode)
    return path


# ---------------------------------------------------------------- reaching the mount


def test_nobody_reaches_the_mount_root_and_the_arena(daemon: Daemon) -> None:
    (daemon.mnt() / "hello").write_text("hello, nobody\n")
    os.chmod(daemon.mnt() / "hello", 0o644)
    (daemon.mnt() / "sub").mkdir()
    listdir = "import os, sys; print(*sorted(os.listdir(sys.argv[1])))"
    assert py_as(listdir, daemon.mountpoint).split() == [".realize", "a"]
    assert py_as(listdir, daemon.mnt()).split() == ["hello", "sub"]
    assert py_as("import sys; sys.stdout.write(open(sys.argv[1]).read())", daemon.mnt() / "hello") == (
        "hello, nobody\n"
    )
    assert attempt("os.stat(sys.argv[1])", daemon.mnt() / "hello") == "ok"
    assert attempt("os.chdir(sys.argv[1])", daemon.mnt() / "sub") == "ok"


# ---------------------------------------------------------------- what a user creates


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000], ids=["umask022", "umask077", "umask000"])
@pytest.mark.parametrize("where", ["world-writable-root", "own-subdir"])
def test_what_nobody_creates_is_nobodys_with_nobodys_umask(daemon: Daemon, where: str, umask: int) -> None:
    if where == "world-writable-root":  # chmod on the backing directory, seen through the mount
        os.chmod(daemon.root(), 0o1777)
        wait_for(lambda: stat.S_IMODE(os.stat(daemon.mnt()).st_mode) == 0o1777, 5, "the mount to see 1777")
        mnt, root = daemon.mnt(), daemon.root()
    else:  # made by root through the mount, then given to nobody
        mnt = shared_dir(daemon, "home", NOBODY, NOBODY, 0o755)
        root = daemon.root() / "home"

    sh_as("touch touched && mkdir made && ln -s touched link && mkfifo fifo", mnt, umask=umask)
    py_as(
        """
        import os, sys
        os.close(os.open(os.path.join(sys.argv[1], "opened"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
        os.mkdir(os.path.join(sys.argv[1], "made750"), 0o750)
        os.mkfifo(os.path.join(sys.argv[1], "fifo604"), 0o604)
        with open(os.path.join(sys.argv[1], "touched"), "w") as f:
            f.write("written by nobody")
        """,
        mnt,
        umask=umask,
    )

    expected = {
        "touched": 0o666 & ~umask,
        "made": 0o777 & ~umask,
        "fifo": 0o666 & ~umask,
        "opened": 0o640 & ~umask,
        "made750": 0o750 & ~umask,
        "fifo604": 0o604 & ~umask,
    }
    for name, mode in expected.items():
        assert owner_mode(root / name) == (NOBODY, NOBODY, mode), name
        assert owner_mode(mnt / name) == (NOBODY, NOBODY, mode), f"{name} through the mount"
    assert stat.S_ISDIR(os.lstat(root / "made").st_mode)
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert stat.S_ISREG(os.lstat(root / "opened").st_mode)
    link = os.lstat(root / "link")
    assert stat.S_ISLNK(link.st_mode)
    assert (link.st_uid, link.st_gid) == (NOBODY, NOBODY)
    assert os.readlink(root / "link") == "touched"
    assert (root / "touched").read_text() == "written by nobody"
    # the user can go on using what they made, whatever their umask took away from others
    sh_as("touch made/inner && cat link >/dev/null && rm link && rmdir made750", mnt, umask=umask)
    assert owner_mode(root / "made" / "inner") == (NOBODY, NOBODY, 0o666 & ~umask)


def test_setgid_directory_gives_its_group_and_passes_the_bit_to_subdirectories(daemon: Daemon) -> None:
    setgid = shared_dir(daemon, "team", NOBODY, USERS_GID, 0o2775)
    plain = shared_dir(daemon, "plain", NOBODY, USERS_GID, 0o775)
    for mnt in (setgid, plain):
        sh_as("touch f && mkdir d && ln -s f l && mkfifo p", mnt)
        py_as("import os, sys; os.mkdir(os.path.join(sys.argv[1], 'd700'), 0o700)", mnt)
    team, other = daemon.root() / "team", daemon.root() / "plain"

    assert owner_mode(team / "f") == (NOBODY, USERS_GID, 0o644)
    assert owner_mode(team / "p") == (NOBODY, USERS_GID, 0o644)
    assert os.lstat(team / "l").st_gid == USERS_GID
    assert owner_mode(team / "d") == (NOBODY, USERS_GID, 0o2755)
    assert owner_mode(team / "d700") == (NOBODY, USERS_GID, 0o2700)
    # ...and on through the new subdirectory
    sh_as("mkdir d/deeper && touch d/deeper/g", setgid)
    assert owner_mode(team / "d" / "deeper") == (NOBODY, USERS_GID, 0o2755)
    assert owner_mode(team / "d" / "deeper" / "g") == (NOBODY, USERS_GID, 0o644)
    # root creating there gets the directory's group too
    (setgid / "by-root").write_text("x")
    assert os.lstat(team / "by-root")[stat.ST_GID] == USERS_GID

    assert owner_mode(other / "f") == (NOBODY, NOBODY, 0o644)
    assert owner_mode(other / "p") == (NOBODY, NOBODY, 0o644)
    assert os.lstat(other / "l").st_gid == NOBODY
    assert owner_mode(other / "d") == (NOBODY, NOBODY, 0o755)
    assert owner_mode(other / "d700") == (NOBODY, NOBODY, 0o700)


def test_a_setgid_bit_for_a_group_the_user_is_not_in_is_dropped(daemon: Daemon) -> None:
    setgid = shared_dir(daemon, "team", NOBODY, USERS_GID, 0o2775)
    team = daemon.root() / "team"
    py_as(
        "import os, sys; os.close(os.open(os.path.join(sys.argv[1], 'x'), os.O_CREAT | os.O_WRONLY, 0o2755))",
        setgid,
    )
    assert owner_mode(team / "x") == (NOBODY, USERS_GID, 0o755)
    assert attempt("os.chmod(sys.argv[1], 0o2755)", setgid / "x") == "ok"
    assert owner_mode(team / "x") == (NOBODY, USERS_GID, 0o755)
    # the owner's own group is fine
    plain = shared_dir(daemon, "own", NOBODY, NOBODY, 0o755)
    assert attempt("os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o2755))", plain / "y") == "ok"
    assert owner_mode(daemon.root() / "own" / "y") == (NOBODY, NOBODY, 0o2755)


def test_a_supplementary_group_counts_for_setgid_and_chgrp(daemon: Daemon) -> None:
    setgid = shared_dir(daemon, "team", NOBODY, USERS_GID, 0o2775)
    plain = shared_dir(daemon, "own", NOBODY, NOBODY, 0o755)
    code = """
import os, sys
os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o2755))
os.close(os.open(sys.argv[2], os.O_CREAT | os.O_WRONLY, 0o644))
os.chown(sys.argv[2], -1, int(sys.argv[3]))
"""
    result = subprocess.run(
        [python(), "-I", "-c", code, str(setgid / "x"), str(plain / "y"), str(USERS_GID)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[USERS_GID],
        umask=0o022,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert owner_mode(daemon.root() / "team" / "x") == (NOBODY, USERS_GID, 0o2755)
    assert owner_mode(daemon.root() / "own" / "y") == (NOBODY, USERS_GID, 0o644)


# ---------------------------------------------------------------- the kernel checks permissions


def test_the_kernel_refuses_what_nobody_may_not_do_and_root_still_can(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    secret = mnt / "secret"
    secret.write_text("root only")
    os.chmod(secret, 0o600)
    public = mnt / "public"
    public.write_text("read only")
    os.chmod(public, 0o644)
    private = shared_dir(daemon, "private", 0, 0, 0o700)
    sticky = shared_dir(daemon, "sticky", 0, 0, 0o1777)
    theirs = sticky / "theirs"
    theirs.write_text("someone else's")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    os.chmod(theirs, 0o666)
    sh_as("touch mine", sticky)

    assert attempt("open(sys.argv[1]).read()", secret) == "EACCES"
    assert attempt("open(sys.argv[1], 'a')", public) == "EACCES"
    assert attempt("os.listdir(sys.argv[1])", private) == "EACCES"
    assert attempt("open(sys.argv[1], 'w')", mnt / "new") == "EACCES"  # the arena root is 0755 root
    assert attempt("os.mkdir(sys.argv[1])", mnt / "newdir") == "EACCES"
    assert attempt("os.symlink('x', sys.argv[1])", mnt / "newlink") == "EACCES"
    assert attempt("os.unlink(sys.argv[1])", public) == "EACCES"
    assert attempt("os.rename(sys.argv[1], sys.argv[1] + '2')", public) == "EACCES"
    assert attempt("os.chmod(sys.argv[1], 0o666)", public) == "EPERM"
    assert attempt("os.utime(sys.argv[1], (0, 0))", public) == "EPERM"
    assert attempt("os.chown(sys.argv[1], 0, 0)", sticky / "mine") == "EPERM"
    assert attempt("os.chown(sys.argv[1], -1, 0)", sticky / "mine") == "EPERM"
    assert attempt("os.chown(sys.argv[1], -1, 100)", sticky / "mine") == "EPERM"
    assert attempt("os.unlink(sys.argv[1])", theirs) == "EPERM"  # sticky: not nobody's file
    assert attempt("os.rename(sys.argv[1], sys.argv[2])", theirs, sticky / "taken") == "EPERM"
    assert attempt("os.rename(sys.argv[1], sys.argv[2])", sticky / "mine", theirs) == "EPERM"
    assert attempt("open(sys.argv[1], 'a').write('!')", theirs) == "ok"  # 0666: writable, not removable

    assert owner_mode(root / "sticky" / "mine") == (NOBODY, NOBODY, 0o644)
    assert owner_mode(root / "sticky" / "theirs") == (OTHER_UID, OTHER_UID, 0o666)
    assert (root / "sticky" / "theirs").read_text() == "someone else's!"
    assert (root / "public").read_text() == "read only"
    assert not (root / "new").exists() and not (root / "newdir").exists()
    assert not (root / "sticky" / "taken").exists()

    # nobody may remove its own file from the sticky directory; root may do everything refused above
    assert attempt("os.unlink(sys.argv[1])", sticky / "mine") == "ok"
    assert secret.read_text() == "root only"
    assert os.listdir(private) == []
    (mnt / "new").write_text("by root")
    os.chown(public, NOBODY, NOBODY)
    os.unlink(theirs)
    assert not (root / "sticky" / "theirs").exists()
    assert owner_mode(root / "public") == (NOBODY, NOBODY, 0o644)


def test_the_owner_changes_mode_times_and_size_and_root_changes_owners(daemon: Daemon) -> None:
    home = shared_dir(daemon, "home", NOBODY, NOBODY, 0o755)
    backing = daemon.root() / "home"
    py_as(
        """
        import os, sys
        path = sys.argv[1]
        with open(path, "w") as f:
            f.write("hello world")
        os.chmod(path, 0o600)
        os.truncate(path, 5)
        os.utime(path, ns=(1_000_000_123, 2_000_000_456))
        """,
        home / "f",
    )
    st = os.lstat(backing / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600)
    assert st.st_mtime_ns == 2_000_000_456
    assert st.st_size == 5 and (backing / "f").read_text() == "hello"
    # a non-owner with write permission may set the times to now, not to a chosen time
    assert attempt("os.chmod(sys.argv[1], 0o666)", home / "f") == "ok"
    assert attempt("os.utime(sys.argv[1], None)", home / "f", uid=OTHER_UID, gid=OTHER_UID) == "ok"
    assert os.lstat(backing / "f").st_mtime_ns > 2_000_000_456
    assert attempt("os.utime(sys.argv[1], (5, 5))", home / "f", uid=OTHER_UID, gid=OTHER_UID) == "EPERM"

    os.chown(home / "f", OTHER_UID, USERS_GID)
    assert owner_mode(backing / "f") == (OTHER_UID, USERS_GID, 0o666)
    assert owner_mode(home / "f") == (OTHER_UID, USERS_GID, 0o666)
    # a chown drops the set-user-ID bit of an executable, through the mount as on disk
    os.chmod(home / "f", 0o4755)
    os.chown(home / "f", NOBODY, NOBODY)
    assert owner_mode(backing / "f") == (NOBODY, NOBODY, 0o755)
    assert owner_mode(home / "f") == (NOBODY, NOBODY, 0o755)
    # a symlink's own owner changes, not its target's
    os.symlink("f", home / "l")
    os.chown(home / "l", OTHER_UID, OTHER_UID, follow_symlinks=False)
    assert os.lstat(backing / "l")[stat.ST_UID] == OTHER_UID
    assert owner_mode(backing / "f") == (NOBODY, NOBODY, 0o755)


def test_a_write_or_truncate_by_another_user_drops_set_id_bits(daemon: Daemon) -> None:
    """The daemon writes as root, which keeps set-ID bits; the user's write must not."""
    mnt, root = daemon.mnt(), daemon.root()
    for name, mode in (("suid", 0o4777), ("sgid", 0o2777), ("both", 0o6777)):
        (mnt / name).write_text("x")
        os.chmod(mnt / name, mode)
        assert owner_mode(root / name) == (0, 0, mode)
    assert attempt("open(sys.argv[1], 'a').write('by nobody')", mnt / "suid") == "ok"
    assert attempt("os.truncate(sys.argv[1], 0)", mnt / "sgid") == "ok"
    fd_write = "fd = os.open(sys.argv[1], os.O_WRONLY); os.pwrite(fd, b'y', 0); os.close(fd)"
    assert attempt(fd_write, mnt / "both") == "ok"
    for name in ("suid", "sgid", "both"):
        assert owner_mode(root / name) == (0, 0, 0o777), name
        assert owner_mode(mnt / name) == (0, 0, 0o777), f"{name} through the mount"
    assert (root / "suid").read_text() == "xby nobody"


def test_user_attributes_follow_file_permissions(daemon: Daemon) -> None:
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "roots").write_text("x")
    os.chmod(mnt / "roots", 0o644)
    os.setxattr(mnt / "roots", "user.note", b"root's")
    home = shared_dir(daemon, "home", NOBODY, NOBODY, 0o755)
    sh_as("touch mine", home)

    assert attempt("print(os.getxattr(sys.argv[1], 'user.note'), end=' ')", mnt / "roots") == 'b"root\'s" ok'
    assert attempt("os.setxattr(sys.argv[1], 'user.note', b'x')", mnt / "roots") == "EACCES"
    assert attempt("os.removexattr(sys.argv[1], 'user.note')", mnt / "roots") == "EACCES"
    assert attempt("os.setxattr(sys.argv[1], 'user.realize.mode', b'unreal')", mnt / "roots") == "EACCES"
    assert os.getxattr(root / "roots", "user.note") == b"root's"
    assert "user.realize.mode" not in os.listxattr(root / "roots")

    assert attempt("os.setxattr(sys.argv[1], 'user.note', b'mine')", home / "mine") == "ok"
    assert attempt("os.setxattr(sys.argv[1], 'user.realize.mode', b'unreal')", home / "mine") == "ok"
    assert os.getxattr(root / "home" / "mine", "user.note") == b"mine"
    assert os.getxattr(root / "home" / "mine", "user.realize.mode") == b"unreal"


# ---------------------------------------------------------------- open files


SURVIVOR = """
import os, sys
mnt, backing = sys.argv[1], sys.argv[2]
f, g = os.path.join(mnt, "f"), os.path.join(mnt, "g")
with open(f, "wb") as out:
    out.write(b"first")
fd = os.open(f, os.O_RDWR)
ino = os.fstat(fd).st_ino

os.rename(f, g)
assert os.pread(fd, 5, 0) == b"first"
os.pwrite(fd, b"FIRST!", 0)
st = os.fstat(fd)
assert (st.st_ino, st.st_nlink, st.st_size) == (ino, 1, 6), st
assert os.stat(g).st_ino == ino
with open(os.path.join(backing, "g"), "rb") as renamed:
    assert renamed.read() == b"FIRST!"

os.unlink(g)
assert not os.path.exists(os.path.join(backing, "g"))
st = os.fstat(fd)
assert (st.st_ino, st.st_nlink, st.st_size) == (ino, 0, 6), st
os.pwrite(fd, b"-more", 6)
assert os.pread(fd, 100, 0) == b"FIRST!-more"
assert os.fstat(fd).st_size == 11
os.ftruncate(fd, 3)
assert os.fstat(fd).st_size == 3
assert os.pread(fd, 100, 0) == b"FIR"
os.fsync(fd)
os.close(fd)
assert sorted(os.listdir(mnt)) == [], os.listdir(mnt)
print("survived")
"""


@pytest.mark.parametrize("uid", [0, NOBODY], ids=["root", "nobody"])
def test_an_open_file_survives_rename_and_unlink(daemon: Daemon, uid: int) -> None:
    mnt = shared_dir(daemon, "work", uid, uid, 0o755)
    assert py_as(SURVIVOR, mnt, daemon.root() / "work", uid=uid, gid=uid) == "survived\n"


def test_an_unlinked_open_file_is_not_the_new_file_at_its_name(daemon: Daemon) -> None:
    mnt = daemon.mnt()
    (mnt / "f").write_bytes(b"old content")
    old = os.open(mnt / "f", os.O_RDWR)
    try:
        old_ino = os.fstat(old).st_ino
        os.unlink(mnt / "f")
        (mnt / "f").write_bytes(b"new")
        new_st = os.stat(mnt / "f")
        assert new_st.st_ino != old_ino
        assert (new_st.st_nlink, new_st.st_size) == (1, 3)
        st = os.fstat(old)
        assert (st.st_ino, st.st_nlink, st.st_size) == (old_ino, 0, 11)
        assert os.pread(old, 100, 0) == b"old content"
        os.pwrite(old, b"OLD", 0)
        assert (mnt / "f").read_bytes() == b"new"
        assert (daemon.root() / "f").read_bytes() == b"new"
        assert os.pread(old, 100, 0) == b"OLD content"
    finally:
        os.close(old)
    assert (mnt / "f").read_bytes() == b"new"


def test_an_open_file_replaced_by_a_rename_keeps_its_content(daemon: Daemon) -> None:
    mnt = daemon.mnt()
    (mnt / "victim").write_bytes(b"victim")
    (mnt / "other").write_bytes(b"other!!")
    fd = os.open(mnt / "victim", os.O_RDONLY)
    try:
        ino = os.fstat(fd).st_ino
        os.rename(mnt / "other", mnt / "victim")
        assert os.pread(fd, 100, 0) == b"victim"
        st = os.fstat(fd)
        assert (st.st_ino, st.st_nlink, st.st_size) == (ino, 0, 6)
        assert (mnt / "victim").read_bytes() == b"other!!"
        assert os.stat(mnt / "victim").st_ino != ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("how", ["rename-over", "unlink-create"])
def test_a_file_replaced_in_the_backing_directory_while_open_shows_the_new_file(
    daemon: Daemon, how: str
) -> None:
    """How editors and sync tools save: a new file takes the name while a reader holds the old one."""
    mnt, root = daemon.mnt(), daemon.root()
    (mnt / "f").write_bytes(b"short")
    fd = os.open(mnt / "f", os.O_RDONLY)
    try:
        if how == "rename-over":
            (root / "f.tmp").write_bytes(b"a much longer replacement")
            os.rename(root / "f.tmp", root / "f")
        else:
            (root / "f").unlink()
            (root / "f").write_bytes(b"a much longer replacement")
        wait_for(lambda: os.stat(mnt / "f").st_size == 25, 5, "the new file's size through the mount")
        assert (mnt / "f").read_bytes() == b"a much longer replacement"
        assert os.pread(fd, 100, 0) == b"short"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert (mnt / "f").read_bytes() == b"a much longer replacement"


def test_attributes_of_an_unlinked_open_file_can_still_change(daemon: Daemon) -> None:
    mnt = daemon.mnt()
    (mnt / "f").write_bytes(b"data")
    fd = os.open(mnt / "f", os.O_RDWR)
    try:
        os.unlink(mnt / "f")
        os.fchmod(fd, 0o600)
        os.utime(fd, ns=(1_000_000_000, 3_000_000_000))
        os.fchown(fd, OTHER_UID, OTHER_UID)
        st = os.fstat(fd)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_mtime_ns, st.st_uid, st.st_nlink) == (3_000_000_000, OTHER_UID, 0)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the daemon's umask


def test_root_with_umask_022_gets_0644(daemon: Daemon) -> None:
    sh_as("touch f && mkdir d && mkfifo p", daemon.mnt(), uid=0, gid=0, umask=0o022)
    assert owner_mode(daemon.root() / "f") == (0, 0, 0o644)
    assert owner_mode(daemon.root() / "d") == (0, 0, 0o755)
    assert owner_mode(daemon.root() / "p") == (0, 0, 0o644)


def test_the_daemons_own_umask_never_reaches_what_users_create(base: Path) -> None:
    d = Daemon(base)
    old = os.umask(0o077)  # the daemon inherits a strict umask...
    try:
        d.start()
    finally:
        os.umask(old)
    try:
        sh_as("touch f022 && mkdir d022", d.mnt(), uid=0, gid=0, umask=0o022)
        sh_as("touch f000 && mkdir d000", d.mnt(), uid=0, gid=0, umask=0o000)
        os.chmod(d.mnt(), 0o1777)
        sh_as("touch n002 && mkdir m002", d.mnt(), umask=0o002)
        assert owner_mode(d.root() / "f022") == (0, 0, 0o644)  # ...which is not applied
        assert owner_mode(d.root() / "d022") == (0, 0, 0o755)
        assert owner_mode(d.root() / "f000") == (0, 0, 0o666)
        assert owner_mode(d.root() / "d000") == (0, 0, 0o777)
        assert owner_mode(d.root() / "n002") == (NOBODY, NOBODY, 0o664)
        assert owner_mode(d.root() / "m002") == (NOBODY, NOBODY, 0o775)
        assert d.stop() == 0
    finally:
        d.kill()
