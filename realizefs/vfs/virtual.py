"""Virtual files and directories of the mount (the root, arena parents, ``.realize/``).

A `VirtualFile` renders its whole content for one `Reader` (what a file shows
may depend on who asks, see `visibility`) and may accept line commands. Its
owner supplies the functions; this module knows nothing of what they show.

Snapshots: each open handle reads one rendering, like a /proc file. So that
the size a stat reports is the size then read, a stat renders the file for
the reader and keeps it for their next open (for at most `SNAPSHOT_TTL`
seconds: the kernel asks for attributes right before an open anyway, to check
permissions), and a stat while the reader has the file open reports the size
of their newest open snapshot. So ``ls -l`` shows the size ``cat`` then reads
and ``stat``/``open``/``fstat`` sequences (``cp``, ``tail``, Python's
``read()``) see one size. A command written drops the kept renderings, so
the next open shows its effect.

Commands: writes are buffered per handle and taken line by line (a line ends at
``\\n``; the offset is ignored: the file behaves like a pipe). A complete line
that is not a valid command fails the write that completed it with ``EINVAL``,
and so does a write after which the unterminated rest can no longer become a
valid command; at release an unterminated rest that is a valid command is run,
anything else there is logged (the writer cannot be told after close(2): the
daemon has no flush handler, see `realizefs.ops.fs`). So ``printf now``,
``echo now`` and ``dd bs=1`` work alike, and only a truncated valid beginning
(``printf no``) is refused without an error the writer sees.

Concurrency: event loop only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from realizefs.errors import AccessDenied, InvalidValue, NotSupported

log = logging.getLogger(__name__)

# How long a rendering made for a stat is kept for the same reader's next open.
SNAPSHOT_TTL = 1.0


@dataclass(frozen=True)
class Reader:
    """The user a virtual file is rendered for: the caller of the FUSE request."""

    uid: int
    gid: int
    groups: frozenset[int] = frozenset()  # supplementary groups

    def may(self, st_mode: int, st_uid: int, st_gid: int, want: int) -> bool:
        """Whether the mode bits grant *want* (a mask of 4 r, 2 w, 1 x), as the kernel checks them."""
        if self.uid == 0:
            return True
        if self.uid == st_uid:
            bits = st_mode >> 6
        elif st_gid == self.gid or st_gid in self.groups:
            bits = st_mode >> 3
        else:
            bits = st_mode
        return bits & want == want


ROOT = Reader(0, 0)


@dataclass(frozen=True)
class Command:
    """What a writable virtual file does with what is written to it."""

    run: Callable[[bytes], None]  # one complete command, without its newline; raises InvalidValue
    could_become: Callable[[bytes], bool]  # whether an unterminated beginning may still become one


@dataclass(eq=False)
class VirtualFile:
    name: bytes
    render: Callable[[Reader], Awaitable[bytes]]
    command: Command | None = None

    @property
    def mode(self) -> int:
        return 0o100666 if self.command is not None else 0o100444


@dataclass
class VirtualDir:
    children: dict[bytes, int] = field(default_factory=dict)  # name -> inode


class Snapshots:
    """The renderings held by open handles, and the one a stat made for the next open (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = SNAPSHOT_TTL) -> None:
        self.clock = clock
        self.ttl = ttl
        self._for_open: dict[tuple[int, Reader], tuple[float, bytes]] = {}
        self._held: dict[int, tuple[tuple[int, Reader], bytes]] = {}  # handle -> (file, reader), content

    async def size(self, ino: int, vfile: VirtualFile, reader: Reader) -> int:
        """The size *reader* sees: of their newest open snapshot, else of one rendered for their next open."""
        key = (ino, reader)
        for held_key, content in reversed(self._held.values()):
            if held_key == key:
                return len(content)
        content = await vfile.render(reader)
        now = self.clock()
        for stale in [k for k, (when, _) in self._for_open.items() if now - when >= self.ttl]:
            del self._for_open[stale]
        self._for_open[key] = (now, content)
        return len(content)

    async def open(self, fh: int, ino: int, vfile: VirtualFile, reader: Reader) -> bytes:
        """The snapshot handle *fh* reads: the one the last stat rendered, if fresh, else a new one."""
        key = (ino, reader)
        kept = self._for_open.pop(key, None)
        if kept is not None and self.clock() - kept[0] < self.ttl:
            content = kept[1]
        else:
            content = await vfile.render(reader)
        self._held[fh] = (key, content)
        return content

    def close(self, fh: int) -> None:
        self._held.pop(fh, None)

    def changed(self) -> None:
        """Something a file shows changed: no rendering made before is handed to a new open."""
        self._for_open.clear()


class CommandInput:
    """The commands written through one open handle (see the module doc)."""

    def __init__(self, command: Command) -> None:
        self.command = command
        self.pending = b""  # the unterminated rest of what was written

    def write(self, data: bytes) -> None:
        """Run the lines *data* completes; `InvalidValue` for a bad one (the rest is then dropped)."""
        *lines, rest = (self.pending + data).split(b"\n")
        self.pending = b""
        for line in lines:
            self.command.run(line)
        if rest and not self.command.could_become(rest):
            raise InvalidValue("not a command")
        self.pending = rest

    def close(self, where: str) -> None:
        """At release: run an unterminated last command; log one that is not valid."""
        pending, self.pending = self.pending, b""
        if not pending:
            return
        try:
            self.command.run(pending)
        except InvalidValue as exc:
            log.warning("%s: ignoring %r written without a newline: %s", where, pending, exc)


class VirtualOpen:
    """One open handle of a virtual file: the snapshot it reads, the commands written to it.

    A `realizefs.vfs.tree.Handle`, like a tree's open file: reads come from the
    snapshot taken at `load`, writes feed the file's command (others are
    refused), and `close` runs an unterminated last command."""

    def __init__(self, vfile: VirtualFile, snapshots: Snapshots, where: str) -> None:
        self._vfile = vfile
        self._snapshots = snapshots
        self._where = where  # the file's path, for the log
        self._fh: int | None = None
        self._content = b""
        self._commands = CommandInput(vfile.command) if vfile.command is not None else None

    async def load(self, fh: int, ino: int, reader: Reader) -> None:
        """Take the snapshot the handle *fh* of the file *ino* reads (see `Snapshots.open`)."""
        self._fh = fh
        self._content = await self._snapshots.open(fh, ino, self._vfile, reader)

    async def read(self, offset: int, size: int) -> bytes:
        return self._content[offset : offset + size]

    async def write(self, offset: int, data: bytes) -> int:
        if self._commands is None:
            raise AccessDenied()
        self._snapshots.changed()  # the next open shows what the command did
        self._commands.write(data)
        return len(data)

    async def fsync(self, datasync: bool) -> None:
        pass  # nothing is kept to flush

    async def allocate(self, mode: int, offset: int, length: int) -> None:
        raise NotSupported("realizefs's own files cannot be allocated")

    def close(self) -> None:
        if self._fh is not None:
            self._snapshots.close(self._fh)
        if self._commands is not None:
            self._snapshots.changed()
            self._commands.close(self._where)
