"""Giving back the memory of dicts that emptied: CPython never shrinks a dict's table.

A dict that once held 100,000 entries keeps a table sized for them after they
are deleted (a few megabytes per dict, for the life of the daemon). `Shrink`
notes a mapping's largest size and says when a copy, sized for what it holds
now, would give most of that table back. Pure; no I/O.
"""

from __future__ import annotations

MIN_PEAK = 4096  # below this, a table is too small to be worth a copy


class Shrink:
    def __init__(self) -> None:
        self.peak = 0

    def due(self, size: int) -> bool:
        """Whether a mapping that holds *size* entries now should be copied (call as it changes)."""
        if size > self.peak:
            self.peak = size
            return False
        if self.peak >= MIN_PEAK and size * 4 < self.peak:
            self.peak = size
            return True
        return False
