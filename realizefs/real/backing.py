"""One arena's backing directory (the Real), accessed only beneath its root.

Every path is resolved with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``
relative to a descriptor of the arena root held open for the life of the
object, and the last component is never followed. The daemon runs as root
and serves every local user: a user who swaps a directory of the backing tree
for a symlink to ``/etc`` must not make it write there.

Paths are ``bytes`` relative to the root, components joined by ``b"/"``, the
root itself ``b""``. Names are arbitrary bytes (no ``/`` or NUL).

Objects created on behalf of a user are created with exactly the requested
mode (the process umask is 0) or, for a request through the mount, masked by
the directory's default POSIX ACL if it has one (`realizefs.real.acl`), else by
the caller's umask (`Owner.umask`),
and then given to the user (`Owner`), following the directory's setgid rule.
The hand-over goes through a descriptor of the object actually created, never
through its name: files are created with ``O_EXCL``; directories, FIFOs and
symbolic links are made with a mode only the daemon can use, opened without
following, and checked to be that object before they are given away. Anyone
who can write the directory could otherwise swap in another object (a hard
link to someone's file) between the two steps, for the root daemon to hand over.

Every `OSError` leaves this module as a `FsError` with the same errno.
All calls are blocking and short, except `fsync`/`read` style calls that the
caller runs in a worker thread. Calls may come from several threads at once
(the indexer walks in workers): `close` takes effect for new calls at once,
but the root's descriptor is closed only when the last call using it has
returned, so a call in flight never resolves a path against a reused
descriptor number (another directory).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from realizefs.errors import Exists, FsError, NotFound, NotPermitted, NotSupported, from_oserror
from realizefs.real import acl

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int

_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)

_fchownat = _libc.fchownat
_fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_fchownat.restype = ctypes.c_int
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000

SYS_OPENAT2 = 437  # the same number on every Linux architecture
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

STEP = 2048  # bytes of path resolved per openat2 call: well inside PATH_MAX (4,096)
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


def _openat2(dir_fd: int, path: bytes, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)
    fd = _syscall(
        ctypes.c_long(SYS_OPENAT2),
        ctypes.c_int(dir_fd),
        ctypes.c_char_p(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def check_kernel_support() -> None:
    """Raise OSError if this kernel lacks openat2 (Linux < 5.6)."""
    os.close(_openat2(os.open("/", _DIR), b".", _DIR))


def _default_acl(dir_fd: int) -> bytes | None:
    """The default ACL of the directory open as *dir_fd* (any descriptor), None if it has none."""
    try:
        return os.getxattr(proc_path(dir_fd), acl.DEFAULT)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return None
        raise from_oserror(exc) from None


def proc_path(fd: int) -> str:
    """A path naming the object open as *fd* (works for O_PATH descriptors)."""
    return f"/proc/self/fd/{fd}"


def reopen(fd: int, flags: int) -> int:
    """Open the object *fd* (an ``O_PATH`` descriptor) with *flags*, even if unlinked or renamed."""
    try:
        return os.open(proc_path(fd), (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC)
    except OSError as exc:
        raise from_oserror(exc) from None


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` on *fd* with its *mode* flags (Python has only ``posix_fallocate``)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise from_oserror(OSError(err, os.strerror(err)))


def _fstat_or_close(fd: int) -> os.stat_result:
    try:
        return os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise


def _stretches(rel: bytes) -> list[bytes]:
    """*rel* cut at component boundaries into stretches of at most `STEP` bytes."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for part in rel.split(b"/"):
        if current and size + 1 + len(part) > STEP:
            out.append(b"/".join(current))
            current, size = [], 0
        current.append(part)
        size += len(part) + (1 if size else 0)
    out.append(b"/".join(current))
    return out


def split(rel: bytes) -> tuple[bytes, bytes]:
    """``b"a/b/c"`` -> ``(b"a/b", b"c")``."""
    parent, _, name = rel.rpartition(b"/")
    return parent, name


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


