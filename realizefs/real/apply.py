"""Changes consensus makes to the Real: each made only if the disk is still as the index knew it.

Consensus (`realizefs.sync.consensus`) applies a peer's version to a path of
this peer's Real: a content placed (from a file staged in full,
`realizefs.real.staging`), a file or a directory removed, a file moved to
where a peer renamed it, a directory or a symlink made. Each function here
first checks that what is at the path is what the index holds there (a file
of that size and mtime, nothing at all, an empty directory): if the user
changed it meanwhile, it does nothing and says so (returns False or None),
so a local change is never overwritten; the indexer records that change as
usual and consensus weighs it against the peer's. The check and the change
are two system calls: a write landing between them is the one window left
(microseconds; the same as any syncing tool without a filesystem lock).

A path that names what the daemon keeps in the arena's root (`MARKER`, the
staging directory) or that is not a relative path of valid names is refused
(`Refused`) whatever the index holds there: a peer's record must never make
consensus write there (peers' records are checked on receipt,
`realizefs.sync.wire`; this holds for any record kept from before).

A file open for writing (through the mount, or by anyone on the Real) is
neither replaced nor removed: what its writer writes next would go to a file
no longer at its path, and be lost. A read lease (``F_SETLEASE``), taken and
given back at once, tells: the kernel refuses one while the file is open for
writing. The file is left as it is; the next pass tries again.

Before each change the indexer is told what state the daemon leaves behind
(*expect*, `Indexer.expect`): it then follows without recording a change of
this peer's. Blocking calls, for worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence

import blake3

from realizefs.errors import FsError
from realizefs.real import staging
from realizefs.real.backing import RENAME_NOREPLACE, Backing, Owner, split
from realizefs.real.marker import MARKER
from realizefs.store.index import valid_name

log = logging.getLogger(__name__)

Expect = Callable[[bytes, "os.stat_result | None"], None]  # (path, the state left; None: nothing)
Known = tuple[int, int]  # (size, mtime_ns) of a file as the index holds it


class Refused(FsError):
    """A path consensus never changes (see the module doc)."""

    errno = errno.EPERM


def checked(rel: bytes) -> bytes:
    """*rel*, if consensus may change it; else `Refused`."""
    names = rel.split(b"/")
    if names[0] in (MARKER, staging.STAGING) or not all(valid_name(n) for n in names):
        raise Refused(f"{rel[:200]!r} is not a path a peer may give: refused")
    return rel


def lstat(backing: Backing, rel: bytes) -> os.stat_result | None:
    try:
        return backing.stat(rel)
    except (OSError, FsError):
        return None


def is_known(st: os.stat_result | None, known: Known) -> bool:
    """Whether *st* is a regular file of the size and mtime the index holds."""
    return st is not None and stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == known


def written(backing: Backing, rel: bytes) -> bool:
    """Whether the file *rel* is open for writing now (by anyone)."""
    try:
        fd = backing.open(rel, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, FsError):
        return False  # gone, or not to be read: the checks of the caller tell
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            return True
        if exc.errno in (errno.EINVAL, errno.ENOLCK, errno.EACCES):
            return False  # leases not available here: the size and mtime check only
        raise
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def place(
    backing: Backing, rel: bytes, staged: bytes, over: Known | None, expect: Expect
) -> os.stat_result | None:
    """Rename the staged file to *rel*: over the file there if it is still *over*, or (*over*
    None) only where nothing is. Its attributes once placed; None (the staged file
    discarded) if the disk moved on."""
    try:
        checked(rel)
        st = backing.stat(staged)
        if over is not None and (not is_known(lstat(backing, rel), over) or written(backing, rel)):
            staging.discard(backing, staged)
            return None
        expect(rel, st)
        backing.rename(staged, rel, 0 if over is not None else RENAME_NOREPLACE)
    except (OSError, FsError) as exc:
        staging.discard(backing, staged)
        if getattr(exc, "errno", None) in (errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            return None  # made there meanwhile; or its directory went
        raise
    return st


def remove_file(backing: Backing, rel: bytes, known: Known, expect: Expect) -> bool:
    """Unlink the file *rel* if it is still *known*."""
    checked(rel)
    if not is_known(lstat(backing, rel), known) or written(backing, rel):
        return False
    _unlink(backing, rel, expect)
    return True


def remove_link(backing: Backing, rel: bytes, target: bytes, expect: Expect) -> bool:
    """Unlink the symlink *rel* if it still points to *target*."""
    checked(rel)
    st = lstat(backing, rel)
    if st is None or not stat.S_ISLNK(st.st_mode) or backing.readlink(rel) != target:
        return False
    _unlink(backing, rel, expect)
    return True


def _unlink(backing: Backing, rel: bytes, expect: Expect) -> None:
    expect(rel, None)
    parent, name = split(rel)
    with contextlib.suppress(FileNotFoundError):
        backing.unlink(parent, name)


def remove_dir(backing: Backing, rel: bytes, expect: Expect) -> bool:
    """Remove the directory *rel* if it is empty."""
    checked(rel)
    st = lstat(backing, rel)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return st is None
    expect(rel, None)
    parent, name = split(rel)
    try:
        backing.rmdir(parent, name)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        if exc.errno != errno.ENOENT:
            raise
    return True


def move(backing: Backing, old: bytes, new: bytes, known: Known, expect: Expect) -> os.stat_result | None:
    """Rename the file *old*, if it is still *known*, to *new* where nothing is; its attributes."""
    checked(old)
    checked(new)
    st = lstat(backing, old)
    if not is_known(st, known) or st is None:
        return None
    expect(old, None)
    expect(new, st)
    try:
        backing.rename(old, new, RENAME_NOREPLACE)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    return st


def make_dir(backing: Backing, rel: bytes, mode: int, owner: Owner, expect: Expect) -> bool:
    """Make the directory *rel* (its parent must be there) where nothing is; True if a
    directory is there now. Made in the staging directory and renamed into place, so the
    indexer is told of it before it shows."""
    checked(rel)
    staged, st = staging.stage_dir(backing, mode & 0o7777 or 0o755, owner)
    return _put(backing, staged, rel, st, expect) or _is_dir(lstat(backing, rel))


def make_link(backing: Backing, rel: bytes, target: bytes, owner: Owner, expect: Expect) -> bool:
    """Make the symlink *rel* to *target* where nothing is (staged as `make_dir` is)."""
    checked(rel)
    staged, st = staging.stage_link(backing, target, owner)
    return _put(backing, staged, rel, st, expect)


def _put(backing: Backing, staged: bytes, rel: bytes, st: os.stat_result, expect: Expect) -> bool:
    """Rename what is staged to *rel* where nothing is; False (discarded) if something is."""
    expect(rel, st)
    try:
        backing.rename(staged, rel, RENAME_NOREPLACE)
    except OSError as exc:
        staging.discard(backing, staged)
        if exc.errno in (errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    return True


def _is_dir(st: os.stat_result | None) -> bool:
    return st is not None and stat.S_ISDIR(st.st_mode)


def set_mode(backing: Backing, rel: bytes, mode: int, expect: Expect) -> bool:
    """Give the directory or file *rel* the permission bits *mode*."""
    checked(rel)
    st = lstat(backing, rel)
    if st is None or stat.S_ISLNK(st.st_mode):
        return False
    backing.chmod(rel, mode)
    expect(rel, lstat(backing, rel))
    return True


def chunks_of(
    backing: Backing, rel: bytes, known: Known, manifest: Sequence[tuple[int, int, bytes]], batch: int
) -> Iterator[list[tuple[bytes, bytes]]]:
    """The chunks of the file *rel* (still *known*), each verified against *manifest*, in
    lists of about *batch* bytes; raises FsError if the file is not that content any more."""
    fd = backing.open(rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not is_known(os.fstat(fd), known):
            raise FsError("the file changed", errno=errno.EAGAIN)
        out: list[tuple[bytes, bytes]] = []
        size = 0
        for offset, length, chunk in manifest:
            data = os.pread(fd, length, offset)
            if blake3.blake3(data).digest() != chunk:
                raise FsError("the file changed", errno=errno.EAGAIN)
            out.append((chunk, data))
            size += length
            if size >= batch:
                yield out
                out, size = [], 0
        if out:
            yield out
    finally:
        os.close(fd)


def write_at(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def seal(fd: int, mtime_ns: int) -> os.stat_result:
    """Give a staged file its version's mtime and flush it to the disk; its attributes."""
    os.utime(fd, ns=(mtime_ns, mtime_ns))
    os.fsync(fd)
    return os.fstat(fd)
