"""The namespace model without a kernel: inodes, the Real, and what to invalidate."""

from __future__ import annotations

import os
import resource
import stat
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
import trio

from realizefs.config import ArenaConfig
from realizefs.errors import FsError, NotFound, NotPermitted, Stale
from realizefs.real.backing import Owner
from realizefs.real.watcher import Change
from realizefs.types import Mode
from realizefs.vfs.changes import backing_changed, everything
from realizefs.vfs.inodes import ROOT_INODE
from realizefs.vfs.namespace import Namespace

ROOT = Owner(0, 0, lambda gid: gid == 0)
CREATE, DELETE, MODIFY = 0x100, 0x200, 0x2


@pytest.fixture
def ns(root: Path) -> Iterator[Namespace]:
    namespace = Namespace([ArenaConfig("a", root, Mode.REAL)], [])
    yield namespace
    namespace.close()


def arena(ns: Namespace) -> int:
    return ns.lookup(ROOT_INODE, b"a").ino


def test_a_directory_swapped_for_a_symlink_is_never_followed(
    ns: Namespace, root: Path, tmp_path: Path
) -> None:
    """A user who can write the backing tree must not make the root daemon act elsewhere."""
    a = arena(ns)
    d = ns.mkdir(a, b"d", 0o755, ROOT).ino
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("secret")
    os.rename(root / "d", root / "d.orig")
    os.symlink(outside, root / "d")  # the kernel may still hold "d" as the directory inode
    attempts: list[Callable[[], object]] = [
        lambda: ns.lookup(d, b"f"),
        lambda: ns.create(d, b"new", 0o644, os.O_WRONLY, ROOT),
        lambda: ns.mkdir(d, b"newdir", 0o755, ROOT),
        lambda: ns.symlink(d, b"ln", b"x", ROOT),
        lambda: ns.unlink(d, b"f"),
        lambda: ns.opendir(d),
        lambda: trio.run(partial(ns.setxattr, d, b"user.x", b"1")),
        lambda: trio.run(partial(ns.setattr, d, None, mode=0o777)),
    ]
    for attempt in attempts:
        with pytest.raises(FsError):
            attempt()
    assert sorted(os.listdir(outside)) == ["f"]
    assert (outside / "f").read_text() == "secret"
    assert stat.S_IMODE(os.stat(outside).st_mode) != 0o777


def test_virtual_directories_hold_no_files(ns: Namespace) -> None:
    with pytest.raises(NotPermitted):
        ns.mkdir(ROOT_INODE, b"x", 0o755, ROOT)
    with pytest.raises(NotPermitted):
        ns.rmdir(ROOT_INODE, b"a")
    with pytest.raises(NotFound):
        ns.lookup(ROOT_INODE, b"nothing")


def test_changes_made_through_the_namespace_need_no_invalidation(ns: Namespace, root: Path) -> None:
    a = arena(ns)
    fh, attr = ns.create(a, b"f", 0o644, os.O_WRONLY, ROOT)
    assert trio.run(ns.write, fh, 0, b"data") == 4
    ns.release(fh)
    ns.getattr(a)
    todo = backing_changed(ns, a, [Change(a, b"", b"f", CREATE), Change(a, b"", b"f", MODIFY)])
    assert not todo.entries and attr.ino not in todo.attrs


def test_direct_changes_are_invalidated(ns: Namespace, root: Path) -> None:
    a = arena(ns)
    (root / "f").write_text("one")
    (root / "g").write_text("g")
    f = ns.lookup(a, b"f").ino
    g = ns.lookup(a, b"g").ino
    (root / "f").write_text("two")  # behind the kernel's back
    (root / "g").unlink()
    todo = backing_changed(ns, a, [Change(a, b"", b"f", MODIFY), Change(a, b"", b"g", DELETE)])
    assert f in todo.data and f not in todo.attrs  # its cached pages too, not only its attributes
    assert (a, b"g") in todo.entries and ns.inodes.child(a, b"g") is None
    assert g not in todo.attrs
    unknown = backing_changed(ns, a, [Change(a, b"never/seen", b"x", CREATE)])
    assert not unknown  # the kernel cannot hold what it was never shown