@dataclass(frozen=True)
class Owner:
    """The user on whose behalf an object is created."""

    uid: int
    gid: int
    in_group: Callable[[int], bool]  # whether the user belongs to a group (supplementary too)
    may_mknod: Callable[[], bool] = lambda: False  # whether the caller may make devices (CAP_MKNOD)
    # For a request through the mount, the caller's umask: the new object's mode is masked by
    # the directory's default ACL if it has one, else by this. None: exactly the mode given
    # (the daemon's own objects, files from peers; the disk still gives them inherited ACLs).
    umask: int | None = None


class _RootFd:
    """A descriptor closed only once no call is using it; after `close`, no new call may."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._users = 0
        self._closed = False
        self._lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[int]:
        with self._lock:
            if self._closed:
                raise NotFound("the arena is no longer served")
            self._users += 1
        try:
            yield self._fd
        finally:
            with self._lock:
                self._users -= 1
                last = self._closed and self._users == 0
            if last:
                os.close(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            last = self._users == 0
        if last:
            os.close(self._fd)


class Backing:
    """The backing directory of one arena."""

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self._root = _RootFd(os.open(root, _DIR))
        except OSError as exc:
            raise from_oserror(exc) from None
        self._is_root = os.geteuid() == 0

    def close(self) -> None:
        """No new call; the root's descriptor closes when the calls under way are done."""
        self._root.close()

    def _at_root(self, rel: bytes, flags: int, mode: int = 0) -> int:
        """openat2 of *rel* beneath the root (FsError on failure); the caller closes it.

        A path longer than the kernel takes in one call (`STEP`) is resolved a
        stretch at a time, each beneath the directory the previous one opened,
        with the same rules, so depth has no limit here, as on the disk."""
        with self._root.use() as root:
            try:
                if len(rel) <= STEP:
                    return _openat2(root, rel or b".", flags | os.O_CLOEXEC, mode)
                *stretches, last = _stretches(rel)
                at = root
                try:
                    for stretch in stretches:
                        step = _openat2(at, stretch, _DIR)
                        if at != root:
                            os.close(at)
                        at = step
                    return _openat2(at, last, flags | os.O_CLOEXEC, mode)
                finally:
                    if at != root:
                        os.close(at)
            except OSError as exc:
                raise from_oserror(exc) from None

    # ------------------------------------------------------------ resolving

    @contextmanager
    def _open(self, rel: bytes, flags: int = _PATH, mode: int = 0) -> Iterator[int]:
        fd = self._at_root(rel, flags, mode)
        try:
            yield fd
        except OSError as exc:
            raise from_oserror(exc) from None
        finally:
            os.close(fd)

    def _parent(self, parent: bytes) -> AbstractContextManager[int]:
        return self._open(parent, _DIR)

    # ------------------------------------------------------------ reading

    def stat(self, rel: bytes) -> os.stat_result:
        if not rel:
            with self._root.use() as root:
                return os.fstat(root)
        parent, name = split(rel)
        with self._parent(parent) as pfd:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)

    def listdir(self, rel: bytes) -> list[tuple[bytes, os.stat_result]]:
        """Every entry of a directory with its attributes (vanished entries skipped)."""
        entries = []
        with self._open(rel, os.O_RDONLY | os.O_DIRECTORY) as fd, os.scandir(fd) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append((os.fsencode(entry.name), st))
        return entries

    def readlink(self, rel: bytes) -> bytes:
        parent, name = split(rel)
        with self._parent(parent) as pfd:
            return os.readlink(name, dir_fd=pfd)

    def open(self, rel: bytes, flags: int) -> int:
        """A descriptor for an existing file (the caller closes it)."""
        return self._at_root(rel, flags | os.O_NOFOLLOW)

    def pin(self, rel: bytes) -> tuple[int, os.stat_result]:
        """An ``O_PATH`` descriptor of the object at *rel* (not followed) and its attributes.

        The descriptor stays the object whatever later happens to the name; `reopen`
        opens it for I/O. The caller closes it."""
        fd = self._at_root(rel, _PATH)
        try:
            return fd, os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise from_oserror(exc) from None

    def statvfs(self) -> os.statvfs_result:
        with self._root.use() as root:
            return os.fstatvfs(root)

    # ------------------------------------------------------------ creating

    def _initial(self, pfd: int, mode: int, owner: Owner, is_dir: bool) -> tuple[int, int]:
        """(mode, gid) a new object gets in the directory *pfd*, as the kernel would give them.

        For a request through the mount (`Owner.umask` set), the mode is masked by the
        directory's default ACL if it has one (`acl.inherited_mode`): the backing filesystem
        gives the new object that ACL, and the mode set after the hand-over must be the one it
        would have given too. Otherwise by the caller's umask (the kernel leaves it to the
        daemon: `realizefs.ops.dontmask`)."""
        pst = os.fstat(pfd)
        mode &= 0o7777
        if owner.umask is not None:
            default_acl = _default_acl(pfd)
            if default_acl is not None:
                mode = acl.inherited_mode(default_acl, mode)
            else:
                mode &= ~(owner.umask & 0o777)
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
            if is_dir:
                mode |= stat.S_ISGID
        else:
            gid = owner.gid
        if not is_dir and mode & stat.S_ISGID and owner.uid != 0 and not owner.in_group(gid):
            mode &= ~stat.S_ISGID
        return mode, gid

    def _give(self, fd: int, owner: Owner, gid: int, mode: int) -> os.stat_result:
        """Hand the new object open as *fd* to its owner and set its mode; its attributes.

        Through the descriptor only (``/proc/self/fd/N`` names the very object, also
        for ``O_PATH`` descriptors): never through a name, which someone who can
        write the directory could point at another object meanwhile."""
        if self._is_root:
            os.chown(proc_path(fd), owner.uid, gid)
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(proc_path(fd), mode)
            st = os.fstat(fd)
        return st

    def _made(self, pfd: int, name: bytes, flags: int, kind: int, made_mode: int) -> int:
        """Open the object just made at *name* with *made_mode*; `Exists` if another one took its place.

        Made by this process with a mode only its owner can use, so no one else can
        have put an object looking like it there (a root-owned one, for the daemon)."""
        replaced = Exists("the new object was replaced before it could be handed over")
        try:
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        except OSError:  # gone, or not even of its kind (ENOTDIR, ELOOP)
            raise replaced from None
        st = os.fstat(fd)
        if (
            stat.S_IFMT(st.st_mode) != kind
            or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) & 0o777 & ~made_mode  # (a default ACL may take some away)
            or st.st_nlink != (2 if kind == stat.S_IFDIR else 1)
        ):
            os.close(fd)
            raise replaced
        return fd

    def create(
        self, parent: bytes, name: bytes, flags: int, mode: int, owner: Owner
    ) -> tuple[int, os.stat_result]:
        """Create (exclusively) and open a regular file; (descriptor, attributes).

        A file that appeared under the name behind the kernel's back is opened as it
        is, unless the caller asked for ``O_EXCL``: it is nobody's new file to hand over."""
        with self._parent(parent) as pfd:
            mode, gid = self._initial(pfd, mode, owner, is_dir=False)
            flags = (flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC) & ~(os.O_APPEND | os.O_DIRECT)
            try:
                fd = os.open(name, flags | os.O_EXCL, mode & 0o777, dir_fd=pfd)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
                fd = os.open(name, flags & ~os.O_CREAT, dir_fd=pfd)
                return fd, _fstat_or_close(fd)
            try:
                return fd, self._give(fd, owner, gid, mode)
            except BaseException:
                os.close(fd)
                raise

    def mkdir(self, parent: bytes, name: bytes, mode: int, owner: Owner) -> os.stat_result:
        with self._parent(parent) as pfd:
            mode, gid = self._initial(pfd, mode, owner, is_dir=True)
            os.mkdir(name, 0o700, dir_fd=pfd)
            fd = self._made(pfd, name, os.O_RDONLY | os.O_DIRECTORY, stat.S_IFDIR, 0o700)
            try:
                return self._give(fd, owner, gid, mode)
            finally:
                os.close(fd)

    def mknod(self, parent: bytes, name: bytes, mode: int, rdev: int, owner: Owner) -> os.stat_result:
        """A FIFO, a socket, an empty regular file, or a block or character device.

        A device only when *owner* could make one on the disk (`Owner.may_mknod`, the
        CAP_MKNOD capability): the daemon, as root, could make one for anybody."""
        kind = stat.S_IFMT(mode)
        if kind not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK):
            raise FsError("not a kind mknod makes", errno=errno.EINVAL)
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and not owner.may_mknod():
            raise NotPermitted("making a device takes CAP_MKNOD")
        with self._parent(parent) as pfd:
            mode, gid = self._initial(pfd, mode, owner, is_dir=False)
            os.mknod(name, kind | 0o600, rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0, dir_fd=pfd)
            fd = self._made(pfd, name, os.O_PATH, kind, 0o600)
            try:
                return self._give(fd, owner, gid, mode)
            finally:
                os.close(fd)

    def link(self, source: int, parent: bytes, name: bytes) -> os.stat_result:
        """A hard link named *name* in *parent* to the object open as *source* (any descriptor,
        ``O_PATH`` too): the very object, never whatever a name leads to by then."""
        with self._parent(parent) as pfd:
            os.link(proc_path(source), name, dst_dir_fd=pfd, follow_symlinks=True)
            return os.fstat(source)

    def symlink(self, parent: bytes, name: bytes, target: bytes, owner: Owner) -> os.stat_result:
        with self._parent(parent) as pfd:
            _, gid = self._initial(pfd, 0o777, owner, is_dir=False)
            os.symlink(target, name, dir_fd=pfd)
            fd = self._made(pfd, name, os.O_PATH, stat.S_IFLNK, 0o777)
            try:
                if self._is_root and _fchownat(fd, b"", owner.uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW):
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                return os.fstat(fd)
            finally:
                os.close(fd)

    # ------------------------------------------------------------ removing, renaming

    def unlink(self, parent: bytes, name: bytes) -> None:
        with self._parent(parent) as pfd:
            os.unlink(name, dir_fd=pfd)

    def rmdir(self, parent: bytes, name: bytes) -> None:
        with self._parent(parent) as pfd:
            os.rmdir(name, dir_fd=pfd)

    def rename(self, old: bytes, new: bytes, flags: int = 0) -> None:
        """Rename *old* to *new* (``RENAME_NOREPLACE``/``RENAME_EXCHANGE`` in *flags*)."""
        old_parent, old_name = split(old)
        new_parent, new_name = split(new)
        with self._parent(old_parent) as ofd, self._parent(new_parent) as nfd:
            if _renameat2(ofd, old_name, nfd, new_name, flags) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

    # ------------------------------------------------------------ attributes

    def chmod(self, rel: bytes, mode: int) -> None:
        with self._open(rel) as fd:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise NotSupported("symbolic links have no mode")
            os.chmod(proc_path(fd), mode & 0o7777)

    def chown(self, rel: bytes, uid: int, gid: int) -> None:
        parent, name = split(rel)
        with self._parent(parent) as pfd:
            os.chown(name or ".", uid, gid, dir_fd=pfd, follow_symlinks=False)

    def utime(self, rel: bytes, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set times; None keeps the current value."""
        parent, name = split(rel)
        with self._parent(parent) as pfd:
            if atime_ns is None or mtime_ns is None:
                st = os.stat(name or ".", dir_fd=pfd, follow_symlinks=False)
                atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
                mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
            os.utime(name or ".", ns=(atime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)

    def truncate(self, rel: bytes, size: int) -> None:
        fd = self.open(rel, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            raise from_oserror(exc) from None
        finally:
            os.close(fd)

    @contextmanager
    def object_path(self, rel: bytes) -> Iterator[tuple[str, os.stat_result]]:
        """A /proc path naming the object (not followed if a symlink) and its attributes."""
        with self._open(rel) as fd:
            yield proc_path(fd), os.fstat(fd)
