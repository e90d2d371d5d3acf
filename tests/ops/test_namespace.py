"""The namespace model without a kernel: inodes, the Real, and what to invalidate."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from realizefs.config import ArenaConfig
from realizefs.errors import FsError, NotFound, NotPermitted
from realizefs.real.backing import Owner
from realizefs.real.watcher import Change
from realizefs.types import Mode
from realizefs.vfs.changes import backing_changed
from realizefs.vfs.inodes import ROOT_INODE
from realizefs.vfs.namespace import Namespace

ROOT = Owner(0, 0, lambda gid: gid == 0)
CREATE, DELETE, MODIFY = 0x100, 0x200, 0x2


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "real"
    path.mkdir()
    return path


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
        lambda: ns.setxattr(d, b"user.x", b"1"),
        lambda: ns.setattr(d, None, mode=0o777),
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
    handle = ns.file(fh)
    os.pwrite(handle.fd, b"data", 0)
    ns.wrote(handle)
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
    assert f in todo.attrs
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
