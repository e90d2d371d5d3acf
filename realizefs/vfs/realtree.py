"""The Real as a `Tree`: a thin adapter over one arena's `Backing`.

Paths are resolved beneath the arena root by `realizefs.real.backing`; a
`RealPin` is an ``O_PATH`` descriptor of the object and a `RealFile` a
descriptor open for I/O, both reopened through ``/proc/self/fd`` so they stay
that object when its name changes (docs/design.md, "Inode numbers"). The
realize mode and ``user.*`` attributes are the backing object's extended
attributes (`realizefs.real.xattrs`).

Concurrency: as `realizefs.vfs.tree` says. Reads, fsyncs and allocations run
in a trio worker thread on the file's descriptor; writes are ``pwrite`` inline.
Each object owns its descriptor and closes it in ``close``.
"""

from __future__ import annotations

import os

import trio

from realizefs.errors import NotPermitted, from_oserror
from realizefs.real import xattrs
from realizefs.real.backing import Backing, Owner, fallocate, proc_path, reopen
from realizefs.types import Mode
from realizefs.vfs.tree import Changes, Held, Pin, Stat


def _fstat(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    except OSError as exc:
        raise from_oserror(exc) from None


def _pread(fd: int, size: int, offset: int) -> bytes:
    try:
        return os.pread(fd, size, offset)
    except OSError as exc:
        raise from_oserror(exc) from None


def _sync(fd: int, datasync: bool) -> None:
    try:
        (os.fdatasync if datasync else os.fsync)(fd)
    except OSError as exc:
        raise from_oserror(exc) from None


class RealFile:
    """A backing object open for I/O."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, offset: int, size: int) -> bytes:
        return await trio.to_thread.run_sync(_pread, self.fd, size, offset)

    async def write(self, offset: int, data: bytes) -> int:
        try:
            return os.pwrite(self.fd, data, offset)
        except OSError as exc:
            raise from_oserror(exc) from None

    async def fsync(self, datasync: bool) -> None:
        await trio.to_thread.run_sync(_sync, self.fd, datasync)

    async def allocate(self, mode: int, offset: int, length: int) -> None:
        await trio.to_thread.run_sync(fallocate, self.fd, mode, offset, length)

    def stat(self) -> os.stat_result:
        return _fstat(self.fd)

    async def setattr(self, changes: Changes) -> os.stat_result:
        fd = self.fd
        try:
            if changes.size is not None:
                os.ftruncate(fd, changes.size)
            if changes.uid is not None or changes.gid is not None:
                os.fchown(fd, _or_keep(changes.uid), _or_keep(changes.gid))
            if changes.mode is not None:
                os.fchmod(fd, changes.mode & 0o7777)
            if changes.atime_ns is not None or changes.mtime_ns is not None:
                st = os.fstat(fd)
                atime = st.st_atime_ns if changes.atime_ns is None else changes.atime_ns
                os.utime(fd, ns=(atime, st.st_mtime_ns if changes.mtime_ns is None else changes.mtime_ns))
            return os.fstat(fd)
        except OSError as exc:
            raise from_oserror(exc) from None

    def pin(self) -> RealPin:
        try:
            return RealPin(os.open(proc_path(self.fd), os.O_PATH | os.O_CLOEXEC))  # the very object open
        except OSError as exc:
            raise from_oserror(exc) from None

    def close(self) -> None:
        os.close(self.fd)


class RealPin:
    """An ``O_PATH`` descriptor of a backing object."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def stat(self) -> os.stat_result:
        return _fstat(self.fd)

    def open(self, flags: int) -> RealFile:
        return RealFile(reopen(self.fd, flags))

    def acl(self, name: bytes) -> bytes:
        return xattrs.get_at(self.fd, name)

    def close(self) -> None:
        os.close(self.fd)


class RealTree:
    """One arena's backing directory as a `Tree` (see the module doc)."""

    def __init__(self, backing: Backing) -> None:
        self.backing = backing

    def stat(self, rel: bytes) -> os.stat_result:
        return self.backing.stat(rel)

    def pin(self, rel: bytes) -> tuple[RealPin, os.stat_result]:
        fd, st = self.backing.pin(rel)
        return RealPin(fd), st

    def pin_listed(self, rel: bytes, st: Stat) -> tuple[RealPin, os.stat_result]:
        return self.pin(rel)  # looked up again: the name may lead to another object since

    def open(self, rel: bytes, flags: int) -> RealFile:
        return RealFile(self.backing.open(rel, flags))

    def listdir(self, rel: bytes) -> list[tuple[bytes, os.stat_result]]:
        return self.backing.listdir(rel)

    def readlink(self, rel: bytes) -> bytes:
        return self.backing.readlink(rel)

    def statvfs(self) -> os.statvfs_result:
        return self.backing.statvfs()

    def status(self, rel: bytes) -> bytes:
        self.backing.stat(rel)  # NotFound if it is not (or no longer) in the Real
        return b"real"

    def peers(self, rel: bytes) -> bytes | None:
        return None  # the Real alone knows nothing of peers

    def held(self, rel: bytes) -> Held | None:
        return None  # nor of versions

    def create(
        self, parent: bytes, name: bytes, flags: int, mode: int, owner: Owner
    ) -> tuple[RealFile, os.stat_result]:
        fd, st = self.backing.create(parent, name, flags, mode, owner)
        return RealFile(fd), st

    def mkdir(self, parent: bytes, name: bytes, mode: int, owner: Owner) -> os.stat_result:
        return self.backing.mkdir(parent, name, mode, owner)

    def mknod(self, parent: bytes, name: bytes, mode: int, rdev: int, owner: Owner) -> os.stat_result:
        return self.backing.mknod(parent, name, mode, rdev, owner)

    def link(self, source: Pin, parent: bytes, name: bytes) -> os.stat_result:
        if not isinstance(source, RealPin):
            raise NotPermitted("only a file of the Real can be linked")
        return self.backing.link(source.fd, parent, name)

    def symlink(self, parent: bytes, name: bytes, target: bytes, owner: Owner) -> os.stat_result:
        return self.backing.symlink(parent, name, target, owner)

    def unlink(self, parent: bytes, name: bytes) -> None:
        self.backing.unlink(parent, name)

    def rmdir(self, parent: bytes, name: bytes) -> None:
        self.backing.rmdir(parent, name)

    def rename(self, old: bytes, new: bytes, flags: int) -> None:
        self.backing.rename(old, new, flags)

    async def setattr(self, rel: bytes, changes: Changes) -> os.stat_result:
        backing = self.backing
        if changes.size is not None:
            backing.truncate(rel, changes.size)
        if changes.uid is not None or changes.gid is not None:
            backing.chown(rel, _or_keep(changes.uid), _or_keep(changes.gid))
        if changes.mode is not None:
            backing.chmod(rel, changes.mode)
        if changes.atime_ns is not None or changes.mtime_ns is not None:
            backing.utime(rel, changes.atime_ns, changes.mtime_ns)
        return backing.stat(rel)

    async def make_real(self, rel: bytes) -> os.stat_result:
        return self.backing.stat(rel)

    def stored_mode(self, rel: bytes) -> Mode | None:
        return xattrs.stored_mode(self.backing, rel)

    def set_mode(self, rel: bytes, mode: Mode | None) -> None:
        xattrs.set_mode(self.backing, rel, mode)

    def xattr_names(self, rel: bytes) -> list[bytes]:
        return xattrs.names(self.backing, rel)

    def getxattr(self, rel: bytes, name: bytes) -> bytes:
        return xattrs.get(self.backing, rel, name)

    def setxattr(self, rel: bytes, name: bytes, value: bytes) -> None:
        xattrs.set(self.backing, rel, name, value)

    def removexattr(self, rel: bytes, name: bytes) -> None:
        xattrs.remove(self.backing, rel, name)


def _or_keep(ident: int | None) -> int:
    return -1 if ident is None else ident
