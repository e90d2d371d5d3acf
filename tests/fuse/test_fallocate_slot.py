"""Finding the fallocate slot of a live libfuse session, on the real pyfuse3 extension.

`realizefs.ops.fallocate` writes one pointer into libfuse's copy of pyfuse3's
op table; these tests pin each check that makes that write safe, and that a
failed check writes nothing. The live session is made in this process with
`pyfuse3.init` (a real mount nobody answers, and nothing here touches it).
"""

from __future__ import annotations

import ctypes
import logging
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest

from realizefs.ops import fallocate
from realizefs.vfs.namespace import Namespace

SO = Path(str(pyfuse3.__file__))
NAMES = {fallocate.TABLE, fallocate.SESSION, fallocate.INIT, *fallocate.HANDLERS.values()}


@pytest.fixture
def session(base: Path) -> Iterator[None]:
    mnt = base / "mnt"
    mnt.mkdir()
    pyfuse3.init(pyfuse3.Operations(), str(mnt), {"fsname=realizefs-slot-test"})
    try:
        yield
    finally:
        pyfuse3.close(unmount=True)


def test_symbols_of_the_loaded_extension() -> None:
    symbols = fallocate.elf_symbols(SO, NAMES | {"no_such_symbol"})
    assert set(symbols) == NAMES
    table = symbols[fallocate.TABLE]
    # libfuse 3.x's fuse_lowlevel_ops: at least up to readdirplus, nothing but pointers
    assert table.size % 8 == 0 and table.size > fallocate.READDIRPLUS_SLOT * 8
    assert symbols[fallocate.SESSION].size == 8
    library = ctypes.CDLL(str(SO))
    init = ctypes.cast(library.PyInit_pyfuse3, ctypes.c_void_p).value
    info = fallocate._DlInfo()
    assert fallocate._libc.dladdr(init, ctypes.byref(info))
    assert init == info.dli_fbase + symbols[fallocate.INIT].value


def test_files_that_cannot_be_trusted_are_refused(tmp_path: Path) -> None:
    not_elf = tmp_path / "not.so"
    not_elf.write_bytes(b"#!/bin/sh\n" * 10)
    with pytest.raises(fallocate.NotInstalled, match="not a little-endian ELF64"):
        fallocate.elf_symbols(not_elf, NAMES)
    stripped = tmp_path / "stripped.so"
    subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(SO)], check=True)
    with pytest.raises(fallocate.NotInstalled, match="no symbol table"):
        fallocate.locate_slot(stripped)
    copy = tmp_path / "copy.so"  # the same symbols, but not the object Python loaded
    shutil.copyfile(SO, copy)
    with pytest.raises(fallocate.NotInstalled, match="not the loaded pyfuse3"):
        fallocate.locate_slot(copy)


def test_no_session_before_init() -> None:
    with pytest.raises(fallocate.NotInstalled, match="no FUSE session"):
        fallocate.locate_slot()


def test_the_slot_is_libfuse_copy_of_pyfuse3_table(session: None) -> None:
    slot = fallocate.locate_slot()
    symbols = fallocate.elf_symbols(SO, NAMES)
    info = fallocate._DlInfo()
    library = ctypes.CDLL(str(SO))
    init = ctypes.cast(library.PyInit_pyfuse3, ctypes.c_void_p).value
    assert fallocate._libc.dladdr(init, ctypes.byref(info))
    base = info.dli_fbase
    table = symbols[fallocate.TABLE]
    ours = ctypes.string_at(base + table.value, table.size)
    copy = ctypes.string_at(slot.session + slot.table_offset, table.size)
    assert copy == ours
    pointers = struct.unpack(f"<{table.size // 8}Q", copy)
    assert pointers[fallocate.LOOKUP_SLOT] == base + symbols["__pyx_f_7pyfuse3_fuse_lookup"].value
    assert pointers[fallocate.FALLOCATE_SLOT] == 0
    assert slot.address == slot.session + slot.table_offset + fallocate.FALLOCATE_SLOT * 8


def test_install_writes_one_pointer_once(session: None, caplog: pytest.LogCaptureFixture) -> None:
    slot = fallocate.locate_slot()
    usable = fallocate._libc.malloc_usable_size(slot.session)
    before = ctypes.string_at(slot.session, usable)
    assert fallocate.install(Namespace([], []))
    after = ctypes.string_at(slot.session, usable)
    changed = [i for i in range(len(before)) if before[i] != after[i]]
    offset = slot.address - slot.session
    assert changed and all(offset <= i < offset + 8 for i in changed)
    written = ctypes.c_void_p.from_address(slot.address).value
    assert written == ctypes.cast(fallocate._installed[-1].callback, ctypes.c_void_p).value
    with caplog.at_level(logging.INFO, logger="realizefs.ops.fallocate"):
        assert not fallocate.install(Namespace([], []))  # the copy no longer matches: nothing written
    assert "fallocate stays unsupported" in caplog.text
    assert ctypes.c_void_p.from_address(slot.address).value == written
