"""fallocate(2) through the mount, which pyfuse3 has no handler for.

pyfuse3 (3.5.0, the latest) registers no ``fallocate`` in the
``struct fuse_lowlevel_ops`` it gives libfuse, so libfuse answers ``ENOSYS``
and the kernel then refuses every fallocate on the mount with ``EOPNOTSUPP``.
Neither pyfuse3's API nor libfuse's lets an op be added to a running session,
so `install` adds it where libfuse looks for it, after `pyfuse3.init` and
before `pyfuse3.main` answers the first request:

1. It reads the unstripped pyfuse3 extension's ELF ``.symtab`` (`elf_symbols`)
   for three statics: ``fuse_ops`` (pyfuse3's op table), ``session`` (the
   ``struct fuse_session *``) and the handlers pyfuse3 put in the table. The
   extension's load base is ``dlsym(PyInit_pyfuse3)`` minus its symbol value,
   checked against ``dladdr``'s base and file name (the object opened with
   ``RTLD_NOLOAD``: the one Python loaded, not a second copy).
2. It checks the table against the public ABI of ``fuse_lowlevel_ops``
   (libfuse only appends members): ``lookup``, ``forget_multi`` and
   ``readdirplus`` are pyfuse3's handlers at their indices 2, 38 and 41 and
   ``fallocate`` (index 40) is NULL.
3. ``fuse_session_new`` copied that table into the session; no private layout
   is assumed: the copy is found by searching the session's heap block (bounded
   by ``malloc_usable_size``) for the exact bytes of pyfuse3's table (but its
   ``init``, which `realizefs.ops.dontmask` may have wrapped), which
   must occur exactly once, pointer-aligned, with the ``fallocate`` slot NULL.
4. Only then is one pointer written: the session's ``fallocate`` slot gets a
   ctypes callback. Any failed check logs one INFO line and writes nothing:
   fallocate stays refused with ``EOPNOTSUPP``, as without this module.

The callback runs where pyfuse3's own C handlers run: inside
``fuse_session_process_buf``, called by a pyfuse3 worker task on the trio
thread with the GIL held. Like them it does not block: it starts a task in that
worker's nursery (pyfuse3's, which `pyfuse3.main` waits for, so every request
is answered before the daemon closes the session) and returns. The task does
the fallocate through the namespace (`Namespace.allocate`: the Real runs it on
the backing descriptor in a worker thread, as it can wait on the disk, e.g.
writing back dirty pages for a punched range; the namespace takes it as a write
through the mount, as the kernel updates its own size and drops the attributes
and punched pages itself, so the watcher's event for the backing file needs no
invalidation) and answers with libfuse's
``fuse_reply_err`` (0 on success), exactly once, whatever happens.

The kernel passes only ``FALLOC_FL_KEEP_SIZE``, ``FALLOC_FL_PUNCH_HOLE`` and
``FALLOC_FL_ZERO_RANGE`` to a FUSE filesystem (other modes, collapse and insert
range included, are ``EOPNOTSUPP`` before any request); the VFS has already
refused a descriptor not open for writing (``EBADF``). Whatever reaches the
backing filesystem fails there with its own errno.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from realizefs.ops.fs import handler
from realizefs.vfs.namespace import Namespace

log = logging.getLogger(__name__)

POINTER = 8
# Indices in struct fuse_lowlevel_ops (public ABI, /usr/include/fuse3/fuse_lowlevel.h).
LOOKUP_SLOT = 2
FORGET_MULTI_SLOT = 38
FALLOCATE_SLOT = 40
READDIRPLUS_SLOT = 41

TABLE = "__pyx_v_7pyfuse3_fuse_ops"
SESSION = "__pyx_v_7pyfuse3_session"
INIT = "PyInit_pyfuse3"
HANDLERS = {
    LOOKUP_SLOT: "__pyx_f_7pyfuse3_fuse_lookup",
    FORGET_MULTI_SLOT: "__pyx_f_7pyfuse3_fuse_forget_multi",
    READDIRPLUS_SLOT: "__pyx_f_7pyfuse3_fuse_readdirplus",
}

_SHT_SYMTAB = 2
_STT_OBJECT = 1
_STT_FUNC = 2


class NotInstalled(Exception):
    """A check failed: fallocate stays unsupported; the message says which."""


@dataclass(frozen=True)
class Symbol:
    value: int  # relative to the load base
    size: int
    kind: int  # STT_*


def elf_symbols(path: str | Path, names: set[str]) -> dict[str, Symbol]:
    """The ``.symtab`` entries named *names* in the ELF64 little-endian file *path*.

    A name defined twice with different values is refused (`NotInstalled`);
    names not found are simply absent from the answer.
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size < 64:
            raise NotInstalled(f"{path} is not a little-endian ELF64 file")
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with m:
        if m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
            raise NotInstalled(f"{path} is not a little-endian ELF64 file")
        (shoff,) = struct.unpack_from("<Q", m, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", m, 0x3A)
        if shentsize != 64 or shoff + shnum * 64 > len(m):
            raise NotInstalled(f"{path}: unexpected section headers")

        def section(i: int) -> tuple[int, int, int, int, int]:
            _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", m, shoff + i * 64
            )
            return kind, offset, size, link, entsize

        found: dict[str, Symbol] = {}
        symtabs = [s for s in map(section, range(shnum)) if s[0] == _SHT_SYMTAB]
        if not symtabs:
            raise NotInstalled(f"{path} has no symbol table (stripped)")
        for _kind, offset, size, link, entsize in symtabs:
            if entsize != 24 or link >= shnum:
                raise NotInstalled(f"{path}: unexpected symbol table")
            _k, str_offset, str_size, _l, _e = section(link)
            if offset + size > len(m) or str_offset + str_size > len(m):
                raise NotInstalled(f"{path}: the symbol table lies beyond the file")
            for pos in range(offset, offset + size - size % 24, 24):
                st_name, st_info, _other, _shndx, value, sym_size = struct.unpack_from("<IBBHQQ", m, pos)
                if st_name >= str_size:
                    continue
                end = m.find(b"\0", str_offset + st_name, str_offset + str_size)
                if end < 0:
                    continue
                name = m[str_offset + st_name : end].decode("ascii", "replace")
                if name not in names:
                    continue
                symbol = Symbol(value, sym_size, st_info & 0xF)
                if found.setdefault(name, symbol) != symbol:
                    raise NotInstalled(f"{path}: {name} is defined twice")
        return found


