"""Keeps the kernel's caches true to the Real: watcher events become invalidations.

The same events go on to the indexer, which keeps the content index true; if it
cannot take them, it is asked to walk the arenas again, so no change is lost.

The kernel caches attributes and directory entries of arena paths for
`WATCHED_TTL` seconds (see `realizefs.vfs.namespace`); when something changes
in a backing directory without going through the mount, this task tells the
kernel to forget what it cached about it, so the change shows at once.
Invalidation calls can block on a directory lock held by a request in
progress, which this event loop must answer: they run in a worker thread.
That thread is never abandoned: cancelling `run` waits for it, so it cannot
still be inside libfuse when the session is closed. The daemon therefore
cancels this task while the FUSE loop still answers, and closes the session
only after it has returned.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence

import pyfuse3
import trio

from realizefs.real.backing import Backing
from realizefs.real.indexer import Indexer
from realizefs.real.watcher import Change, Watcher
from realizefs.vfs.changes import Invalidation, backing_changed, everything, peers_changed, with_links
from realizefs.vfs.namespace import ATTR_TTL, WATCHED_TTL, Namespace

log = logging.getLogger(__name__)


class KernelCacheSync:
    def __init__(
        self,
        namespace: Namespace,
        watcher: Watcher,
        indexer: Indexer,
        invalidate: Callable[[Invalidation], None] | None = None,
    ) -> None:
        self.namespace = namespace
        self.watcher = watcher
        self.indexer = indexer  # told of the same changes, after the kernel
        self.invalidate = invalidate or _invalidate  # runs in a worker thread
        self._watched: set[Hashable] = set()
        self._rewatching = trio.Lock()  # a reload and an overflow may both ask
        self._from_peers: dict[int, set[tuple[bytes, bytes]]] = {}  # arena inode -> (directory, name)
        self._peers_changed = trio.Event()

    def watch_arenas(self) -> None:
        """Watch the arenas being served (and only those); set the cache lifetime.

        Walks every new arena's tree on this thread: for the start, before the mount answers."""
        wanted = self._wanted()
        self._watch(wanted)
        self._set_ttl(wanted)

    async def rewatch(self) -> None:
        """`watch_arenas` while the mount answers: the walks run in a worker thread."""
        async with self._rewatching:
            wanted = self._wanted()
            await trio.to_thread.run_sync(self._watch, wanted)
            self._set_ttl(wanted)

    def _wanted(self) -> dict[Hashable, Backing]:
        return {arena.ino: arena.backing for arena in self.namespace.arenas}

    def _watch(self, wanted: dict[Hashable, Backing]) -> None:
        for gone in self._watched - wanted.keys():
            self.watcher.remove_tree(gone)
        for tree in wanted.keys() - self._watched:
            self.watcher.add_tree(tree, wanted[tree])
        self._watched = set(wanted)

    def _set_ttl(self, wanted: dict[Hashable, Backing]) -> None:
        complete = all(self.watcher.complete.get(tree, False) for tree in wanted)
        self.namespace.ttl = WATCHED_TTL if complete else ATTR_TTL
        log.debug("watching %d arenas; kernel cache lifetime %.0fs", len(wanted), self.namespace.ttl)

    def peers_changed(self, arena: str, paths: Iterable[Sequence[bytes]]) -> None:
        """Paths of *arena* that a peer's change altered in this peer's view (the Unreal)."""
        ino = next((a.ino for a in self.namespace.arenas if a.name == arena), None)
        if ino is None:
            return
        pending = self._from_peers.setdefault(ino, set())
        for path in paths:
            pending.add((b"/".join(path[:-1]), path[-1]))
        self._peers_changed.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_peers)
            await self._follow_watcher()

    async def _follow_peers(self) -> None:
        while True:
            await self._peers_changed.wait()
            self._peers_changed = trio.Event()
            batch, self._from_peers = self._from_peers, {}
            todo = Invalidation()
            for ino, items in batch.items():
                todo.update(peers_changed(self.namespace, ino, items))
            if todo:
                await trio.to_thread.run_sync(self.invalidate, todo)  # cancelling waits for it

    async def _follow_watcher(self) -> None:
        while True:
            changes = await self.watcher.changes()
            if changes is None:
                await self.rewatch()  # the watch limit may have been hit meanwhile
                todo = everything(self.namespace)
                self.indexer.rescan_all()
            else:
                try:
                    todo = self._gather(changes)
                except Exception:  # a bug here must not take the mount down: the TTL still bounds
                    log.exception("cannot process %d changes from the watcher", len(changes))
                    continue
            if todo:
                await trio.to_thread.run_sync(self.invalidate, todo)  # cancelling waits for it

    def _gather(self, changes: list[Change]) -> Invalidation:
        by_tree: dict[Hashable, list[Change]] = defaultdict(list)
        for change in changes:
            by_tree[change.tree].append(change)
        total = Invalidation()
        names = {arena.ino: arena.name for arena in self.namespace.arenas}
        for tree, changed in by_tree.items():
            if not isinstance(tree, int) or tree not in names:
                continue
            items = with_links(self.namespace, tree, changed)
            try:
                self.indexer.changed(names[tree], items)
            except Exception:  # no change may be lost: the indexer walks the trees again instead
                log.exception(
                    "%s: the indexer could not take %d changes; it walks the arenas again",
                    names[tree],
                    len(items),
                )
                self.indexer.rescan_all()
            total.update(backing_changed(self.namespace, tree, items))
        return total


def _invalidate(todo: Invalidation) -> None:
    """Tell the kernel (from a worker thread); what it does not hold is no error."""
    for (parent, name), gone in todo.entries.items():
        _quietly(pyfuse3.invalidate_entry, parent, name, gone)
    for ino in todo.attrs:
        _quietly(pyfuse3.invalidate_inode, ino, True)
    for ino in todo.data:
        _quietly(pyfuse3.invalidate_inode, ino, False)


def _quietly(call: object, *args: object) -> None:
    """Failures are not worth a warning: the cache lifetime bounds the staleness anyway
    (ENOENT: the kernel holds nothing; EINVAL and ENOTCONN: the mount is going away)."""
    try:
        call(*args)  # type: ignore[operator]
    except OSError as exc:
        log.debug("cannot invalidate the kernel's cache for %r: %s", args, exc)
