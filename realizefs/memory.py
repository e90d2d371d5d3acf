"""The daemon's heap: which allocator it runs on, and giving freed memory back to the system.

CPython's small-object allocator (pymalloc) takes memory from the system in
1 MiB arenas and gives an arena back only once every object in it is freed.
After a home directory's worth of inodes is forgotten, the few objects that
outlived them (a dict resized meanwhile, a cached string) keep most arenas
alive: measured on 100,000 files created and deleted through the mount, 58
arenas stayed allocated holding 16 MB of objects, 44 MB of them free. So the
daemon runs on the C library's allocator (``PYTHONMALLOC=malloc``), whose
free pages it returns to the system (``malloc_trim``), in one glibc
arena (``MALLOC_ARENA_MAX=1``: Python allocates under the GIL, so threads
seldom contend for it; with one arena per thread each kept its own free
pages). Neither can be changed in a running interpreter, so the command line
re-executes itself once with them set (`use_system_allocator`); a value the
user set is kept. Creating 10,000 files through the mount ran as fast either
way (546 and 550 files/s, within the runs' noise).

When to trim: every `TRIM_INTERVAL` the daemon reads how many bytes the heap
holds free (glibc's ``mallinfo2``) and trims once that grew by `TRIM_STEP`
since the last trim (`TrimPolicy`): much was freed, as when the kernel
forgets a large tree; what was freed in smaller steps is trimmed within
`TRIM_LAZY` (10 MB stayed resident otherwise after 30,000 files were
deleted through the mount). Trimmed pages stay counted as free, so the count after a
trim is the next baseline; memory taken again lowers it. (Trimming after a
table compacted missed what was freed after the last compaction: 30 MB of
free heap stayed resident after 100,000 files were deleted.) A trim walks the
heap's free chunks (milliseconds for 100 MB), in a worker thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path
from typing import cast

log = logging.getLogger(__name__)

ENVIRONMENT = {"PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "1"}
TRIM_INTERVAL = 10.0  # seconds between looks at the heap
TRIM_STEP = 8 << 20  # bytes freed since the last trim that make another worth it
TRIM_LAZY = 60.0  # seconds after which less is worth a trim too


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


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


class _Libc:
    """glibc's ``malloc_trim`` and ``mallinfo2`` (2.33+); absent elsewhere (musl)."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them (no ldconfig run)
        self._trim = getattr(libc, "malloc_trim", None)
        self._info = getattr(libc, "mallinfo2", None)
        if self._trim is not None and self._info is not None:
            self._trim.argtypes = [ctypes.c_size_t]
            self._trim.restype = ctypes.c_int
            self._info.argtypes = []
            self._info.restype = _MallInfo2

    @property
    def usable(self) -> bool:
        return self._trim is not None and self._info is not None

    def free_bytes(self) -> int:
        """Bytes the heap holds free (in its chunks, trimmed or not)."""
        assert self._info is not None
        return int(cast(_MallInfo2, self._info()).fordblks)

    def trim(self) -> None:
        assert self._trim is not None
        self._trim(0)


LIBC = _Libc()


class TrimPolicy:
    """When a trim is worth it (pure): the heap's free bytes grew by *step* since the last
    trim, or by anything (a MiB) and the last trim is *lazy* seconds old, so what is freed
    in small steps goes back too, within a minute."""

    def __init__(self, step: int = TRIM_STEP, lazy: float = TRIM_LAZY) -> None:
        self.step = step
        self.lazy = lazy
        self.baseline: int | None = None  # free bytes after the last trim (None: not looked yet)
        self.last = 0.0  # when the last trim was (monotonic seconds)

    def due(self, free: int, now: float) -> bool:
        if self.baseline is None or free < self.baseline:  # the first look, or memory taken again
            self.baseline = free
        grown = free - self.baseline
        return grown >= self.step or (grown >= 1 << 20 and now - self.last >= self.lazy)

    def trimmed(self, free: int, now: float) -> None:
        self.baseline = free
        self.last = now


async def give_back_freed_memory(interval: float = TRIM_INTERVAL) -> None:
    """Every *interval* seconds, trim the heap if much was freed since the last trim (a service)."""
    import trio  # noqa: PLC0415 (the command line imports this module before it re-executes)

    if not LIBC.usable:
        return
    policy = TrimPolicy()
    while True:
        await trio.sleep(interval)
        if policy.due(LIBC.free_bytes(), trio.current_time()):
            before = anonymous_bytes()
            await trio.to_thread.run_sync(LIBC.trim)
            policy.trimmed(LIBC.free_bytes(), trio.current_time())
            log.debug("gave %d MiB of free heap back", max(before - anonymous_bytes(), 0) >> 20)
