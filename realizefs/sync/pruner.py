"""The pruner: runs `realizefs.store.pruning` in a worker thread whenever something may have
become prunable (a commit of the index: an acknowledgement, a change), a step at a time.

Each round prunes every served arena step by step (one transaction of at most `BATCH`
deletions each) until a step finds nothing, then waits for the next commit, at most one round
per `PACE` seconds so a busy index is not slowed by rounds that find little. Unreferenced
manifests are swept every `SWEEP_EVERY` seconds, the first that long after start (the sweep
reads every record once, and holds every content hash in memory meanwhile).

Runs in the daemon's trio thread; the store work is in worker threads, never on a request's
path. *clock* is trio's (tests drive it with `trio.testing.MockClock`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import suppress

import trio

from realizefs.store.index import Index
from realizefs.store.pruning import Pruned, Pruning

log = logging.getLogger(__name__)

BATCH = 1000  # deletions per transaction
PACE = 1.0  # seconds between two rounds, at least
SWEEP_EVERY = 600.0  # seconds between two sweeps of unreferenced manifests


class Pruner:
    """Prunes *arenas* (a callable: those served now) for the configured *peers* (their ids in
    vectors) and the *bound* (``consensus.history_bound``), both callables read each round."""

    def __init__(
        self,
        index: Index,
        pruning: Pruning,
        arenas: Callable[[], Sequence[str]],
        peers: Callable[[], Sequence[bytes]],
        bound: Callable[[], int],
    ) -> None:
        self.index = index
        self.pruning = pruning
        self.arenas = arenas
        self.peers = peers
        self.bound = bound
        self.rounds = 0  # rounds done (for tests and status)
        self.total = Pruned()  # what every round dropped
        self._wanted = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        index.watch(self._committed)

    def _committed(self) -> None:
        token = self._token
        if token is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(self._wanted.set)

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        swept = trio.current_time()  # not at start: the startup walk has the disk and the store
        while True:
            pruned = await self.round()
            if trio.current_time() - swept >= SWEEP_EVERY:
                swept = trio.current_time()
                pruned = _add(pruned, await self.sweep())
            if pruned:
                log.info(
                    "pruned %d history entries, %d tombstones (%d in peers' views), %d manifests",
                    pruned.history,
                    pruned.tombstones,
                    pruned.views,
                    pruned.manifests,
                )
            await trio.sleep(PACE)
            with trio.move_on_at(swept + SWEEP_EVERY):  # a sweep is due then, commits or not
                await self._wanted.wait()
            self._wanted = trio.Event()

    async def round(self) -> Pruned:
        """Prune every arena until nothing more goes; what went."""
        total = Pruned()
        peers, bound = list(self.peers()), self.bound()
        for arena in self.arenas():
            while True:
                step = await trio.to_thread.run_sync(self.pruning.step, arena, peers, bound, BATCH)
                total = _add(total, step)
                if not step.more:
                    break
        self.rounds += 1
        self.total = _add(self.total, total)
        return total

    async def sweep(self) -> Pruned:
        """Drop every manifest no record holds; what went."""
        dropped = 0
        with self.index.track_contents() as touched:
            keep = await trio.to_thread.run_sync(self.pruning.referenced)
            start: bytes | None = b""
            while start is not None:
                gone, start = await trio.to_thread.run_sync(self.pruning.sweep, keep, touched, start, BATCH)
                dropped += gone
        self.total = _add(self.total, Pruned(manifests=dropped))
        return Pruned(manifests=dropped)


def _add(a: Pruned, b: Pruned) -> Pruned:
    return Pruned(
        a.history + b.history, a.tombstones + b.tombstones, a.views + b.views, a.manifests + b.manifests
    )
