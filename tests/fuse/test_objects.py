"""Every kind of object the disk holds, through the mount: hard links, UNIX sockets, devices, FIFOs.

Hard links behave as on the disk (one inode, a link count, ctimes) and each name is a
path of its own in the index; sockets, devices and FIFOs are made in the Real and never
indexed (docs/design.md, "Every kind of object").
"""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import NOBODY, Daemon, run_as, wait_for


@pytest.fixture
def d(base: Path) -> Iterator[Daemon]:
    daemon = Daemon(base, extra='\n[consensus]\nrest = "200ms"\n')
    daemon.start()
    try:
        yield daemon
        daemon.stop()
    finally:
        daemon.kill()


def history(d: Daemon) -> list[tuple[str, str, int]]:
    entries = json.loads((d.mountpoint / ".realize" / "history.json").read_text())["arenas"]["a"]
    return [(e["op"], e["path"], (e["new"] or {}).get("size", 0)) for e in entries]


def settled(d: Daemon, *entries: tuple[str, str, int]) -> None:
    """Wait until the history holds *entries* (op, path, size)."""
    wait_for(lambda: all(e in history(d) for e in entries), 20, f"history entries {entries}")


def test_a_hard_link_is_one_inode_with_two_names(d: Daemon) -> None:
    mnt, root = d.mnt(), d.root()
    (mnt / "f").write_text("first")
    before = os.stat(mnt / "f")
    os.link(mnt / "f", mnt / "g")
    f, g = os.stat(mnt / "f"), os.stat(mnt / "g")
    assert f.st_ino == g.st_ino == before.st_ino  # the source keeps its number
    assert f.st_nlink == g.st_nlink == os.stat(root / "f").st_nlink == 2
    assert os.stat(root / "g").st_ino == os.stat(root / "f").st_ino
    assert f.st_ctime_ns == os.stat(root / "f").st_ctime_ns > before.st_ctime_ns  # as on the disk

    with open(mnt / "f", "rb") as reader:
        assert reader.read() == b"first"  # in the kernel's page cache now
        with open(mnt / "g", "r+b") as writer:
            writer.write(b"second, longer")
        reader.seek(0)
        assert reader.read() == b"second, longer"
    assert (mnt / "f").read_bytes() == b"second, longer"
    assert os.stat(mnt / "f").st_size == 14

    os.rename(mnt / "g", mnt / "h")
    assert os.stat(mnt / "h").st_ino == f.st_ino and os.stat(mnt / "h").st_nlink == 2
    os.rename(mnt / "f", mnt / "h")  # two names of one file: rename(2) does nothing
    assert (mnt / "f").exists() and (mnt / "h").exists() and (root / "f").exists()

    os.unlink(mnt / "f")
    h = os.stat(mnt / "h")
    assert h.st_nlink == 1 and h.st_ino == f.st_ino
    assert h.st_ctime_ns == os.stat(root / "h").st_ctime_ns  # unlink moves the ctime on ext4
    assert (mnt / "h").read_bytes() == b"second, longer"
    assert not (mnt / "f").exists() and not (root / "f").exists()


def test_names_linked_in_the_backing_tree_share_an_inode(d: Daemon) -> None:
    mnt, root = d.mnt(), d.root()
    (root / "a").write_text("x")
    os.link(root / "a", root / "b")
    assert os.stat(mnt / "a").st_ino == os.stat(mnt / "b").st_ino
    assert os.stat(mnt / "b").st_nlink == 2
    with open(mnt / "b") as held:
        os.unlink(root / "a")  # behind the kernel's back: the other name keeps the file
        wait_for(lambda: not (mnt / "a").exists(), 10, "the name to go")
        assert [os.stat(mnt / "b").st_nlink, os.fstat(held.fileno()).st_nlink] == [1, 1]
        assert held.read() == "x"


def test_each_name_is_a_path_of_its_own_in_the_index(d: Daemon) -> None:
    mnt, root = d.mnt(), d.root()
    (mnt / "x").write_text("1")
    os.mkdir(mnt / "sub")
    os.link(mnt / "x", mnt / "sub" / "y")
    settled(d, ("create", "x", 1), ("create", "sub/y", 1))
    (mnt / "sub" / "y").write_text("22")  # through the mount, by the second name
    settled(d, ("overwrite", "x", 2), ("overwrite", "sub/y", 2))
    (root / "x").write_text("333")  # on the disk, by the first
    settled(d, ("overwrite", "x", 3), ("overwrite", "sub/y", 3))
    os.unlink(mnt / "x")
    settled(d, ("delete", "x", 0))
    assert ("delete", "sub/y", 0) not in history(d)


def test_a_change_under_one_name_reaches_names_the_mount_never_showed(base: Path) -> None:
    """Links made before the daemon started, one name never looked up through the mount:
    the indexer knows both names from its walk."""
    d = Daemon(base, extra='\n[consensus]\nrest = "200ms"\n')
    d.root().mkdir(parents=True, exist_ok=True)
    (d.root() / "a").write_text("1")
    (d.root() / "d").mkdir()
    os.link(d.root() / "a", d.root() / "d" / "b")
    d.start()
    try:
        settled(d, ("create", "a", 1), ("create", "d/b", 1))
        (d.mnt() / "a").write_text("22")  # through the mount: only "a" is known there
        settled(d, ("overwrite", "a", 2), ("overwrite", "d/b", 2))
        (d.root() / "d" / "b").write_text("333")  # on the disk, under the other name
        settled(d, ("overwrite", "a", 3), ("overwrite", "d/b", 3))
        d.stop()
    finally:
        d.kill()


