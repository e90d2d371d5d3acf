"""The names of files with several hard links, as the indexer last saw them.

On the disk, a file with several links is one object under several names;
for sync each name is a path of its own (docs/design.md, "Every kind of
object"). inotify reports a change under the one name it was made through, so
the indexer asks here which other names it has seen for the same object and
looks at those too. Only files seen with ``st_nlink`` above one are kept (a
few dozen bytes each); a name is dropped when it is next seen gone or no
longer linked. A name never seen with its links (a link made in the backing
tree after the walk, to a file then changed only under its new name) is found
at the next walk.

Concurrency: used from the indexer's worker thread, one round at a time.
"""

from __future__ import annotations

import os
import stat

Key = tuple[str, bytes]  # (arena name, path)
Ident = tuple[int, int]  # (st_dev, st_ino)


class Links:
    def __init__(self) -> None:
        self._names: dict[Ident, set[Key]] = {}
        self._ident: dict[Key, Ident] = {}

    def __len__(self) -> int:
        return len(self._ident)

    def saw(self, key: Key, st: os.stat_result | None) -> set[Key]:
        """*key* is now *st* (None: gone); the other names seen of its object."""
        old = self._ident.pop(key, None)
        if old is not None:
            names = self._names[old]
            names.discard(key)
            if not names:
                del self._names[old]
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
            return set()
        ident = (st.st_dev, st.st_ino)
        self._ident[key] = ident
        names = self._names.setdefault(ident, set())
        others = set(names)
        names.add(key)
        return others
