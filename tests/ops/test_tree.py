"""The per-arena `Tree` interface: the Real's adapter, and a tree of another kind behind the namespace."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from realizefs.config import ArenaConfig
from realizefs.errors import NoData, NotFound, NotPermitted, NotSupported
from realizefs.real.backing import Backing, Owner, split
from realizefs.types import Mode
from realizefs.vfs.attributes import MODE, STATUS
from realizefs.vfs.inodes import ROOT_INODE
from realizefs.vfs.namespace import Namespace, ident
from realizefs.vfs.realtree import RealTree
from realizefs.vfs.tree import Changes, Held, Pin, Stat, Tree

ROOT = Owner(0, 0, lambda gid: gid == 0)


@pytest.fixture
def real(root: Path) -> Iterator[RealTree]:
    backing = Backing(root)
    yield RealTree(backing)
    backing.close()


# ---------------------------------------------------------------- the Real


def test_real_files_read_and_write_through_their_handle(real: RealTree, root: Path) -> None:
    file, st = real.create(b"", b"f", os.O_RDWR, 0o640, ROOT)
    try:
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert trio.run(file.write, 0, b"hello world") == 11
        assert trio.run(file.read, 6, 100) == b"world"
        trio.run(file.fsync, True)
        assert trio.run(file.setattr, Changes(size=5)).st_size == 5
        trio.run(file.allocate, 0x01, 3 << 30, 4096)  # FALLOC_FL_KEEP_SIZE, past 32 bits of offset
        assert file.stat().st_size == 5 and file.stat().st_blocks > 0
    finally:
        file.close()
    assert (root / "f").read_bytes() == b"hello"
    names = {name: s for name, s in real.listdir(b"")}
    assert set(names) == {b"f"} and ident(names[b"f"]) == ident(real.stat(b"f"))


def test_real_pins_and_open_files_stay_the_object_when_its_name_is_replaced(
    real: RealTree, root: Path
) -> None:
    (root / "f").write_bytes(b"old")
    pin, st = real.pin(b"f")
    file = real.open(b"f", os.O_RDONLY)
    try:
        (root / "tmp").write_bytes(b"new!")
        os.rename(root / "tmp", root / "f")
        assert ident(pin.stat()) == ident(st) == ident(file.stat()) != ident(real.stat(b"f"))
        reopened = pin.open(os.O_RDONLY)
        try:
            assert trio.run(reopened.read, 0, 10) == b"old"
        finally:
            reopened.close()
        assert trio.run(file.read, 0, 10) == b"old"
        again = file.pin()
        assert ident(again.stat()) == ident(st)
        again.close()
    finally:
        pin.close()
        file.close()


def test_real_path_operations(real: RealTree, root: Path) -> None:
    real.mkdir(b"", b"d", 0o750, ROOT)
    real.symlink(b"d", b"ln", b"target", ROOT)
    assert real.readlink(b"d/ln") == b"target"
    real.create(b"d", b"f", os.O_WRONLY, 0o644, ROOT)[0].close()
    st = trio.run(real.setattr, b"d/f", Changes(mode=0o600, mtime_ns=10**18))
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns == 10**18
    real.rename(b"d/f", b"g", 0)
    real.unlink(b"d", b"ln")
    real.rmdir(b"", b"d")
    assert sorted(os.listdir(root)) == ["g"]
    assert real.statvfs().f_namemax > 0


def test_real_attributes_and_status(real: RealTree, root: Path) -> None:
    (root / "d").mkdir()
    assert real.stored_mode(b"d") is None
    real.set_mode(b"d", Mode.UNREAL)
    assert real.stored_mode(b"d") is Mode.UNREAL
    real.setxattr(b"d", b"user.x", b"1")
    assert sorted(real.xattr_names(b"d")) == [MODE, b"user.x"]
    assert real.getxattr(b"d", b"user.x") == b"1"
    real.removexattr(b"d", b"user.x")
    real.set_mode(b"d", None)
    assert real.xattr_names(b"d") == []
    assert real.status(b"d") == b"real"
    os.rmdir(root / "d")
    with pytest.raises(NotFound):
        real.status(b"d")  # worked out from the path's state, not a constant


# ---------------------------------------------------------------- another tree


@dataclass(frozen=True)
class MemoryStat:
    st_mode: int
    st_ino: int
    st_size: int = 0
    st_dev: int = 0xFEED
    st_nlink: int = 1
    st_uid: int = 0
    st_gid: int = 0
    st_atime_ns: int = 0
    st_mtime_ns: int = 10**18
    st_ctime_ns: int = 10**18
    st_rdev: int = 0
    st_blocks: int = 0
    st_blksize: int = 4096


@dataclass(frozen=True)
class MemoryNode:
    st: MemoryStat
    content: bytes = b""
    mode: Mode | None = None  # a realize mode set on it


class MemoryFile:
    def __init__(self, node: MemoryNode) -> None:
        self.node = node

    async def read(self, offset: int, size: int) -> bytes:
        return self.node.content[offset : offset + size]

    async def write(self, offset: int, data: bytes) -> int:
        raise NotPermitted("read-only")

    async def fsync(self, datasync: bool) -> None:
        pass

    async def allocate(self, mode: int, offset: int, length: int) -> None:
        raise NotSupported()

    def stat(self) -> MemoryStat:
        return self.node.st

    async def setattr(self, changes: Changes) -> MemoryStat:
        raise NotPermitted("read-only")

    def pin(self) -> MemoryPin:
        return MemoryPin(self.node)

    def close(self) -> None:
        pass


class MemoryPin:
    def __init__(self, node: MemoryNode) -> None:
        self.node = node

    def stat(self) -> MemoryStat:
        return self.node.st

    def open(self, flags: int) -> MemoryFile:
        return MemoryFile(self.node)

    def acl(self, name: bytes) -> bytes:
        raise NoData()

    def close(self) -> None:
        pass


class MemoryTree:
    """A read-only tree held in a dict of paths: directories map to None, files to their content."""

    def __init__(self, paths: dict[bytes, bytes | None], modes: dict[bytes, Mode]) -> None:
        self.nodes: dict[bytes, MemoryNode] = {}
        for number, (rel, content) in enumerate({b"": None, **paths}.items(), start=1):
            if content is None:
                st = MemoryStat(stat.S_IFDIR | 0o755, number, st_nlink=2)
            else:
                st = MemoryStat(stat.S_IFREG | 0o644, number, st_size=len(content))
            self.nodes[rel] = MemoryNode(st, content or b"", modes.get(rel))

    def _node(self, rel: bytes) -> MemoryNode:
        node = self.nodes.get(rel)
        if node is None:
            raise NotFound()
        return node

    def stat(self, rel: bytes) -> MemoryStat:
        return self._node(rel).st

    def pin(self, rel: bytes) -> tuple[MemoryPin, MemoryStat]:
        node = self._node(rel)
        return MemoryPin(node), node.st

    def pin_listed(self, rel: bytes, st: Stat) -> tuple[MemoryPin, MemoryStat]:
        return self.pin(rel)

    def open(self, rel: bytes, flags: int) -> MemoryFile:
        return MemoryFile(self._node(rel))

    def listdir(self, rel: bytes) -> list[tuple[bytes, MemoryStat]]:
        return [
            (split(path)[1], node.st) for path, node in self.nodes.items() if path and split(path)[0] == rel
        ]

    def readlink(self, rel: bytes) -> bytes:
        raise NotPermitted("no links here")

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs("/")

    def status(self, rel: bytes) -> bytes:
        self._node(rel)
        return b"in memory"

    def peers(self, rel: bytes) -> bytes | None:
        return None

    def held(self, rel: bytes) -> Held | None:
        return None

    def create(
        self, parent: bytes, name: bytes, flags: int, mode: int, owner: Owner
    ) -> tuple[MemoryFile, MemoryStat]:
        raise NotPermitted("read-only")

    def mkdir(self, parent: bytes, name: bytes, mode: int, owner: Owner) -> MemoryStat:
        raise NotPermitted("read-only")

    def mknod(self, parent: bytes, name: bytes, mode: int, rdev: int, owner: Owner) -> MemoryStat:
        raise NotPermitted("read-only")

    def link(self, source: Pin, parent: bytes, name: bytes) -> MemoryStat:
        raise NotPermitted("read-only")

    def symlink(self, parent: bytes, name: bytes, target: bytes, owner: Owner) -> MemoryStat:
        raise NotPermitted("read-only")

    def unlink(self, parent: bytes, name: bytes) -> None:
        raise NotPermitted("read-only")

    def rmdir(self, parent: bytes, name: bytes) -> None:
        raise NotPermitted("read-only")

    def rename(self, old: bytes, new: bytes, flags: int) -> None:
        raise NotPermitted("read-only")

    async def setattr(self, rel: bytes, changes: Changes) -> MemoryStat:
        raise NotPermitted("read-only")

    async def make_real(self, rel: bytes) -> MemoryStat:
        raise NotPermitted("read-only")

    def stored_mode(self, rel: bytes) -> Mode | None:
        node = self.nodes.get(rel)
        return node.mode if node else None

    def set_mode(self, rel: bytes, mode: Mode | None) -> None:
        raise NotPermitted("read-only")

    def xattr_names(self, rel: bytes) -> list[bytes]:
        return [MODE] if self._node(rel).mode else []

    def getxattr(self, rel: bytes, name: bytes) -> bytes:
        raise NoData()

    def setxattr(self, rel: bytes, name: bytes, value: bytes) -> None:
        raise NotPermitted("read-only")

    def removexattr(self, rel: bytes, name: bytes) -> None:
        raise NotPermitted("read-only")


def test_the_namespace_serves_any_tree_without_the_real(root: Path) -> None:
    tree = MemoryTree(
        {b"d": None, b"d/f": b"hello", b"d/e": None, b"d/e/g": b"deep", b"top": b"t"},
        modes={b"d": Mode.UNREAL},
    )

    def memory(config: ArenaConfig, backing: Backing) -> Tree:
        return tree

    ns = Namespace([ArenaConfig("a", root, Mode.REAL)], [], tree=memory)
    try:
        a = ns.lookup(ROOT_INODE, b"a").ino
        d = ns.lookup(a, b"d")
        assert stat.S_ISDIR(d.mode)
        e = ns.lookup(d.ino, b"e").ino
        f = ns.lookup(d.ino, b"f")
        g = ns.lookup(e, b"g").ino
        top = ns.lookup(a, b"top").ino
        assert f.size == 5 and ns.getattr(f.ino).size == 5 and ns.getattr(g).size == 4

        fh = ns.opendir(d.ino)
        listing = dict(ns.dir_entry(fh, i) for i in range(ns.list_dir(fh, 0)))
        ns.releasedir(fh)
        assert sorted(listing) == [b".", b"..", b"e", b"f"]
        assert listing[b"f"].ino == f.ino and listing[b"f"].size == 5

        fh, _ = ns.open(f.ino, os.O_RDONLY)
        assert trio.run(ns.read, fh, 1, 3) == b"ell"
        ns.release(fh)

        # the effective mode walks up the tree's own settings, then takes the arena default
        assert ns.getxattr(f.ino, MODE) == b"unreal"
        assert ns.getxattr(g, MODE) == b"unreal"
        assert ns.getxattr(top, MODE) == b"real"
        assert ns.listxattr(d.ino) == [MODE] and ns.listxattr(f.ino) == []
        assert ns.getxattr(f.ino, STATUS) == b"in memory"  # the tree's account of the path
        with pytest.raises(NotPermitted):
            ns.mkdir(d.ino, b"new", 0o755, ROOT)
    finally:
        ns.close()
    assert os.listdir(root) == []  # nothing came from, or went to, the Real