def test_inode_survives_rename_and_kind_change_gets_a_new_one(ns: Namespace, root: Path) -> None:
    a = arena(ns)
    d = ns.mkdir(a, b"d", 0o755, ROOT).ino
    ns.rename(a, b"d", a, b"e", 0)
    assert ns.lookup(a, b"e").ino == d
    os.rmdir(root / "e")
    (root / "e").write_text("now a file")
    assert ns.lookup(a, b"e").ino != d


# ---------------------------------------------------------------- node identity


def read_all(ns: Namespace, fh: int) -> bytes:
    return trio.run(ns.read, fh, 0, 1 << 16)


@pytest.fixture
def unpinned(root: Path) -> Iterator[Namespace]:
    """A namespace over its descriptor budget: nodes are reached by path and checked."""
    namespace = Namespace([ArenaConfig("a", root, Mode.REAL)], [], max_pins=0)
    yield namespace
    namespace.close()


def test_a_pinned_node_stays_the_object_it_was_looked_up_as(ns: Namespace, root: Path) -> None:
    """A rename-replace in the backing tree: the old inode is still the old file, as on the disk."""
    a = arena(ns)
    (root / "f").write_text("old")
    old = ns.lookup(a, b"f").ino
    (root / "tmp").write_text("new")
    os.rename(root / "tmp", root / "f")  # the kernel has not been told yet
    fh, _ = ns.open(old, os.O_RDONLY)  # an open that raced the rename gets the old file
    assert read_all(ns, fh) == b"old"
    ns.release(fh)
    assert ns.getattr(old).nlink == 0  # it answers as an unlinked file
    todo = backing_changed(ns, a, [Change(a, b"", b"f", 0x80)])  # IN_MOVED_TO
    assert (a, b"f") in todo.entries and ns.inodes.is_orphan(old)
    new = ns.lookup(a, b"f").ino
    assert new != old
    fh, keep = ns.open(new, os.O_RDONLY)
    assert read_all(ns, fh) == b"new" and not keep
    ns.release(fh)
    ns.forget(old, 1)
    assert old not in ns.inodes
    with pytest.raises(Stale):
        ns.getattr(old)


def test_pins_last_as_long_as_the_kernel_references(ns: Namespace, root: Path) -> None:
    a = arena(ns)
    (root / "f").write_text("x")
    f = ns.lookup(a, b"f").ino
    ns.lookup(a, b"f")
    fds = len(os.listdir("/proc/self/fd"))
    ns.forget(f, 1)
    assert len(os.listdir("/proc/self/fd")) == fds  # one reference left
    ns.forget(f, 1)
    assert len(os.listdir("/proc/self/fd")) == fds - 1
    assert ns.inodes.child(a, b"f") == f  # the path keeps its number


def test_an_unpinned_node_is_never_opened_onto_the_object_that_replaced_it(
    unpinned: Namespace, root: Path
) -> None:
    """Without a pin the path is checked: the old inode is stale, the name gets a new one."""
    ns = unpinned
    a = arena(ns)
    (root / "f").write_text("old")
    old = ns.lookup(a, b"f").ino
    fh_old, _ = ns.open(old, os.O_RDONLY)
    (root / "tmp").write_text("new")
    os.rename(root / "tmp", root / "f")  # the kernel has not been told yet
    with pytest.raises(Stale):
        ns.open(old, os.O_RDONLY)  # ESTALE: the kernel looks "f" up again
    assert ns.inodes.is_orphan(old)
    assert read_all(ns, fh_old) == b"old"  # what was open stays the old file
    assert ns.getattr(old).size == 3  # answered by its open descriptor
    new = ns.lookup(a, b"f").ino
    assert new != old
    fh_new, keep = ns.open(new, os.O_RDONLY)
    assert read_all(ns, fh_new) == b"new" and not keep
    ns.release(fh_old)
    ns.forget(old, 1)
    assert old not in ns.inodes
    with pytest.raises(Stale):
        ns.getattr(old)


