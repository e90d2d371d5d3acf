"""What is mounted on the mountpoint before we mount: nothing, a live or dead realizefs, or something else.

The kernel answers ``stat`` of a FUSE mount's root from its cached attributes
(an hour for ours) even when the daemon behind it is gone, so neither
``stat`` nor ``os.path.ismount`` tells a dead mount from a live one. The mount
table (``/proc/self/mountinfo``) says what is mounted on the path, and
``statfs`` always asks the daemon: a dead connection answers ``ENOTCONN`` at
once, a live daemon answers, a stuck one does not answer at all — so the
probe runs in a worker thread that is abandoned after a timeout (its request
ends when the process exits). The mountpoint itself is never touched from the
calling thread.

Two daemons started at once would both find the mountpoint free and mount
one over the other: `lock` makes the check and the mount one step, held for
the daemon's life.

Used by the daemon before anything else of the data_dir is opened; plain
threads, no trio.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
MNT_DETACH = 2
PROBE_TIMEOUT = 5.0  # a live daemon answers statfs at once; either way the mount is not ours to take
_DEAD = (errno.ENOTCONN, errno.ECONNABORTED)
_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    """One line of the mount table."""

    mountpoint: bytes
    fstype: str
    source: str
    dev: tuple[int, int]  # major, minor


def parse_mountinfo(text: bytes) -> list[Mount]:
    """The mounts of a ``mountinfo`` file, in the order the kernel lists them (top last)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            major, minor = fields[2].split(b":")
            mounts.append(
                Mount(
                    _unescape(fields[4]),
                    _unescape(fields[sep + 1]).decode(errors="replace"),
                    _unescape(fields[sep + 2]).decode(errors="replace"),
                    (int(major), int(minor)),
                )
            )
        except (ValueError, IndexError):
            continue  # not a line this format knows
    return mounts


def _unescape(field: bytes) -> bytes:
    """Undo the kernel's octal escapes of space, tab, newline and backslash."""
    return _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field)


def mounted_on(path: Path, table: list[Mount]) -> Mount | None:
    """The mount on top of *path* (an absolute path without symlinks), if any."""
    target = os.fsencode(path)
    found = None
    for mount in table:
        if mount.mountpoint == target:
            found = mount
    return found


def canonical(path: Path) -> Path:
    """*path* with its parent's symlinks resolved, without touching *path* itself."""
    return Path(os.path.realpath(path.parent)) / path.name


def is_mount_point(path: Path) -> bool:
    """Whether the mount table lists a mount on *path*, found without touching *path*.

    A mount whose daemon is stopped would make any look at *path* itself wait forever."""
    try:
        table = parse_mountinfo(MOUNTINFO.read_bytes())
    except OSError:
        return False
    return mounted_on(canonical(path), table) is not None


LOCK_DIR = Path("/run/realizefs")


def lock_path(path: Path) -> Path:
    """The file whose lock holds the mountpoint *path*."""
    directory = LOCK_DIR if os.geteuid() == 0 else Path(f"/tmp/realizefs-{os.geteuid()}")
    return directory / f"mount-{hashlib.sha256(os.fsencode(canonical(path))).hexdigest()[:32]}.lock"


def lock(path: Path) -> int:
    """Hold, for the life of the process, the right to mount on *path*; `Taken` if another process has it.

    A file in a directory only root writes (else one of the user's own), locked
    with ``flock`` (the kernel lets go when the process ends, however it ends),
    holding the holder's pid."""
    file = lock_path(path)
    file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise Taken(holder) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Taken(Exception):
    """Another process holds the mountpoint; its pid as text (or "")."""


def probe(path: Path, timeout: float = PROBE_TIMEOUT) -> int | None:
    """Ask the filesystem on *path* for its statfs: None if it answered, else the errno.

    ``ETIMEDOUT`` if it gave no answer within *timeout* seconds."""
    result: list[int | None] = []

    def ask() -> None:
        try:
            os.statvfs(path)
        except OSError as exc:
            result.append(exc.errno or errno.EIO)
        else:
            result.append(None)

    thread = threading.Thread(target=ask, name="mount-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else errno.ETIMEDOUT


def is_dead(err: int | None) -> bool:
    """Whether a `probe` answer says the FUSE connection has no daemon any more."""
    return err in _DEAD


def detach(path: Path) -> None:
    """Lazily unmount *path* (``umount2(MNT_DETACH)``); OSError naming it if that fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot detach the dead mount on {path}: {os.strerror(err)}")
