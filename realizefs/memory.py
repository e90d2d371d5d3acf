"""The daemon's heap: which allocator it runs on, and giving freed memory back to the system.

CPython's small-object allocator (pymalloc) takes memory from the system in
1 MiB arenas and gives an arena back only once every object in it is freed.
After a home directory's worth of inodes is forgotten, the few objects that
outlived them (a dict resized meanwhile, a cached string) keep most arenas
alive: measured on 100,000 files created and deleted through the mount, 58
arenas stayed allocated holding 16 MB of objects, 44 MB of them free. So the
daemon runs on the C library's allocator (``PYTHONMALLOC=malloc``), whose
free pages `give_back` returns to the system (``malloc_trim``), in one glibc
arena (``MALLOC_ARENA_MAX=1``: Python allocates under the GIL, so threads
seldom contend for it; with one arena per thread each kept its own free
pages). Neither can be changed in a running interpreter, so the command line
re-executes itself once with them set (`use_system_allocator`); a value the
user set is kept. Creating 10,000 files through the mount ran as fast either
way (546 and 550 files/s, within the runs' noise).

When to trim: after much was freed, which the tables that hold per-inode and
per-path state tell by compacting themselves (`Shrink`); the
daemon looks every `TRIM_INTERVAL`. A trim walks the heap's free chunks
(milliseconds for 100 MB), in a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import trio

from realizefs.shrink import Shrink

log = logging.getLogger(__name__)

ENVIRONMENT = {"PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "1"}
TRIM_INTERVAL = 10.0  # seconds between looks at the process's memory


def use_system_allocator() -> None:
    """Re-execute this process with `ENVIRONMENT` unless it runs with it (call first thing)."""
    if all(name in os.environ for name in ENVIRONMENT):
        return
    env = {**ENVIRONMENT, **os.environ}  # what the user set wins
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError as exc:  # run as it is: only memory is at stake
        print(f"realizefs: cannot re-execute with the system allocator: {exc}", file=sys.stderr)


def anonymous_bytes(status: Path = Path("/proc/self/status")) -> int:
    """The process's resident anonymous memory (its heaps and stacks), in bytes."""
    for line in status.read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)  # glibc's; not in musl
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast(Callable[[int], int], trim)


_TRIM = _load_trim()


def give_back() -> bool:
    """Return the heap's free pages to the system; whether the C library can (blocking)."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def give_back_after_compactions(interval: float = TRIM_INTERVAL) -> None:
    """Every *interval* seconds, if a table was compacted since (much was freed), trim (a service)."""
    if _TRIM is None:
        return
    seen = Shrink.compactions
    while True:
        await trio.sleep(interval)
        if Shrink.compactions == seen:
            continue
        seen = Shrink.compactions
        before = anonymous_bytes()
        await trio.to_thread.run_sync(give_back)
        log.debug("gave %d MiB of free heap back", max(before - anonymous_bytes(), 0) >> 20)
