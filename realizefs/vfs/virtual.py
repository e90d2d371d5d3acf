"""Virtual files and directories of the mount (the root, arena parents, ``.realize/``).

A `VirtualFile` renders its whole content when opened (each open handle sees
one consistent snapshot, like a /proc file) and may accept writes of a
complete command. Its owner supplies the functions; this module knows nothing
of what they show.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class VirtualFile:
    name: bytes
    render: Callable[[], Awaitable[bytes]]
    write: Callable[[bytes], None] | None = None  # raises InvalidValue on bad input
    last_size: int = 0  # size of the latest rendering, reported by getattr

    @property
    def mode(self) -> int:
        return 0o100666 if self.write is not None else 0o100444


@dataclass
class VirtualDir:
    children: dict[bytes, int] = field(default_factory=dict)  # name -> inode
