"""Whether a user could see a name in an arena: the rule the files of ``.realize/`` filter by.

A reader may see the name at a path if they could list it through the mount
now: search (x) permission on the arena root and every directory down to the
one holding the name, and read (r) permission on that one, judged from the
backing tree's mode bits as the kernel judges them (the mount runs with
``default_permissions`` and no ACLs). A directory on the way that no longer
exists hides the name. Root sees everything.

Concurrency: short blocking stats, on the event loop; a `Visibility` is made
for one rendering and caches the directories it looked at.
"""

from __future__ import annotations

import os
import stat

from realizefs.errors import FsError
from realizefs.real.backing import Backing
from realizefs.vfs.virtual import Reader

_READ, _SEARCH = 4, 1


class Visibility:
    def __init__(self, backing: Backing, reader: Reader) -> None:
        self.backing = backing
        self.reader = reader
        self._dirs: dict[bytes, os.stat_result | None] = {}

    def may_see(self, rel: bytes) -> bool:
        """Whether the reader could list the name *rel* (a path in the arena, names joined by ``/``)."""
        if self.reader.uid == 0:
            return True
        parts = rel.split(b"/")
        for depth in range(len(parts)):
            want = _SEARCH | (_READ if depth == len(parts) - 1 else 0)
            if not self._grants(b"/".join(parts[:depth]), want):
                return False
        return True

    def _grants(self, rel: bytes, want: int) -> bool:
        if rel not in self._dirs:
            try:
                st: os.stat_result | None = self.backing.stat(rel)
            except FsError:
                st = None
            self._dirs[rel] = st if st is not None and stat.S_ISDIR(st.st_mode) else None
        st = self._dirs[rel]
        return st is not None and self.reader.may(st.st_mode, st.st_uid, st.st_gid, want)
