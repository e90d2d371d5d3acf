"""`Attr`: the attributes the mount reports for one inode, independent of pyfuse3."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from realizefs.vfs.tree import Stat


@dataclass(frozen=True, slots=True)
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    rdev: int = 0
    blocks: int = 0
    blksize: int = 4096
    timeout: float = 1.0  # how long the kernel may cache the attributes, seconds
    entry_timeout: float = 1.0  # how long it may cache the name -> inode mapping

    @classmethod
    def from_stat(cls, ino: int, st: Stat, timeout: float, entry_timeout: float) -> Attr:
        return cls(
            ino=ino,
            mode=st.st_mode,
            nlink=st.st_nlink,
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            rdev=st.st_rdev,
            blocks=st.st_blocks,
            blksize=st.st_blksize,
            timeout=timeout,
            entry_timeout=entry_timeout,
        )

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)


@dataclass(frozen=True, slots=True)
class FsStats:
    """statfs numbers, in units of *frsize*."""

    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int
