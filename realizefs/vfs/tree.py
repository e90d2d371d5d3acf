"""What the namespace needs from one arena's tree of files: the `Tree` interface.

A `Tree` serves one arena. Paths are ``bytes`` relative to its root (the root
is ``b""``, components joined by ``b"/"``); objects are described by a `Stat`
(``os.stat_result`` is one) and identified by ``(st_dev, st_ino)``. The
namespace reaches an object either by its path, checking that identity, or
through a `Pin`: a reference that stays that object whatever later happens to
its name (see "Inode numbers" in docs/design.md). Opening gives a `File`.

The Real (`realizefs.vfs.realtree`) is one implementation; the merged view of
the Real and the Unreal will be another, over it. A tree raises `FsError`
(never `OSError`) and knows nothing of inodes, the kernel or the marker.

``user.realize.mode`` is a setting stored on a path (`Tree.stored_mode`): a
path that has no place to hold one (an Unreal-only directory, to come)
simply has none, and the effective mode comes from the nearest ancestor that
has one (`realizefs.vfs.attributes`).

Concurrency: everything runs on the event loop thread. Tree, `Pin` and the
non-async `File` methods are short blocking calls. A file's ``read``,
``write``, ``fsync``, ``allocate`` and ``setattr`` (and the tree's
``setattr``) are async, so a tree may wait on a worker thread or the network
without stalling other requests (changing an Unreal file fetches it): the Real reads,
fsyncs and allocates in a worker thread (a slow disk) and writes inline (the
write goes to the page cache; a thread hand-off costs more than the copy).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from realizefs.real.backing import Owner
from realizefs.types import Mode


class Stat(Protocol):
    """The attributes of one object, as ``os.stat_result`` names them."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_dev(self) -> int: ...
    @property
    def st_nlink(self) -> int: ...
    @property
    def st_uid(self) -> int: ...
    @property
    def st_gid(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_atime_ns(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_ctime_ns(self) -> int: ...
    @property
    def st_rdev(self) -> int: ...
    @property
    def st_blocks(self) -> int: ...
    @property
    def st_blksize(self) -> int: ...


@dataclass(frozen=True)
class Held:
    """The version of a file the tree's index holds (`Tree.held`)."""

    hash: bytes | None  # its content hash; None: not hashed yet
    origin: str  # the name of the peer that made it ("" if not known)
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class Changes:
    """Attributes to set; None leaves one as it is."""

    size: int | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


class Handle(Protocol):
    """Something open that is read and written: a tree's `File`, or a virtual file of the mount."""

    async def read(self, offset: int, size: int) -> bytes: ...

    async def write(self, offset: int, data: bytes) -> int: ...

    async def fsync(self, datasync: bool) -> None: ...

    async def allocate(self, mode: int, offset: int, length: int) -> None:
        """``fallocate(2)`` with its *mode* flags."""

    def close(self) -> None: ...


class File(Handle, Protocol):
    """An open object of a tree; it stays that object when its name is renamed or removed."""

    def stat(self) -> Stat: ...

    async def setattr(self, changes: Changes) -> Stat: ...

    def pin(self) -> Pin:
        """A pin of the object open here."""


class Pin(Protocol):
    """A reference to one object of a tree, whatever happens to its name; closed by the holder."""

    def stat(self) -> Stat: ...

    def open(self, flags: int) -> File: ...

    def acl(self, name: bytes) -> bytes:
        """The object's POSIX ACL *name* (``system.posix_acl_*``); `NoData` if it has none."""

    def close(self) -> None: ...


class Tree(Protocol):
    """One arena's tree of files (see the module doc)."""

    # ---- reading
    def stat(self, rel: bytes) -> Stat:
        """The object at *rel*, not followed if a symbolic link; `NotFound` if there is none."""

    def pin(self, rel: bytes) -> tuple[Pin, Stat]: ...

    def pin_listed(self, rel: bytes, st: Stat) -> tuple[Pin, Stat]:
        """A pin of the object a listing of *rel*'s directory showed as *st*, and its attributes
        (a readdirplus hands the kernel each entry it lists)."""

    def open(self, rel: bytes, flags: int) -> File:
        """Open the object at *rel* (never following a symbolic link) with ``open(2)`` *flags*."""

    def listdir(self, rel: bytes) -> Sequence[tuple[bytes, Stat]]:
        """Every entry of the directory *rel* (no ``.`` or ``..``) with its attributes."""

    def readlink(self, rel: bytes) -> bytes: ...

    def statvfs(self) -> os.statvfs_result: ...

    def status(self, rel: bytes) -> bytes:
        """The value of ``user.realize.status`` for the object at *rel*, from its state now."""

    def peers(self, rel: bytes) -> bytes | None:
        """The value of ``user.realize.peers``: the peers holding the version of *rel* in their
        Real, by name, comma-separated; None where the tree knows of no peers."""

    def held(self, rel: bytes) -> Held | None:
        """The version of the file at *rel* the tree's index holds (Real or Unreal); None if
        it holds none (not indexed yet, not a file, or no index)."""

    # ---- creating, removing, changing
    def create(self, parent: bytes, name: bytes, flags: int, mode: int, owner: Owner) -> tuple[File, Stat]:
        """Create and open a regular file (an existing one is opened unless *flags* has ``O_EXCL``)."""

    def mkdir(self, parent: bytes, name: bytes, mode: int, owner: Owner) -> Stat: ...

    def mknod(self, parent: bytes, name: bytes, mode: int, rdev: int, owner: Owner) -> Stat:
        """``mknod(2)``: a FIFO, a socket, an empty regular file, or a device if *owner* may make one."""

    def link(self, source: Pin, parent: bytes, name: bytes) -> Stat:
        """A hard link to the object *source* is, named *name* in *parent*; its attributes."""

    def symlink(self, parent: bytes, name: bytes, target: bytes, owner: Owner) -> Stat: ...

    def unlink(self, parent: bytes, name: bytes) -> None: ...

    def rmdir(self, parent: bytes, name: bytes) -> None: ...

    def rename(self, old: bytes, new: bytes, flags: int) -> None:
        """``renameat2(2)`` with its ``RENAME_NOREPLACE``/``RENAME_EXCHANGE`` *flags*."""

    async def setattr(self, rel: bytes, changes: Changes) -> Stat:
        """Change the attributes of the object at *rel* (an Unreal one is made Real first)."""

    async def make_real(self, rel: bytes) -> Stat:
        """Make the object at *rel* Real if it is not (an Unreal file fetched and placed, an
        Unreal directory made), to hold what only a Real one can; its attributes."""

    # ---- extended attributes
    def stored_mode(self, rel: bytes) -> Mode | None:
        """The realize mode set on exactly this path; None if unset or nowhere to hold one."""

    def set_mode(self, rel: bytes, mode: Mode | None) -> None:
        """Set (None: remove) the realize mode stored on *rel*."""

    def xattr_names(self, rel: bytes) -> list[bytes]:
        """Pass-through ``user.*`` names stored on the object, and ``user.realize.mode`` if set on it."""

    def getxattr(self, rel: bytes, name: bytes) -> bytes: ...

    def setxattr(self, rel: bytes, name: bytes, value: bytes) -> None: ...

    def removexattr(self, rel: bytes, name: bytes) -> None: ...
