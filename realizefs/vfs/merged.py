"""The merged tree of an arena: its Real, and the Unreal its index knows from peers.

A path that exists in the Real is the Real's (`realizefs.vfs.realtree`), as
before; a path that does not, but that this peer's view of the arena (the
index, `realizefs.store.index`) holds as a live Unreal entry, is that entry:
listed with its size, mtime and mode, owned by the arena root's owner, taking
no blocks on this disk. Directories that exist only in the Unreal are listed
and walked the same way. An Unreal object's identity is its node id and its
version: ``(UNREAL_DEV + a tag of its content hash, node id)``. The index keeps
a node's id while it lives at a path (and a rename made here keeps it), and
across restarts, so the mount numbers it `UNREAL_INODES` + its node id
(`fixed_inode`); a new version from a peer is another object, as a file
replaced by a rename is on a disk: a handle open on the old version keeps its
inode, and no page of the new version lands in that inode's cache.

Changes through the mount: making anything in an Unreal-only directory makes
that directory (and any Unreal-only one above it) in the Real first, with the
Unreal entry's mode; setting ``user.realize.mode`` on an Unreal-only directory
does the same to hold it. Deleting or renaming an Unreal entry is a change of
this peer's view, recorded in its history and told to peers (the disk holds
nothing of it); renaming one onto a Real path is refused with ``EXDEV`` (``mv``
then copies). An Unreal file opened for reading reads the version it had when
opened, through `UnrealContent` (the cache, or peers: `realizefs.sync.content`);
the chunks a handle has read stay in the cache while it is open.

Writing to an Unreal file makes it Real first (`RealizingFile`): at its first
change its content is completed locally (from the cache and peers), written
to a new file in the arena's staging directory (`realizefs.real.staging`, on
the same filesystem), given the version's mode and mtime, fsynced, and renamed
into place (``RENAME_NOREPLACE``: a Real file made there meanwhile is never
overwritten); the indexer is told to expect it (the Real now holds that very
version, no local change), then the write applies, as a local change.
Opening with ``O_TRUNC``, or truncating to 0, skips the download: an empty
Real file replaces the Unreal one (a local change). Reads before the first
change read the Unreal version. Any other change of an Unreal file's
attributes (``chmod``, ``chown``, ``utime``, a truncate to another size)
makes it Real the same way, then applies to the Real file (a local change);
on an Unreal-only directory it makes the directory. After a change of
attributes alone the mount's inode stays that object (the namespace gives it
the Real identity); a file made Real by a write or a truncate is another
object: an `UnrealPin` of it is stale once the Real holds its path. An Unreal
symbolic link is not made Real: changing one is refused with ``EIO``.

Concurrency: as `realizefs.vfs.tree` says; the index's reads take
microseconds; its writes for an Unreal delete or rename are one short
transaction on the event loop thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from realizefs.errors import Exists, FsError, NoData, NotEmpty, NotFound, NotPermitted, Stale
from realizefs.real import apply, staging
from realizefs.real.backing import RENAME_EXCHANGE, RENAME_NOREPLACE, Owner, join, split
from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Index, Record
from realizefs.types import Mode
from realizefs.vfs.realtree import RealFile, RealPin, RealTree
from realizefs.vfs.tree import Changes, Held, Pin, Stat

log = logging.getLogger(__name__)

UNREAL_DEV = 1 << 40  # device numbers are 32 bits: these are no disk's (+ a 32-bit version tag)
UNREAL_INODES = 1 << 62  # the mount's inode numbers of Unreal entries: this + node id
BLOCK = 4096
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC
REALIZE_BLOCK = 4 << 20  # bytes asked of the content at a time while realizing
Expect = Callable[[str, bytes, "os.stat_result | None"], None]  # the indexer's `expect`
# (arena, path) -> (bytes done, total) of consensus fetching a version to that path now, or None
Progress = Callable[[str, tuple[bytes, ...]], "tuple[int, int] | None"]


@dataclass(frozen=True, slots=True)
class UnrealStat:
    """The attributes of an Unreal entry, as `Stat` names them."""

    st_mode: int
    st_ino: int
    st_uid: int
    st_gid: int
    st_size: int
    st_mtime_ns: int
    st_nlink: int = 1
    st_dev: int = UNREAL_DEV
    st_rdev: int = 0
    st_blocks: int = 0
    st_blksize: int = BLOCK

    @property
    def st_atime_ns(self) -> int:
        return self.st_mtime_ns

    @property
    def st_ctime_ns(self) -> int:
        return self.st_mtime_ns


class UnrealReader(Protocol):
    """One open handle's reads of one version (`realizefs.sync.content.Reader`): what it has
    read stays in the cache until it is closed."""

    async def read(self, offset: int, size: int) -> bytes:
        """*size* bytes at *offset*; `FsError` (EIO) if unavailable."""

    def close(self) -> None: ...


class UnrealContent(Protocol):
    """Where an Unreal file's bytes come from (`realizefs.sync.content.Content`)."""

    async def read(self, arena: str, path: Sequence[bytes], record: Record, offset: int, size: int) -> bytes:
        """*size* bytes at *offset* of *path*'s version *record*; `FsError` (EIO) if unavailable.
        Nothing is kept for the caller (a realize writes what it reads to the disk)."""

    def reader(self, arena: str, path: Sequence[bytes], record: Record) -> UnrealReader:
        """A reader of *path*'s version *record* for an open handle."""

    def cached(self, record: Record) -> int:
        """How many bytes of the content of *record* this peer holds without the network."""


