"""Extended attributes of arena paths: the ``user.realize.*`` ones and the rest.

``user.realize.mode`` reads the effective mode and writes (or removes) the
setting stored on the backing object; ``user.realize.status`` and
``user.realize.hash`` are read-only; other ``user.realize.*`` names are
reserved; every other ``user.*`` name passes through to the backing object.
Names outside ``user.`` are answered without touching the disk (the kernel
asks for ``security.capability`` on every write). The errno of each refusal is
in docs/design.md.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable

from realizefs.errors import InvalidValue, NoData, NotPermitted, NotSupported
from realizefs.real import xattrs
from realizefs.real.backing import Backing
from realizefs.types import Mode

log = logging.getLogger(__name__)

MODE = xattrs.MODE_NAME
STATUS = b"user.realize.status"
HASH = b"user.realize.hash"
READ_ONLY = (STATUS, HASH)

ContentHash = Callable[[], bytes | None]


def get(backing: Backing, rel: bytes, name: bytes, default: Mode, content_hash: ContentHash) -> bytes:
    if not name.startswith(xattrs.USER_PREFIX):
        raise NoData()
    if name == MODE:
        return xattrs.effective_mode(backing, rel, default).value.encode()
    if name == STATUS:
        return b"real"
    if name == HASH:
        found = content_hash()
        if found is None:
            raise NoData("not hashed yet")  # being written, resting, or not a file
        return found.hex().encode()
    if not xattrs.is_passthrough(name):
        raise NoData()
    return xattrs.get(backing, rel, name)


def names(backing: Backing, rel: bytes, kind: int, content_hash: ContentHash) -> list[bytes]:
    if kind not in (stat.S_IFREG, stat.S_IFDIR):
        return []  # the kernel refuses user.* attributes on anything else
    hashed = [HASH] if kind == stat.S_IFREG and content_hash() is not None else []
    return [MODE, STATUS, *hashed, *xattrs.names(backing, rel)]


def put(backing: Backing, rel: bytes, name: bytes, value: bytes, where: str) -> None:
    if not name.startswith(xattrs.USER_PREFIX):
        raise NotSupported()
    if name == MODE:
        mode = Mode.parse(value.decode("utf-8", "replace").strip())
        if mode is None:
            raise InvalidValue('expected "real" or "unreal"')
        xattrs.set_mode(backing, rel, mode)
        log.info("%s: mode set to %s", where, mode.value)
    elif name in READ_ONLY:
        raise NotPermitted(f"{name.decode()} is read-only")
    elif not xattrs.is_passthrough(name):
        raise NotSupported()
    else:
        xattrs.set(backing, rel, name, value)


def remove(backing: Backing, rel: bytes, name: bytes, where: str) -> None:
    if not name.startswith(xattrs.USER_PREFIX):
        raise NoData()
    if name == MODE:
        if xattrs.stored_mode(backing, rel) is None:
            raise NoData()
        xattrs.set_mode(backing, rel, None)
        log.info("%s: mode setting removed", where)
    elif name in READ_ONLY:
        raise NotPermitted()
    elif not xattrs.is_passthrough(name):
        raise NoData()
    else:
        xattrs.remove(backing, rel, name)