@pytest.mark.parametrize(
    "operation",
    [
        lambda ns, ino: ns.getattr(ino),
        lambda ns, ino: ns.open(ino, os.O_RDONLY),
        lambda ns, ino: trio.run(partial(ns.setattr, ino, None, mode=0o600)),
        lambda ns, ino: ns.getxattr(ino, b"user.x"),
        lambda ns, ino: ns.listxattr(ino),
        lambda ns, ino: trio.run(partial(ns.setxattr, ino, b"user.x", b"1")),
        lambda ns, ino: ns.removexattr(ino, b"user.x"),
    ],
)
def test_every_path_operation_checks_the_object(
    unpinned: Namespace, root: Path, operation: Callable[[Namespace, int], object]
) -> None:
    ns = unpinned
    a = arena(ns)
    (root / "f").write_text("old")
    os.setxattr(root / "f", "user.x", b"0")
    old = ns.lookup(a, b"f").ino
    (root / "tmp").write_text("new")
    os.chmod(root / "tmp", 0o644)
    os.rename(root / "tmp", root / "f")
    with pytest.raises(Stale):
        operation(ns, old)
    assert stat.S_IMODE(os.stat(root / "f").st_mode) == 0o644  # the new object was not touched
    assert "user.x" not in os.listxattr(root / "f")


def test_a_removed_object_is_stale_and_its_entry_is_invalidated(unpinned: Namespace, root: Path) -> None:
    ns = unpinned
    a = arena(ns)
    (root / "f").write_text("x")
    f = ns.lookup(a, b"f").ino
    (root / "f").unlink()
    with pytest.raises(Stale):
        ns.open(f, os.O_RDONLY)
    todo = backing_changed(ns, a, [Change(a, b"", b"f", DELETE)])
    assert (a, b"f") in todo.entries  # the kernel may still hold the name: it must drop it
    with pytest.raises(NotFound):
        ns.lookup(a, b"f")


def test_a_file_replaced_through_the_mount_is_stale_for_late_openers(unpinned: Namespace, root: Path) -> None:
    """rename(tmp, f) through the mount while a reader holds f's old inode: ESTALE, never ENOENT."""
    ns = unpinned
    a = arena(ns)
    (root / "f").write_text("one")
    old = ns.lookup(a, b"f").ino
    fh, _ = ns.create(a, b"tmp", 0o644, os.O_WRONLY, ROOT)
    ns.release(fh)
    ns.rename(a, b"tmp", a, b"f", 0)
    with pytest.raises(Stale):
        ns.open(old, os.O_RDONLY)


def test_content_changed_with_size_and_mtime_put_back_drops_the_cached_pages(
    ns: Namespace, root: Path
) -> None:
    """What rsync --inplace -t and cp -p do: only the ctime tells."""
    a = arena(ns)
    path = root / "f"
    path.write_bytes(b"aaaa")
    f = ns.lookup(a, b"f").ino
    fh, _ = ns.open(f, os.O_RDONLY)
    ns.release(fh)
    fh, keep = ns.open(f, os.O_RDONLY)
    ns.release(fh)
    assert keep  # unchanged: the kernel keeps its pages
    before = path.stat()
    while path.stat().st_ctime_ns == before.st_ctime_ns:  # a coarse clock may need a tick to move
        with open(path, "r+b") as out:
            out.write(b"bbbb")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    fh, keep = ns.open(f, os.O_RDONLY)
    assert not keep
    assert read_all(ns, fh) == b"bbbb"
    ns.release(fh)


def test_an_overflow_costs_time_in_proportion_to_what_the_kernel_holds(ns: Namespace, root: Path) -> None:
    """100,000 known inodes: invalidating all of them after lost events takes well under a second of CPU."""
    a = arena(ns)
    for d in range(100):
        directory = ns.inodes.add(a, b"d%d" % d, stat.S_IFDIR)
        ns.inodes.looked_up(directory)  # the kernel holds them all
        for f in range(1000):
            ns.inodes.looked_up(ns.inodes.add(directory, b"f%d" % f, stat.S_IFREG))
    started = time.thread_time()
    todo = everything(ns)
    spent = time.thread_time() - started
    assert len(todo.entries) == 100 + 100 * 1000 and a in todo.attrs
    assert spent < 1.0, f"{spent:.2f} s of CPU for 100,000 inodes"  # was about 370 s: quadratic