def fixed_inode(st: Stat) -> int | None:
    """The mount's inode number of an Unreal object (fixed by its node id); None for the Real."""
    return UNREAL_INODES + st.st_ino if unreal_device(st.st_dev) else None


def unreal_device(dev: int) -> bool:
    """Whether *dev* is the device number of an Unreal object's identity."""
    return dev >> 40 == 1


def version_tag(record: Record) -> int:
    """What tells one content of an Unreal file from another (0 for the rest)."""
    return zlib.crc32(record.hash) if record.kind == KIND_FILE and record.hash else 0


class UnrealFile:
    """An Unreal file open for reading: the version it had when opened. The chunks it has
    read stay in the cache until it is closed (its `UnrealReader`)."""

    __slots__ = ("_reader", "node", "path", "record", "st", "tree")

    def __init__(self, tree: MergedTree, node: int, path: tuple[bytes, ...], record: Record) -> None:
        self.tree, self.node, self.path, self.record = tree, node, path, record
        self.st = tree.unreal_stat(node, record)
        self._reader: UnrealReader | None = None  # made at the first read

    async def read(self, offset: int, size: int) -> bytes:
        if self._reader is None:
            content = self.tree.content
            if content is None:
                raise _unavailable(b"/".join(self.path), "reading")
            self._reader = content.reader(self.tree.arena, self.path, self.record)
        return await self._reader.read(offset, size)

    async def write(self, offset: int, data: bytes) -> int:
        raise FsError("opened for reading", errno=errno.EBADF)

    async def fsync(self, datasync: bool) -> None:
        pass  # nothing written

    async def allocate(self, mode: int, offset: int, length: int) -> None:
        raise FsError("opened for reading", errno=errno.EBADF)

    def stat(self) -> UnrealStat:
        return self.st

    async def setattr(self, changes: Changes) -> Stat:
        raise _unavailable(b"/".join(self.path), "changing")  # an orphan opened for reading

    def pin(self) -> UnrealPin:
        return UnrealPin(self.tree, self.node, version_tag(self.record))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class RealizingFile:
    """An Unreal file opened for writing: made Real at its first change (see the module doc)."""

    def __init__(self, tree: MergedTree, node: int, path: tuple[bytes, ...], record: Record, flags: int):
        self.tree, self.node, self.path, self.record = tree, node, path, record
        self.flags = flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)
        self.real: RealFile | None = None
        self.unreal = UnrealFile(tree, node, path, record)  # reads before the first change
        self.st = self.unreal.st
        self._realizing = trio.Lock()

    async def _made_real(self) -> RealFile:
        async with self._realizing:
            if self.real is None:
                self.real = await self.tree.realize(self.node, self.path, self.record, self.flags)
            return self.real

    async def read(self, offset: int, size: int) -> bytes:
        if self.real is not None:
            return await self.real.read(offset, size)
        return await self.unreal.read(offset, size)

    async def write(self, offset: int, data: bytes) -> int:
        return await (await self._made_real()).write(offset, data)

    async def fsync(self, datasync: bool) -> None:
        if self.real is not None:
            await self.real.fsync(datasync)

    async def allocate(self, mode: int, offset: int, length: int) -> None:
        await (await self._made_real()).allocate(mode, offset, length)

    def stat(self) -> Stat:
        return self.real.stat() if self.real is not None else self.st

    async def setattr(self, changes: Changes) -> Stat:
        if self.real is None and changes.size == 0 and not self._realizing.locked():
            self.real = self.tree.realize_empty(self.path, self.record, self.flags)  # nothing to fetch
        return await (await self._made_real()).setattr(changes)

    def pin(self) -> RealPin | UnrealPin:
        return (
            self.real.pin()
            if self.real is not None
            else UnrealPin(self.tree, self.node, version_tag(self.record))
        )

    def close(self) -> None:
        self.unreal.close()
        if self.real is not None:
            self.real.close()