def test_a_unix_socket_is_made_in_the_real_and_never_indexed(d: Daemon) -> None:
    mnt, root = d.mnt(), d.root()
    with socket.socket(socket.AF_UNIX) as server, socket.socket(socket.AF_UNIX) as client:
        server.bind(str(mnt / "agent.sock"))
        server.listen()
        client.connect(str(mnt / "agent.sock"))
        conn, _ = server.accept()
        with conn:
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.sendall(b"pong")
            assert client.recv(4) == b"pong"
    assert stat.S_ISSOCK(os.lstat(root / "agent.sock").st_mode)
    assert stat.S_ISSOCK(os.lstat(mnt / "agent.sock").st_mode)
    (mnt / "after").write_text("after")
    settled(d, ("create", "after", 5))
    assert not any(path == "agent.sock" for _, path, _ in history(d))


def test_devices_are_made_for_root_and_refused_to_others(d: Daemon) -> None:
    mnt, root = d.mnt(), d.root()
    os.mknod(mnt / "null", 0o640 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(mnt / "loop", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    st = os.lstat(root / "null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o640
    assert stat.S_ISBLK(os.lstat(mnt / "loop").st_mode) and os.lstat(mnt / "loop").st_rdev == os.makedev(7, 0)
    os.chmod(mnt, 0o777)
    refused = run_as(["mknod", str(mnt / "mine"), "c", "1", "3"], check=False)
    assert refused.returncode != 0 and "not permitted" in refused.stderr
    assert not (root / "mine").exists()
    run_as(["mkfifo", str(mnt / "fifo")])  # what anyone may make, they may
    assert os.lstat(root / "fifo").st_uid == NOBODY
    (mnt / "after").write_text("after")
    settled(d, ("create", "after", 5))
    assert {path for _, path, _ in history(d)} == {"after"}


def test_a_regular_file_made_by_mknod(d: Daemon) -> None:
    os.mknod(d.mnt() / "empty", 0o640 | stat.S_IFREG)
    st = os.lstat(d.root() / "empty")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and stat.S_IMODE(st.st_mode) == 0o640


KINDS = ("regular", "fifo", "block", "char", "socket")


def make(kind: str, path: Path) -> None:
    if kind == "regular":
        path.touch(0o644)
    elif kind == "fifo":
        os.mkfifo(path, 0o644)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    else:
        os.mknod(path, 0o644 | (stat.S_IFBLK if kind == "block" else stat.S_IFCHR), os.makedev(1, 3))


def links_as_pjdfstest_does(top: Path) -> list[object]:
    """The steps of pjdfstest's link/00.t (less the pauses for its one-second clocks): what each
    call answered and what ``lstat`` showed, for every kind of object."""
    trace: list[object] = []

    def call(label: str, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
            trace.append((label, 0))
        except OSError as exc:
            trace.append((label, exc.errno))

    def look(*names: str) -> None:
        for name in names:
            try:
                st = os.lstat(top / name)
                trace.append(
                    (
                        name,
                        stat.S_IFMT(st.st_mode),
                        stat.S_IMODE(st.st_mode),
                        st.st_nlink,
                        st.st_uid,
                        st.st_gid,
                    )
                )
            except OSError as exc:
                trace.append((name, exc.errno))

    for kind in KINDS:
        trace.append(kind)
        make(kind, top / "n0")
        look("n0")
        call("link", os.link, top / "n0", top / "n1")
        look("n0", "n1")
        call("link", os.link, top / "n1", top / "n2")
        look("n0", "n1", "n2")
        call("chmod", os.chmod, top / "n1", 0o201)
        call("chown", os.lchown, top / "n1", 65534, 65533)
        look("n0", "n1", "n2")
        for name in ("n0", "n2", "n1"):
            call("unlink", os.unlink, top / name)
            look("n0", "n1", "n2")
        make(kind, top / "n0")
        os.chmod(top / "n0", 0o600)
        as_nobody = run_as(["ln", str(top / "n0"), str(top / "n1")], check=False)  # protected_hardlinks
        trace.append(("link as nobody", as_nobody.returncode, "not permitted" in as_nobody.stderr))
        os.lchown(top / "n0", 65534, -1)
        as_nobody = run_as(["ln", str(top / "n0"), str(top / "ro" / "n1")], check=False)  # no write access
        trace.append(("link as nobody", as_nobody.returncode, "Permission denied" in as_nobody.stderr))
        as_nobody = run_as(["ln", str(top / "n0"), str(top / "n1")], check=False)  # the owner may
        trace.append(("link as nobody", as_nobody.returncode))
        look("n0", "n1", "ro/n1")
        os.unlink(top / "n0")
        os.unlink(top / "n1")
    return trace


def test_links_of_every_kind_answer_as_on_the_disk(d: Daemon, base: Path) -> None:
    disk = base / "disk"
    disk.mkdir()
    for top in (disk, d.mnt()):
        os.chmod(top, 0o777)
        (top / "ro").mkdir(0o755)
    assert links_as_pjdfstest_does(d.mnt()) == links_as_pjdfstest_does(disk)
