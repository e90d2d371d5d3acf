"""Extended attributes on the Real: users' ``user.*`` attributes and realize modes.

A path's realize mode is stored on the backing file or directory as the
attribute ``user.realize.mode`` (``real`` or ``unreal``). It is local to this
peer. The *effective* mode of a path (the nearest setting on the path or an
ancestor, else the arena's configured default) is worked out above the Real,
in `realizefs.vfs.attributes`, where ancestors may have no backing object.

``user.realize.*`` names are reserved: they are never read or written as
ordinary user attributes (the mount answers them itself), and the only one
listed is a mode stored on that very object; every other ``user.*`` name
passes through to the backing object, and so do the two POSIX ACL names
(`realizefs.real.acl`), which the kernel reads and writes itself once the mount
supports ACLs. No other namespace is exposed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

import xattr

from realizefs.errors import NoData, NotPermitted, NotSupported, from_oserror
from realizefs.real import acl
from realizefs.real.backing import Backing, proc_path
from realizefs.types import Mode

log = logging.getLogger(__name__)

USER_PREFIX = b"user."
RESERVED_PREFIX = b"user.realize."
MODE_NAME = b"user.realize.mode"


def is_passthrough(name: bytes) -> bool:
    """Whether *name* is an ordinary user attribute stored on the backing object."""
    return name.startswith(USER_PREFIX) and not name.startswith(RESERVED_PREFIX)


def is_acl(name: bytes) -> bool:
    """Whether *name* is a POSIX ACL, stored on the backing object."""
    return name in acl.NAMES


def get(backing: Backing, rel: bytes, name: bytes) -> bytes:
    with backing.object_path(rel) as (path, _):
        try:
            return bytes(xattr.get(path, name))
        except OSError as exc:
            raise from_oserror(exc) from None


def get_at(fd: int, name: bytes) -> bytes:
    """The attribute *name* of the object open as *fd* (any descriptor, ``O_PATH`` too)."""
    try:
        return os.getxattr(proc_path(fd), name)
    except OSError as exc:
        raise from_oserror(exc) from None


def set(backing: Backing, rel: bytes, name: bytes, value: bytes) -> None:
    with backing.object_path(rel) as (path, _):
        try:
            xattr.set(path, name, value)
        except OSError as exc:
            raise from_oserror(exc) from None


def remove(backing: Backing, rel: bytes, name: bytes) -> None:
    with backing.object_path(rel) as (path, _):
        try:
            xattr.remove(path, name)
        except OSError as exc:
            raise from_oserror(exc) from None


def names(backing: Backing, rel: bytes) -> list[bytes]:
    """The object's pass-through user attribute names and ACLs, and `MODE_NAME` if a mode is stored on it."""
    with backing.object_path(rel) as (path, _):
        try:
            stored = xattr.list(path)
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EPERM):  # symlinks, special files
                return []
            raise from_oserror(exc) from None
    mode = [MODE_NAME] if MODE_NAME in stored and stored_mode(backing, rel) is not None else []
    return mode + [n for n in stored if is_passthrough(n) or is_acl(n)]


def stored_mode(backing: Backing, rel: bytes) -> Mode | None:
    """The mode set on exactly this path, or None."""
    try:
        raw = get(backing, rel, MODE_NAME)
    except (NoData, NotSupported, NotPermitted):  # unset, or a symlink
        return None
    mode = Mode.parse(raw.decode("utf-8", "replace"))
    if mode is None:
        log.warning(
            "%s: ignoring invalid %s value %r",
            backing.root / rel.decode(errors="replace"),
            MODE_NAME.decode(),
            raw,
        )
    return mode


def set_mode(backing: Backing, rel: bytes, mode: Mode | None) -> None:
    """Set (or with None, remove) the mode stored on *rel*."""
    if mode is None:
        with contextlib.suppress(NoData):
            remove(backing, rel, MODE_NAME)
    else:
        set(backing, rel, MODE_NAME, mode.value.encode())