def _show(rel: bytes) -> str:
    return rel.decode(errors="replace")


def _unavailable(rel: bytes, what: str) -> FsError:
    log.info("%s: %s an Unreal file is not possible yet: its content is not fetched", _show(rel), what)
    return FsError("the Unreal's content is not fetched yet", errno=errno.EIO)


class UnrealPin:
    """An Unreal entry at one version, by its node id: it stays that entry when renamed
    here; once the entry has another version (or none), the pin is stale."""

    __slots__ = ("node", "tag", "tree")

    def __init__(self, tree: MergedTree, node: int, tag: int) -> None:
        self.tree, self.node, self.tag = tree, node, tag

    def _found(self) -> tuple[tuple[bytes, ...], Record]:
        found = self.tree.index.at_node(self.tree.root, self.node)
        if found is None:
            raise NotFound()
        if version_tag(found[1]) != self.tag:
            raise Stale()  # another version now: another object
        if found[1].kind == KIND_FILE and self.tree._is_real(b"/".join(found[0])):
            raise Stale()  # made Real (then written or truncated): another object
        return found

    def stat(self) -> UnrealStat:
        return self.tree.unreal_stat(self.node, self._found()[1])

    def open(self, flags: int) -> UnrealFile | RealizingFile | RealFile:
        path, record = self._found()
        return self.tree.open_unreal(self.node, path, record, flags)

    def acl(self, name: bytes) -> bytes:
        raise NoData()  # an Unreal entry holds no attributes: its mode bits hold

    def close(self) -> None:
        pass


