"""POSIX ACLs on the Real: their extended-attribute names and the mode a new object gets.

The mount tells the kernel it supports POSIX ACLs, so the kernel enforces them
(with ``default_permissions``) from ``system.posix_acl_access``, which it reads
once per inode and caches, and sets both attributes through ``setxattr``; the
backing filesystem stores them and keeps the mode in step with the access ACL
(``chmod`` sets the ACL's mask, setting an ACL sets the group bits).

What the daemon must do itself is what the kernel leaves to the filesystem at
creation: a new object in a directory with a default ACL inherits it, and its
mode is the mode asked for masked by that ACL (`inherited_mode`, as the kernel's
``posix_acl_create``). The backing filesystem does the inheriting when the
daemon creates the object; the daemon then sets the mode once more after
handing the object over (``chown`` clears setuid bits, directories are made
private first), and must set this one, not the mode asked for.

The value is the kernel's xattr form: a little-endian header (version 2), then
8-byte entries (tag, permissions, id). Pure functions of bytes; any thread.
"""

from __future__ import annotations

import struct

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def entries(value: bytes) -> list[tuple[int, int, int]]:
    """The (tag, permissions, id) entries of an ACL in xattr form; ValueError if malformed."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise ValueError("not a POSIX ACL: bad length")
    if _HEADER.unpack_from(value)[0] != VERSION:
        raise ValueError("not a version 2 POSIX ACL")
    return [e for e in _ENTRY.iter_unpack(value[_HEADER.size :])]


def inherited_mode(default_acl: bytes, mode: int) -> int:
    """The mode of an object created with *mode* in a directory whose default ACL is *default_acl*.

    Each class's permissions are those the ACL grants it and *mode* allows; the group
    class is the mask entry if there is one, else the owning group's. Bits above the
    permission bits (setuid, setgid, sticky) are kept from *mode*."""
    perms = {tag: perm & 7 for tag, perm, _ in entries(default_acl)}
    if USER_OBJ not in perms or GROUP_OBJ not in perms or OTHER not in perms:
        raise ValueError("POSIX ACL without its owner, group or other entry")
    group = perms.get(MASK, perms[GROUP_OBJ])
    owner_bits = perms[USER_OBJ] & (mode >> 6)
    group_bits = group & (mode >> 3)
    other_bits = perms[OTHER] & mode
    return (mode & ~0o777) | (owner_bits & 7) << 6 | (group_bits & 7) << 3 | (other_bits & 7)
