"""Ask the kernel not to apply the caller's umask on creation (``FUSE_CAP_DONT_MASK``).

With POSIX ACLs the umask must not apply in a directory with a default ACL:
there the default ACL masks the mode instead, so that a shared directory's
``d:u:alice:rwx`` gives alice ``rwx`` on new files whatever the creator's
umask. The kernel applies the umask before the request unless the filesystem
asked for ``FUSE_CAP_DONT_MASK`` in its reply to FUSE_INIT; it then passes the
umask with the request, and the daemon applies it (`realizefs.real.backing`:
the default ACL if the directory has one, else the umask).

pyfuse3 (3.5.0) sets only a few capabilities in its ``init`` handler and none
can be asked of it. `install` wraps that handler where libfuse calls it: the
``init`` slot (index 0) of the op table libfuse copied into the session, found
as `realizefs.ops.fallocate.locate_slot` finds it (the checks are its). The
wrapper calls pyfuse3's handler, then adds ``FUSE_CAP_DONT_MASK`` to
``conn->want`` if the kernel offers it; ``struct fuse_conn_info`` is public ABI
(``want`` is its seventh ``unsigned``). It runs once, inside
``fuse_session_process_buf`` for FUSE_INIT, on the trio thread with the GIL
held, as pyfuse3's handlers do; pyfuse3's handler is called without releasing
the GIL. Must be installed after `pyfuse3.init` and before `pyfuse3.main`
answers the first request (FUSE_INIT). If anything fails nothing is written:
the kernel applies the umask as before (and a default ACL's mask is narrowed
by it).
"""

from __future__ import annotations

import ctypes
import logging

from realizefs.ops.fallocate import POINTER, locate_slot

log = logging.getLogger(__name__)

INIT_SLOT = 0
FUSE_CAP_DONT_MASK = 1 << 6  # /usr/include/fuse3/fuse_common.h


class ConnInfo(ctypes.Structure):
    """The head of ``struct fuse_conn_info`` (public header)."""

    _fields_ = (
        ("proto_major", ctypes.c_uint),
        ("proto_minor", ctypes.c_uint),
        ("max_write", ctypes.c_uint),
        ("max_read", ctypes.c_uint),
        ("max_readahead", ctypes.c_uint),
        ("capable", ctypes.c_uint),
        ("want", ctypes.c_uint),
    )


_INIT_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ConnInfo))
_PYFUSE3_INIT = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ConnInfo))  # keeps the GIL


class DontMask:
    """The wrapping ``init`` handler; `asked` says whether the capability was asked for."""

    def __init__(self, original: int) -> None:
        self._original = _PYFUSE3_INIT(original)
        self.asked = False
        self.callback = _INIT_HANDLER(self._init)  # referenced for as long as this object lives

    def _init(self, userdata: int, conn: ctypes._Pointer[ConnInfo]) -> None:
        self._original(userdata, conn)
        try:
            info = conn.contents
            if info.capable & FUSE_CAP_DONT_MASK:
                info.want |= FUSE_CAP_DONT_MASK
                self.asked = True
            else:
                log.info("the kernel does not offer FUSE_CAP_DONT_MASK: it applies the umask")
        except BaseException:  # never raise into libfuse
            log.exception("cannot ask for FUSE_CAP_DONT_MASK")


_installed: list[DontMask] = []  # libfuse may call the callback until the process ends


def install() -> bool:
    """Wrap the init handler of the session `pyfuse3.init` just made; False (logged) if not done."""
    try:
        slot = locate_slot()
        pointer = ctypes.c_void_p.from_address(slot.session + slot.table_offset + INIT_SLOT * POINTER)
        if not pointer.value or pointer.value != slot.init:
            raise RuntimeError("the session's init handler is not pyfuse3's")
        wrapper = DontMask(pointer.value)
        _installed.append(wrapper)
        pointer.value = ctypes.cast(wrapper.callback, ctypes.c_void_p).value
    except Exception as exc:  # nothing was written: the kernel applies the umask, as before
        log.info("the kernel keeps applying the umask on the mount: %s", exc)
        return False
    return True