class MergedTree:
    """One arena's Real with its Unreal entries (see the module doc)."""

    def __init__(
        self,
        real: RealTree,
        index: Index,
        arena: str,
        content: UnrealContent | None = None,
        peer_name: Callable[[bytes], str] = lambda peer: peer.hex(),
        expect: Expect = lambda arena, rel, st: None,
        progress: Progress = lambda arena, path: None,
    ) -> None:
        self.real = real
        self.index = index
        self.arena = arena
        self.root = index.arena_root(arena)
        self.content = content
        self.peer_name = peer_name  # a peer's id in vectors -> its name in this peer's config
        self._owner_ids, self._owner_read = (0, 0), -2.0
        self._realizing: dict[int, trio.Lock] = {}  # node -> held while it is being made Real
        self.expect = expect  # tells the indexer a change of the Real is the daemon's own
        self.progress = progress

    # ------------------------------------------------------------ the Unreal

    def _unreal(self, rel: bytes) -> tuple[int, Record] | None:
        """The Unreal entry at *rel* (the Real has nothing there), or None."""
        found = self.index.entry(self.root, rel.split(b"/")) if rel else None
        return found if found is not None and not found[1].real else None

    def _owner(self) -> tuple[int, int]:
        """(uid, gid) of the arena root, who owns the Unreal entries: read at most every second."""
        now = time.monotonic()
        if now - self._owner_read > 1.0:
            st = self.real.stat(b"")
            self._owner_ids, self._owner_read = (st.st_uid, st.st_gid), now
        return self._owner_ids

    def unreal_stat(self, node: int, record: Record) -> UnrealStat:
        """The attributes of the Unreal entry *node* at version *record*."""
        uid, gid = self._owner()
        if record.kind == KIND_DIR:
            mode, nlink, size = stat.S_IFDIR | (record.mode or 0o755), 2, BLOCK
        elif record.kind == KIND_LINK:
            mode, nlink, size = stat.S_IFLNK | 0o777, 1, len(record.target or b"")
        else:
            mode, nlink, size = stat.S_IFREG | (record.mode & 0o7777), 1, record.size
        return UnrealStat(
            mode, node, uid, gid, size, record.mtime_ns, nlink, UNREAL_DEV + version_tag(record)
        )

    def _is_real(self, rel: bytes) -> bool:
        try:
            self.real.stat(rel)
        except NotFound:
            return False
        return True

    def _realize_dir(self, rel: bytes) -> None:
        """Make the Unreal-only directory *rel* (and those above it) in the Real."""
        if not rel or self._is_real(rel):
            return
        found = self._unreal(rel)
        if found is None or found[1].kind != KIND_DIR:
            raise NotFound()
        parent, name = split(rel)
        self._realize_dir(parent)
        owner = self.real.stat(b"")
        with contextlib.suppress(Exists):  # made meanwhile
            self.real.mkdir(
                parent, name, found[1].mode or 0o755, Owner(owner.st_uid, owner.st_gid, lambda g: True)
            )

    # ------------------------------------------------------------ reading

    def stat(self, rel: bytes) -> Stat:
        try:
            return self.real.stat(rel)
        except NotFound:
            found = self._unreal(rel)
            if found is None:
                raise
            return self.unreal_stat(*found)

    def pin(self, rel: bytes) -> tuple[RealPin | UnrealPin, Stat]:
        try:
            return self.real.pin(rel)
        except NotFound:
            found = self._unreal(rel)
            if found is None:
                raise
            return UnrealPin(self, found[0], version_tag(found[1])), self.unreal_stat(*found)

    def pin_listed(self, rel: bytes, st: Stat) -> tuple[RealPin | UnrealPin, Stat]:
        """An Unreal entry the listing read from the index is pinned as listed, by its node and
        version (`UnrealPin` checks both when used), without looking it up again: that would
        be a failed lookup in the Real and a read of the index for each name listed."""
        if unreal_device(st.st_dev):
            return UnrealPin(self, st.st_ino, st.st_dev - UNREAL_DEV), st
        return self.pin(rel)

    def open(self, rel: bytes, flags: int) -> RealFile | UnrealFile | RealizingFile:
        try:
            return self.real.open(rel, flags)
        except NotFound:
            found = self._unreal(rel)
            if found is None:
                raise
        return self.open_unreal(found[0], tuple(rel.split(b"/")), found[1], flags)

    def open_unreal(
        self, node: int, path: tuple[bytes, ...], record: Record, flags: int
    ) -> UnrealFile | RealizingFile | RealFile:
        if record.kind not in (KIND_FILE, KIND_DIR):  # a directory: opendir reads nothing through it
            raise FsError("a symbolic link", errno=errno.ELOOP)
        if not flags & _WRITE_FLAGS:
            return UnrealFile(self, node, path, record)
        if record.kind != KIND_FILE:
            raise FsError("a directory", errno=errno.EISDIR)
        if flags & os.O_TRUNC:
            return self.realize_empty(path, record, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))
        return RealizingFile(self, node, path, record, flags)

    # ---- realizing

    def _root_owner(self) -> Owner:
        st = self.real.stat(b"")
        return Owner(st.st_uid, st.st_gid, lambda g: g == st.st_gid)

    def _place(self, path: tuple[bytes, ...], staged: bytes, flags: int) -> RealFile:
        """Rename the staged file into *path* (never over a Real file) and open it there."""
        rel = b"/".join(path)
        try:
            self.real.backing.rename(staged, rel, RENAME_NOREPLACE)
        except (OSError, FsError) as exc:
            staging.discard(self.real.backing, staged)
            if getattr(exc, "errno", None) == errno.EEXIST:
                raise Exists("a Real file was made there meanwhile") from None
            raise
        return self.real.open(rel, flags)

    def realize_empty(self, path: tuple[bytes, ...], record: Record, flags: int) -> RealFile:
        """Replace the Unreal file *path* by an empty Real one (a local change)."""
        if self._is_real(b"/".join(path)):  # made Real meanwhile: truncate that one, as a disk would
            return self.real.open(b"/".join(path), flags | os.O_TRUNC)
        self._realize_dir(split(b"/".join(path))[0])
        fd, staged = staging.stage(self.real.backing, record.mode & 0o7777, self._root_owner())
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._place(path, staged, flags)

    async def realize(self, node: int, path: tuple[bytes, ...], record: Record, flags: int) -> RealFile:
        """Make the Unreal file *path* Real with the content of its version *record*, and open it.

        One realize at a time per node: a second writer waits for the first, then opens the
        Real file it placed (its own write then applies to it, as on a disk)."""
        rel = b"/".join(path)
        lock = self._realizing.setdefault(node, trio.Lock())
        try:
            async with lock:
                if self._is_real(rel):
                    return self.real.open(rel, flags)  # made Real meanwhile (by another handle)
                return await self._realize(path, record, flags)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._realizing.pop(node, None)

    async def _realize(self, path: tuple[bytes, ...], record: Record, flags: int) -> RealFile:
        rel = b"/".join(path)
        if self.content is None:
            raise _unavailable(rel, "realizing")
        self._realize_dir(split(rel)[0])
        backing = self.real.backing
        fd, staged = staging.stage(backing, record.mode & 0o7777, self._root_owner())
        try:
            offset = 0
            while offset < record.size:
                size = min(REALIZE_BLOCK, record.size - offset)
                data = await self.content.read(self.arena, path, record, offset, size)
                if len(data) != size:
                    raise FsError("the content ended early", errno=errno.EIO)
                await trio.to_thread.run_sync(apply.write_at, fd, data, offset)
                offset += size
            st = await trio.to_thread.run_sync(apply.seal, fd, record.mtime_ns)
        except BaseException:
            os.close(fd)
            staging.discard(backing, staged)
            raise
        os.close(fd)
        self.expect(self.arena, rel, st)
        log.info("%s/%s: made Real to be changed", self.arena, rel.decode(errors="replace"))
        return self._place(path, staged, flags)

    def listdir(self, rel: bytes) -> list[tuple[bytes, Stat]]:
        try:
            listed: list[tuple[bytes, Stat]] = list(self.real.listdir(rel))
        except NotFound:
            found = self._unreal(rel)
            if found is None or found[1].kind != KIND_DIR:
                raise
            listed = []
        names = {name for name, _ in listed}
        for name, node, record in self.index.entries(self.root, rel.split(b"/") if rel else []):
            if not record.real and name not in names:
                listed.append((name, self.unreal_stat(node, record)))
        return listed

    def readlink(self, rel: bytes) -> bytes:
        try:
            return self.real.readlink(rel)
        except NotFound:
            found = self._unreal(rel)
            if found is None or found[1].kind != KIND_LINK or found[1].target is None:
                raise
            return found[1].target

    def statvfs(self) -> os.statvfs_result:
        return self.real.statvfs()

    def status(self, rel: bytes) -> bytes:
        fetching = self.progress(self.arena, tuple(rel.split(b"/"))) if rel else None
        share = fetching[0] * 100 // fetching[1] if fetching and fetching[1] else 0
        if self._is_real(rel):
            status = self.real.status(rel)
            return status if fetching is None else f"real, a newer version {share}% fetched".encode()
        found = self._unreal(rel)
        if found is None:
            raise NotFound()
        if fetching is not None:
            return f"realizing {share}%".encode()
        record = found[1]
        if record.kind != KIND_FILE or self.content is None:
            return b"unreal"
        share = self.content.cached(record) * 100 // record.size if record.size else 100
        return f"unreal {share}% cached".encode()

    def peers(self, rel: bytes) -> bytes | None:
        found = self.index.entry(self.root, rel.split(b"/")) if rel else None
        if found is None:
            self.stat(rel)  # NotFound if there is nothing there at all
            return None  # on the disk, not indexed yet
        record = found[1]
        content = record.hash if record.kind == KIND_FILE else None
        holders = self.index.holders(self.arena, rel.split(b"/"), record.vv, content, real=True)
        return ", ".join(self.peer_name(peer) for peer in holders).encode()

    def held(self, rel: bytes) -> Held | None:
        found = self.index.entry(self.root, rel.split(b"/")) if rel else None
        if found is None or found[1].kind != KIND_FILE:
            return None
        record = found[1]
        origin = self.peer_name(record.origin) if record.origin else ""
        return Held(record.settled_hash, origin, record.mtime_ns, record.size)

    # ---- creating, removing, changing

    def create(
        self, parent: bytes, name: bytes, flags: int, mode: int, owner: Owner
    ) -> tuple[RealFile | UnrealFile | RealizingFile, Stat]:
        rel = join(parent, name)
        if not self._is_real(rel) and (found := self._unreal(rel)) is not None:
            if flags & os.O_EXCL:
                raise Exists()
            file = self.open_unreal(found[0], tuple(rel.split(b"/")), found[1], flags)
            return file, file.stat()
        self._realize_dir(parent)
        return self.real.create(parent, name, flags, mode, owner)

    def mkdir(self, parent: bytes, name: bytes, mode: int, owner: Owner) -> Stat:
        self._refuse_over_unreal(join(parent, name))
        self._realize_dir(parent)
        return self.real.mkdir(parent, name, mode, owner)

    def mknod(self, parent: bytes, name: bytes, mode: int, rdev: int, owner: Owner) -> Stat:
        self._refuse_over_unreal(join(parent, name))
        self._realize_dir(parent)
        return self.real.mknod(parent, name, mode, rdev, owner)

    def link(self, source: Pin, parent: bytes, name: bytes) -> Stat:
        self._refuse_over_unreal(join(parent, name))
        self._realize_dir(parent)
        return self.real.link(source, parent, name)  # an Unreal file is refused there

    def symlink(self, parent: bytes, name: bytes, target: bytes, owner: Owner) -> Stat:
        self._refuse_over_unreal(join(parent, name))
        self._realize_dir(parent)
        return self.real.symlink(parent, name, target, owner)

    def _refuse_over_unreal(self, rel: bytes) -> None:
        if not self._is_real(rel) and self._unreal(rel) is not None:
            raise Exists()

    def unlink(self, parent: bytes, name: bytes) -> None:
        rel = join(parent, name)
        if self._is_real(rel):
            self.real.unlink(parent, name)
            return
        found = self._unreal(rel)
        if found is None:
            raise NotFound()
        if found[1].kind == KIND_DIR:
            raise FsError("is a directory", errno=errno.EISDIR)
        self.index.delete(self.root, rel.split(b"/"), unreal=True)

    def rmdir(self, parent: bytes, name: bytes) -> None:
        rel = join(parent, name)
        if any(not record.real for _, _, record in self.index.entries(self.root, rel.split(b"/"))):
            raise NotEmpty()
        if self._is_real(rel):
            self.real.rmdir(parent, name)
            return
        found = self._unreal(rel)
        if found is None:
            raise NotFound()
        if found[1].kind != KIND_DIR:
            raise FsError("not a directory", errno=errno.ENOTDIR)
        self.index.delete(self.root, rel.split(b"/"), unreal=True)

    def rename(self, old: bytes, new: bytes, flags: int) -> None:
        if self._is_real(old):
            self._refuse_over_unreal_dir(new)
            if not self._is_real(split(new)[0]):
                self._realize_dir(split(new)[0])
            self.real.rename(old, new, flags)
            return
        if self._unreal(old) is None:
            raise NotFound()
        if flags & RENAME_EXCHANGE or self._is_real(new):
            raise FsError("an Unreal entry cannot replace or swap with a Real one", errno=errno.EXDEV)
        there = self._unreal(new)
        if there is not None and flags & RENAME_NOREPLACE:
            raise Exists()
        if there is not None and there[1].kind == KIND_DIR and self.index.entries(self.root, new.split(b"/")):
            raise NotEmpty()
        parent = split(new)[0]
        if parent and not self._is_real(parent) and self._unreal(parent) is None:
            raise NotFound()
        if not self.index.rename(self.root, old.split(b"/"), new.split(b"/")):
            raise NotFound()

    def _refuse_over_unreal_dir(self, rel: bytes) -> None:
        there = self._unreal(rel)
        if there is not None and there[1].kind == KIND_DIR and self.index.entries(self.root, rel.split(b"/")):
            raise NotEmpty()

    async def setattr(self, rel: bytes, changes: Changes) -> Stat:
        """Change the object at *rel*; an Unreal one is made Real first (`make_real`; truncated
        to 0: an empty one, nothing fetched), then changed."""
        await self._make_real(rel, empty=changes.size == 0)
        return await self.real.setattr(rel, changes)

    async def make_real(self, rel: bytes) -> Stat:
        """Make the Unreal object at *rel* Real (a file: fetched and placed as for a write; a
        directory: made, with those above it); its Real attributes."""
        await self._make_real(rel, empty=False)
        return self.real.stat(rel)

    async def _make_real(self, rel: bytes, empty: bool) -> None:
        if self._is_real(rel) or (found := self._unreal(rel)) is None:
            return
        node, record = found
        path = tuple(rel.split(b"/"))
        if record.kind == KIND_DIR:
            self._realize_dir(rel)
        elif record.kind != KIND_FILE:
            log.info("%s: an Unreal symbolic link is not made Real to be changed", _show(rel))
            raise FsError("an Unreal symbolic link cannot be changed yet", errno=errno.EIO)
        elif empty:  # truncated: nothing to fetch
            self.realize_empty(path, record, os.O_RDONLY).close()
        else:
            (await self.realize(node, path, record, os.O_RDONLY)).close()

    # ---- extended attributes

    def stored_mode(self, rel: bytes) -> Mode | None:
        return self.real.stored_mode(rel) if self._is_real(rel) else None

    def set_mode(self, rel: bytes, mode: Mode | None) -> None:
        if not self._is_real(rel):
            found = self._unreal(rel)
            if found is None:
                raise NotFound()
            if found[1].kind != KIND_DIR:
                raise NotPermitted("a mode on an Unreal file comes with consensus")
            self._realize_dir(rel)
        self.real.set_mode(rel, mode)

    def xattr_names(self, rel: bytes) -> list[bytes]:
        if self._is_real(rel):
            return self.real.xattr_names(rel)
        self._unreal_only(rel)
        return []

    def getxattr(self, rel: bytes, name: bytes) -> bytes:
        if self._is_real(rel):
            return self.real.getxattr(rel, name)
        self._unreal_only(rel)
        raise NoData()

    def setxattr(self, rel: bytes, name: bytes, value: bytes) -> None:
        """Set an attribute of the Real object at *rel* (the namespace has `make_real` an
        Unreal one first: it has no attributes of its own)."""
        if self._is_real(rel) or self._unreal(rel) is None:
            self.real.setxattr(rel, name, value)
            return
        raise _unavailable(rel, "changing")

    def removexattr(self, rel: bytes, name: bytes) -> None:
        """Remove an attribute; an Unreal entry has none to remove (a peer's are not carried)."""
        if self._is_real(rel) or self._unreal(rel) is None:
            self.real.removexattr(rel, name)
            return
        raise NoData()

    def _unreal_only(self, rel: bytes) -> None:
        """*rel* (not in the Real) is an Unreal entry, which holds no attributes; NotFound if not."""
        if self._unreal(rel) is None:
            raise NotFound()