def test_a_listing_longer_than_the_forgotten_bound_hands_out_every_entry(ns: Namespace, root: Path) -> None:
    """A listing numbers only what it hands to the kernel: the cache bound never drops a listed name."""
    a = arena(ns)
    ns.inodes.keep_forgotten = 5
    for i in range(20):
        (root / f"f{i}").write_text("x")
    fh = ns.opendir(a)
    seen = {}
    for index in range(ns.list_dir(fh, 0)):
        name, attr = ns.dir_entry(fh, index)
        if name not in (b".", b".."):
            ns.listed(fh, index, attr.ino)
            seen[name] = attr.ino
    ns.releasedir(fh)
    assert sorted(seen) == sorted(b"f%d" % i for i in range(20))
    assert all(ino in ns.inodes and ns.inodes.child(a, name) == ino for name, ino in seen.items())


def test_running_out_of_descriptors_pins_fewer_and_fails_nothing(ns: Namespace, root: Path) -> None:
    """A descriptor limit lowered under the daemon: lookups and creates go on, by path."""
    a = arena(ns)
    for i in range(60):
        (root / f"f{i}").write_text("x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 20, hard))
    try:
        inos = [ns.lookup(a, b"f%d" % i).ino for i in range(60)]
        fh, attr = ns.create(a, b"new", 0o644, os.O_WRONLY, ROOT)
        ns.release(fh)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(set(inos)) == 60 and attr.ino not in inos
    assert ns.max_pins < 60  # it pins fewer from now on
    assert ns.getattr(inos[-1]).size == 1


def test_a_device_is_made_only_for_a_caller_who_may_make_one(ns: Namespace, root: Path) -> None:
    """The kernel asks the daemon, which runs as root, so the caller's CAP_MKNOD decides."""
    a = arena(ns)
    refused = Owner(0, 0, lambda gid: gid == 0, may_mknod=lambda: False)
    with pytest.raises(NotPermitted):
        ns.mknod(a, b"null", stat.S_IFCHR | 0o600, os.makedev(1, 3), refused)
    assert not (root / "null").exists()
    allowed = Owner(0, 0, lambda gid: gid == 0, may_mknod=lambda: True)
    attr = ns.mknod(a, b"null", stat.S_IFCHR | 0o600, os.makedev(1, 3), allowed)
    assert stat.S_ISCHR(attr.mode) and os.lstat(root / "null").st_rdev == os.makedev(1, 3)
    sock = ns.mknod(a, b"sock", stat.S_IFSOCK | 0o644, 0, refused)  # anyone may make a socket
    assert stat.S_ISSOCK(os.lstat(root / "sock").st_mode) and sock.mode == stat.S_IFSOCK | 0o644


def test_a_link_is_another_name_of_the_node(ns: Namespace, root: Path) -> None:
    a = arena(ns)
    d = ns.mkdir(a, b"d", 0o755, ROOT).ino
    fh, f = ns.create(a, b"f", 0o644, os.O_WRONLY, ROOT)
    ns.release(fh)
    linked = ns.link(f.ino, d, b"g")
    assert linked.ino == f.ino and linked.nlink == 2
    assert os.stat(root / "d" / "g").st_ino == os.stat(root / "f").st_ino
    assert ns.lookup(d, b"g").ino == f.ino
    ns.unlink(a, b"f")
    assert ns.getattr(f.ino).nlink == 1 and not ns.inodes.is_orphan(f.ino)
    with pytest.raises(FsError) as info:
        ns.link(d, a, b"dir-link")  # the kernel refuses this first; the disk would too
    assert info.value.errno == 1
