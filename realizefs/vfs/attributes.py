"""Extended attributes of arena paths: the ``user.realize.*`` ones and the rest.

``user.realize.mode`` reads the effective mode (`effective_mode`: the nearest
setting the tree holds on the path or an ancestor, else the arena default) and
writes (or removes) the setting stored on the path; ``user.realize.status``
(the tree's account of the path's state), ``user.realize.hash`` and
``user.realize.peers`` (the peers holding its version in their Real) and
``user.realize.versions`` (of a path in conflict: its current version and
those kept, `realizefs.vfs.conflicts`) are computed; ``user.realize.version``
is written to resolve a conflict (by the namespace: it may fetch) and reads as
unset. Computed values are readable by name but
never listed: `names` lists ``user.realize.mode`` only where it is set on that
very path, so that copy tools (``cp -a``, ``mv``, ``rsync -X``) neither copy
nor pin them. Writing a computed attribute is refused unless the value is the
one it has (then nothing is stored). Other ``user.realize.*`` names are
reserved; every other ``user.*`` name passes through to the tree, and so do the
POSIX ACLs (``system.posix_acl_access`` and ``_default``), which the kernel
reads (once per inode: it caches them) and writes to enforce them. Other names
outside ``user.`` are answered without touching the disk (the kernel asks for
``security.capability`` on every write). The errno of each refusal and the
reasons are in docs/design.md.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable

from realizefs.errors import InvalidValue, NoData, NotPermitted, NotSupported
from realizefs.real import xattrs
from realizefs.real.backing import split
from realizefs.types import Mode
from realizefs.vfs import conflicts
from realizefs.vfs.tree import Tree

log = logging.getLogger(__name__)

MODE = xattrs.MODE_NAME
STATUS = b"user.realize.status"
HASH = b"user.realize.hash"
PEERS = b"user.realize.peers"
VERSIONS = b"user.realize.versions"  # of a path in conflict: the current one and those kept
VERSION = b"user.realize.version"  # written (by the namespace): the version made current
COMPUTED = (STATUS, HASH, PEERS, VERSIONS)

ContentHash = Callable[[], bytes | None]


def effective_mode(tree: Tree, rel: bytes, default: Mode) -> Mode:
    """The nearest mode *tree* holds on *rel* or an ancestor, else *default*."""
    while True:
        mode = tree.stored_mode(rel)
        if mode is not None:
            return mode
        if not rel:
            return default
        rel = split(rel)[0]


def kept(name: bytes) -> bool:
    """Whether an object may have the attribute *name* (a ``user.*`` one, or an ACL); any other
    is read as `NoData` whatever the object, without looking it up."""
    return name.startswith(xattrs.USER_PREFIX) or xattrs.is_acl(name)


def get(tree: Tree, rel: bytes, name: bytes, default: Mode, content_hash: ContentHash) -> bytes:
    if xattrs.is_acl(name):
        return tree.getxattr(rel, name)
    if not kept(name):
        raise NoData()
    if name == MODE:
        return effective_mode(tree, rel, default).value.encode()
    if name == STATUS:
        return _status(tree, rel, default)
    if name in COMPUTED:
        value = _computed(tree, rel, name, content_hash)
        if value is None:
            raise NoData("not hashed yet" if name != VERSIONS else "not in conflict")
        return value
    if not xattrs.is_passthrough(name):
        raise NoData()
    return tree.getxattr(rel, name)


def _status(tree: Tree, rel: bytes, default: Mode) -> bytes:
    """`_state`, and how many other versions of *rel* are kept if it is in conflict."""
    status = _state(tree, rel, default)
    kept = len(conflicts.copies(tree, rel))
    if kept:
        other = "1 other version" if kept == 1 else f"{kept} other versions"
        return status + f"; conflict: {other} kept (user.realize.versions)".encode()
    return status


def _state(tree: Tree, rel: bytes, default: Mode) -> bytes:
    """The tree's status of *rel*; for a Real file marked unreal, why it is still Real."""
    status = tree.status(rel)
    if status != b"real" or effective_mode(tree, rel, default) is not Mode.UNREAL:
        return status
    if not stat.S_ISREG(tree.stat(rel).st_mode):
        return status  # directories and symlinks take no space to give back
    if tree.peers(rel):
        return b"unreal pending: given back at the next consensus"
    return b"unreal pending: no peer holds this version"


def _computed(tree: Tree, rel: bytes, name: bytes, content_hash: ContentHash) -> bytes | None:
    if name == STATUS:  # (as the tree has it: what a copy carries in)
        return tree.status(rel)
    if name == PEERS:
        return tree.peers(rel)
    if name == VERSIONS:
        kept = conflicts.copies(tree, rel)
        return conflicts.describe(conflicts.versions(tree, rel, kept)) if kept else None
    found = content_hash()
    return None if found is None else found.hex().encode()


def names(tree: Tree, rel: bytes, kind: int) -> list[bytes]:
    """What ``listxattr`` shows: a mode set on this very path and pass-through names (ACLs
    among them), nothing computed."""
    if kind not in (stat.S_IFREG, stat.S_IFDIR):
        return []  # the kernel refuses user.* attributes on anything else, and ACLs on symlinks
    return tree.xattr_names(rel)


def stored(name: bytes) -> bool:
    """Whether setting *name* stores it on the object itself (a pass-through ``user.*`` name or
    an ACL): an Unreal object is made Real first, to hold it."""
    return xattrs.is_acl(name) or (
        name.startswith(xattrs.USER_PREFIX)
        and name != MODE
        and name not in COMPUTED
        and xattrs.is_passthrough(name)
    )


def put(tree: Tree, rel: bytes, name: bytes, value: bytes, where: str, content_hash: ContentHash) -> None:
    if xattrs.is_acl(name):
        tree.setxattr(rel, name, value)  # the backing filesystem sets the mode to match
        return
    if not name.startswith(xattrs.USER_PREFIX):
        raise NotSupported()
    if name == MODE:
        mode = Mode.parse(value.decode("utf-8", "replace").strip())
        if mode is None:
            raise InvalidValue('expected "real" or "unreal"')
        tree.set_mode(rel, mode)
        log.info("%s: mode set to %s", where, mode.value)
    elif name in COMPUTED:
        # A copy of a file that carries the value it has here changes nothing: accepted,
        # so the copy does not fail; any other value would be setting a computed one.
        if value != _computed(tree, rel, name, content_hash):
            raise NotPermitted(f"{name.decode()} is computed")
    elif not xattrs.is_passthrough(name):
        raise NotSupported()
    else:
        tree.setxattr(rel, name, value)


def remove(tree: Tree, rel: bytes, name: bytes, where: str) -> None:
    if xattrs.is_acl(name):
        tree.removexattr(rel, name)
        return
    if not name.startswith(xattrs.USER_PREFIX):
        raise NoData()
    if name == MODE:
        if tree.stored_mode(rel) is None:
            raise NoData()
        tree.set_mode(rel, None)
        log.info("%s: mode setting removed", where)
    elif name in COMPUTED:
        raise NotPermitted()
    elif not xattrs.is_passthrough(name):
        raise NoData()
    else:
        tree.removexattr(rel, name)