class _DlInfo(ctypes.Structure):
    _fields_ = (
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    )


class _FileInfo(ctypes.Structure):
    """The head of ``struct fuse_file_info`` (public header): only ``fh`` is read."""

    _fields_ = (
        ("flags", ctypes.c_int),
        ("bits", ctypes.c_uint),  # writepage, direct_io, ... : one unsigned int of bit-fields
        ("padding2", ctypes.c_uint),
        ("fh", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_libc.dladdr.argtypes = (ctypes.c_void_p, ctypes.POINTER(_DlInfo))
_libc.malloc_usable_size.argtypes = (ctypes.c_void_p,)
_libc.malloc_usable_size.restype = ctypes.c_size_t

_CALLBACK = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,  # fuse_req_t
    ctypes.c_uint64,  # fuse_ino_t
    ctypes.c_int,  # mode
    ctypes.c_int64,  # off_t offset
    ctypes.c_int64,  # off_t length
    ctypes.POINTER(_FileInfo),
)


@dataclass(frozen=True)
class Slot:
    """Where the session's ``fallocate`` pointer lives, and how it was found."""

    address: int
    session: int
    table_offset: int  # of the op table inside the session
    library: ctypes.CDLL  # the pyfuse3 extension, resolving libfuse's symbols too
    init: int  # pyfuse3's init handler, op 0 of its table


def locate_slot(so_path: str | Path | None = None) -> Slot:
    """The address of the ``fallocate`` pointer in the live session's op table.

    Reads memory only where checks made it safe; writes nothing.
    """
    path = Path(so_path or str(pyfuse3.__file__))
    if ctypes.sizeof(ctypes.c_void_p) != POINTER:
        raise NotInstalled("not a 64-bit process")
    symbols = elf_symbols(path, {TABLE, SESSION, INIT, *HANDLERS.values()})
    missing = {TABLE, SESSION, INIT, *HANDLERS.values()} - symbols.keys()
    if missing:
        raise NotInstalled(f"{path.name} lacks {', '.join(sorted(missing))}")
    table, session_sym = symbols[TABLE], symbols[SESSION]
    if table.kind != _STT_OBJECT or table.size % POINTER or table.size <= READDIRPLUS_SLOT * POINTER:
        raise NotInstalled(f"{TABLE} is not an op table ({table.size} bytes)")
    if session_sym.kind != _STT_OBJECT or session_sym.size != POINTER:
        raise NotInstalled(f"{SESSION} is not a pointer")
    if any(symbols[name].kind != _STT_FUNC for name in HANDLERS.values()):
        raise NotInstalled("pyfuse3's handlers are not functions")

    try:  # the extension Python loaded; RTLD_NOLOAD never loads another copy
        library = ctypes.CDLL(str(path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError as exc:
        raise NotInstalled(f"{path.name} is not the loaded pyfuse3: {exc}") from None
    init = ctypes.cast(getattr(library, INIT), ctypes.c_void_p).value or 0
    base = init - symbols[INIT].value
    info = _DlInfo()
    if not _libc.dladdr(init, ctypes.byref(info)) or info.dli_fbase != base or info.dli_fname is None:
        raise NotInstalled("the extension's load base does not match its symbol table")
    if not os.path.samefile(os.fsdecode(info.dli_fname), path):
        raise NotInstalled(f"the loaded pyfuse3 is {info.dli_fname!r}, not {path}")

    session = ctypes.c_void_p.from_address(base + session_sym.value).value
    if not session:
        raise NotInstalled("no FUSE session (pyfuse3.init not called)")

    ours = ctypes.string_at(base + table.value, table.size)
    pointers = struct.unpack(f"<{table.size // POINTER}Q", ours)
    for index, name in HANDLERS.items():
        if pointers[index] != base + symbols[name].value:
            raise NotInstalled(f"op {index} of pyfuse3's table is not {name}: unexpected layout")
    if pointers[FALLOCATE_SLOT] != 0:
        raise NotInstalled("pyfuse3 already has a fallocate handler")

    usable = _libc.malloc_usable_size(session)
    memory = ctypes.string_at(session, usable)
    rest = ours[POINTER:]  # op 0 (init) may be wrapped already: realizefs.ops.dontmask
    found = memory.find(rest)
    at = found - POINTER
    if found < 0 or at < 0 or at % POINTER or memory.find(rest, found + 1) >= 0:
        raise NotInstalled("pyfuse3's op table is not found once in the session")
    return Slot(session + at + FALLOCATE_SLOT * POINTER, session, at, library, pointers[0])


class Fallocate:
    """Answers FUSE_FALLOCATE for *namespace*'s Real files (see the module docstring)."""

    def __init__(self, namespace: Namespace, library: ctypes.CDLL) -> None:
        self.ns = namespace
        self._reply = library.fuse_reply_err
        self._reply.argtypes = (ctypes.c_void_p, ctypes.c_int)
        self._reply.restype = ctypes.c_int
        self.callback = _CALLBACK(self._request)  # referenced for as long as this object lives

    def _request(
        self, req: int, ino: int, mode: int, offset: int, length: int, fi: ctypes._Pointer[_FileInfo]
    ) -> None:
        """In ``fuse_session_process_buf``, on the trio thread: start the answer, never raise."""
        try:
            fh = fi.contents.fh
            nursery = trio.lowlevel.current_task().parent_nursery
            if nursery is None:
                raise RuntimeError("not inside a pyfuse3 worker task")
            nursery.start_soon(self._answer, req, fh, mode, offset, length)
        except BaseException:
            log.exception("cannot start a fallocate request")
            self._send(req, errno.EIO)

    async def _answer(self, req: int, fh: int, mode: int, offset: int, length: int) -> None:
        err = errno.EIO
        try:
            await self.fallocate(fh, mode, offset, length)
            err = 0
        except pyfuse3.FUSEError as exc:
            err = exc.errno
        finally:
            self._send(req, err)

    @handler
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        await self.ns.allocate(fh, mode, offset, length)

    def _send(self, req: int, err: int) -> None:
        ret = self._reply(req, err)
        if ret != 0:
            log.error("fallocate: fuse_reply_err failed with %s", os.strerror(-ret))


_installed: list[Fallocate] = []  # libfuse may call a callback until the process ends


def install(namespace: Namespace) -> bool:
    """Answer fallocate on the session `pyfuse3.init` just made; False (logged) if it cannot be done."""
    try:
        slot = locate_slot()
        pointer = ctypes.c_void_p.from_address(slot.address)
        if pointer.value is not None:
            raise NotInstalled("the session's fallocate slot is not empty")
        fallocate = Fallocate(namespace, slot.library)
        _installed.append(fallocate)
        pointer.value = ctypes.cast(fallocate.callback, ctypes.c_void_p).value
    except Exception as exc:  # nothing was written: the mount works as without this module
        log.info("fallocate stays unsupported on the mount: %s", exc)
        return False
    log.debug("fallocate passes through (op table at session+%d)", slot.table_offset)
    return True
