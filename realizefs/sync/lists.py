"""File lists: every peer follows each connected peer's records of each arena both serve.

This peer serves ``follow {arena, after}``: a streamed answer that never ends
on its own, each part a batch of its records numbered after *after* in the
arena's sequence (`Index.changes`; from 0 a full index), then each new one
as the index commits it (woken by `Index.watch`, batched: what committed
while a batch was being sent goes in the next). For every `Connected` peer
and every arena both serve (its hello lists its arenas), it asks the peer to
``follow`` from where it left off (`Index.following`: from 0 if the peer is
new or its store id changed) and takes each part in one transaction
(`Index.receive`), which keeps the peer's view, updates this peer's view by
version vector, and numbers what it applied so that peers following this one
take it too (a star's hub relays).

Acknowledgements (for `realizefs.store.pruning`): the *after* a peer follows
from says it took everything numbered up to it, and after each part it took a
follower says so with ``ack {arena, seq}`` (one request at a time, the last
number only: acks merge while one is on its way); this peer keeps the highest
per peer and arena (`Index.acknowledge`). A peer that asks to follow from more
than the bound (*bound*, ``consensus.history_bound``) behind the arena's last
number is answered ``behind``: it follows from 0, a full index (which still holds
every tombstone it did not acknowledge: those are never pruned before), its
view of this peer kept and refreshed by it. Transactions run in worker threads; the
trio thread only moves bytes. A part that is not a valid batch, or a record
the index refuses, closes that peer's connection with the reason, and nothing
of the part is taken. *on_change* hears of the paths each part changed in
this peer's view (the mount's caches are invalidated there).

`report` says, per connected peer and arena, how far each side's following
has come (for ``.realize/peers``): what this peer took of the peer's records
(the last number, and how many since it connected), and what it sent the
peer of its own (the last number, how many since it connected, how many are
numbered after it: not sent yet). The protocol acknowledges only at
connection, by the number a follower asks to continue after; how many
records a peer has that this peer has not taken is not carried (a peer's
latest number is not sent): the peer's own report shows it, as not sent yet.

Runs in the daemon's trio thread; one task per served stream, one per followed
(peer, arena), ended with the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import trio

from realizefs.errors import ConnectionLost, RemoteError, StoreError
from realizefs.peers.connection import Connection, PeerInfo, Reply
from realizefs.peers.events import Connected, Disconnected, Overflowed
from realizefs.peers.household import Household
from realizefs.peers.messages import Value
from realizefs.peers.methods import Method, Served
from realizefs.peers.schema import Int, Record, Str
from realizefs.store.index import Accepted, Index, Outcome
from realizefs.sync import wire

log = logging.getLogger(__name__)

BATCH = 2000  # records read from the index per transaction
MAX_ARENA_NAME = 255


@dataclass(frozen=True)
class Follow:
    arena: str
    after: int


FOLLOW = Method("follow", Record(Follow, {"arena": Str(MAX_ARENA_NAME, low=1), "after": Int(0)}))


@dataclass(frozen=True)
class Ack:
    arena: str
    seq: int


ACK = Method("ack", Record(Ack, {"arena": Str(MAX_ARENA_NAME, low=1), "seq": Int(0)}))

Changed = Callable[[str, Sequence[Accepted]], None]


@dataclass(eq=False)
class _Progress:
    """One side of the following of one arena on one connection: the last number of the
    sequence taken (or sent), how many records since it began, and where it began."""

    last: int
    records: int = 0
    began: int = 0  # where it began: the number asked to continue after
    acknowledged: int = 0  # for a stream we serve: the last number the peer acknowledged taking


class FileLists:
    """Serves this peer's records and follows every connected peer's, for *arenas* (a callable:
    the arenas served now, after a reload too). *peer_id* turns a peer's key into its id in
    version vectors."""

    def __init__(
        self,
        index: Index,
        arenas: Callable[[], Sequence[str]],
        peer_id: Callable[[bytes], bytes],
        on_change: Changed | None = None,
        on_news: Callable[[], None] | None = None,
        bound: Callable[[], int] = lambda: 1 << 62,
    ) -> None:
        self.index = index
        self.bound = bound  # how far behind a follower may resume; beyond, a full index
        self.arenas = arenas
        self.peer_id = peer_id
        self.on_change = on_change
        self.on_news = on_news  # a peer connected, or told of a change this peer did not hold
        self._generation = 0
        self._grown = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._followers: dict[Connection, trio.CancelScope] = {}
        self._connected: dict[bytes, tuple[PeerInfo, Connection]] = {}  # peer id -> live connection
        self._taking: dict[tuple[bytes, str], _Progress] = {}  # (peer key, arena) -> what we took
        self._sending: dict[tuple[bytes, str], _Progress] = {}  # (peer key, arena) -> what we sent
        index.watch(self._committed)

    def connected(self) -> dict[bytes, tuple[PeerInfo, Connection]]:
        """The peers connected now, by their id in version vectors."""
        return self._connected

    def served(self) -> list[Served[Any]]:
        return [Served(FOLLOW, self._serve), Served(ACK, self._serve_ack)]

    # ------------------------------------------------------------ being followed

    def _committed(self) -> None:
        """After any commit of the index, in the thread that committed."""
        token = self._token
        if token is not None:
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(self._wake)

    def _wake(self) -> None:
        self._generation += 1
        self._grown.set()
        self._grown = trio.Event()

    async def _serve(self, peer: PeerInfo, args: Follow, reply: Reply) -> Value:
        if args.arena not in self.arenas():
            raise RemoteError("no-such-arena", f"this peer serves no arena {args.arena!r}")
        if not reply.streams:
            raise RemoteError("not-a-stream", "follow answers with a stream")
        after = args.after
        log.debug("peer %s follows %s from %d", peer.name, args.arena, after)
        last = await trio.to_thread.run_sync(self._acknowledge, args.arena, peer, after)
        if after and last - after > self.bound():
            log.info("peer %s is %d behind in %s: it takes a full index", peer.name, last - after, args.arena)
            raise RemoteError("behind", f"{last - after} records behind in {args.arena!r}: follow from 0")
        key = (peer.key, args.arena)
        progress = self._sending[key] = _Progress(after, began=after, acknowledged=after)
        try:
            while True:
                generation = self._generation
                told = await trio.to_thread.run_sync(self.index.changes, args.arena, after, BATCH)
                if not told:
                    while self._generation == generation:
                        await self._grown.wait()
                    continue
                for part in wire.encode(told):
                    await reply.send(part)
                after = progress.last = told[-1].seq
                progress.records += len(told)
        finally:
            if self._sending.get(key) is progress:
                del self._sending[key]

    async def _serve_ack(self, peer: PeerInfo, args: Ack, reply: Reply) -> Value:
        if args.arena not in self.arenas():
            raise RemoteError("no-such-arena", f"this peer serves no arena {args.arena!r}")
        last = await trio.to_thread.run_sync(self._acknowledge, args.arena, peer, args.seq)
        if args.seq > last:
            raise RemoteError("bad-ack", f"{args.arena!r} has no record {args.seq} yet (last {last})")
        if (progress := self._sending.get((peer.key, args.arena))) is not None:
            progress.acknowledged = max(progress.acknowledged, args.seq)
        return None

    def _acknowledge(self, arena: str, peer: PeerInfo, seq: int) -> int:
        """Keep *peer*'s acknowledgement of *arena* up to *seq* (if any such record was numbered);
        the arena's last number. In a worker thread."""
        last = self.index.last_told(self.index.arena_root(arena))
        if 0 < seq <= last:
            self.index.acknowledge(arena, self.peer_id(peer.key), seq)
        return last

    # ------------------------------------------------------------ following

    async def run(self, household: Household) -> None:
        """Follow each peer while it is connected, until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    with household.subscribe() as events:
                        async for event in events:
                            if isinstance(event, Connected):
                                self._connected[self.peer_id(event.peer.key)] = (event.peer, event.connection)
                                self._start(nursery, event.peer, event.connection)
                            elif isinstance(event, Disconnected):
                                pid = self.peer_id(event.peer.key)
                                if self._connected.get(pid, (None, None))[1] is event.connection:
                                    del self._connected[pid]
                                self._stop(event.connection)
                    return
                except Overflowed:
                    log.warning("peer events overflowed: following the connected peers again")

    def _start(self, nursery: trio.Nursery, peer: PeerInfo, connection: Connection) -> None:
        if connection in self._followers:
            return  # a resubscription's snapshot: already followed
        scope = trio.CancelScope()
        self._followers[connection] = scope
        shared = [arena for arena in self.arenas() if arena in peer.arenas]
        nursery.start_soon(self._follow_peer, peer, connection, shared, scope)

    def _stop(self, connection: Connection) -> None:
        scope = self._followers.pop(connection, None)
        if scope is not None:
            scope.cancel()

    async def _follow_peer(
        self, peer: PeerInfo, connection: Connection, arenas: list[str], scope: trio.CancelScope
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for arena in arenas:
                    nursery.start_soon(self._follow, peer, connection, arena)
        self._followers.pop(connection, None)

    async def _follow(self, peer: PeerInfo, connection: Connection, arena: str) -> None:
        pid = self.peer_id(peer.key)
        after = await trio.to_thread.run_sync(self.index.following, arena, pid, peer.store_id)
        log.info("following %s's %s from %d", peer.name, arena, after)
        if self.on_news is not None:
            self.on_news()  # a peer back: what failed for want of it is tried again
        key = (peer.key, arena)
        progress = self._taking[key] = _Progress(after, began=after)
        try:
            try:
                await self._take(peer, connection, arena, progress)
            except RemoteError as exc:
                if exc.code != "behind":
                    raise
                log.info("%s's %s: too far behind (%s); taking a full index", peer.name, arena, exc.message)
                after = await trio.to_thread.run_sync(self.index.following, arena, pid, peer.store_id, True)
                progress.last = progress.began = after
                await self._take(peer, connection, arena, progress)
        except RemoteError as exc:
            log.warning("peer %s does not let us follow %s: %s", peer.name, arena, exc)
        except (ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # its `Disconnected` ends the others
        except (wire.BadBatch, StoreError) as exc:
            reason = f"a malformed file list: {exc}"
            log.warning("peer %s sent %s; disconnecting", peer.name, reason)
            await connection.close(reason)
        finally:
            if self._taking.get(key) is progress:
                del self._taking[key]

    async def report(self) -> dict[bytes, dict[str, dict[str, Any]]]:
        """Per peer key, per arena followed either way on its live connection: ``taken`` (the last
        number of its sequence taken, ``records`` taken since it connected) and ``sent`` (the
        last of ours sent, ``records`` since, ``acknowledged``: the last number it acknowledged
        taking, ``not_sent``: ours numbered after the last sent, ``last``: our latest number);
        either is None while that way is not followed. Counting runs in a worker thread."""
        taking, sending = dict(self._taking), dict(self._sending)

        def count() -> dict[tuple[bytes, str], tuple[int, int]]:
            return {key: self.index.told_after(key[1], p.last) for key, p in sending.items()}

        counted = await trio.to_thread.run_sync(count)
        out: dict[bytes, dict[str, dict[str, Any]]] = {}
        for (peer, arena), p in taking.items():
            out.setdefault(peer, {}).setdefault(arena, {"taken": None, "sent": None})["taken"] = {
                "last": p.last,
                "records": p.records,
            }
        for (peer, arena), p in sending.items():
            not_sent, last = counted[peer, arena]
            out.setdefault(peer, {}).setdefault(arena, {"taken": None, "sent": None})["sent"] = {
                "last": p.last,
                "records": p.records,
                "acknowledged": p.acknowledged,
                "not_sent": not_sent,
                "latest": last,
            }
        return out

    async def _take(self, peer: PeerInfo, connection: Connection, arena: str, progress: _Progress) -> None:
        """Follow *peer*'s *arena* from *progress*'s last number, taking each part (counted in
        *progress*), and acknowledge what was taken."""
        pid = self.peer_id(peer.key)
        after = progress.last
        taken = trio.Event()
        acked = [after, after]  # [taken, acknowledged]

        async def acknowledge() -> None:
            nonlocal taken
            while True:
                await taken.wait()
                taken = trio.Event()
                if acked[0] > acked[1]:
                    seq = acked[0]
                    try:
                        await connection.request("ack", {"arena": arena, "seq": seq})
                    except RemoteError as exc:
                        log.info("peer %s takes no acknowledgement of %s: %s", peer.name, arena, exc)
                        return
                    except (ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the stream ends too
                    acked[1] = seq

        failed: Exception | None = None  # raised as itself, not in the nursery's group
        async with trio.open_nursery() as nursery:
            nursery.start_soon(acknowledge)
            try:
                async with connection.stream("follow", {"arena": arena, "after": after}) as parts:
                    async for part in parts:
                        told = wire.decode(part, after)
                        outcomes = await trio.to_thread.run_sync(
                            self.index.receive, arena, pid, peer.store_id, told
                        )
                        after = acked[0] = progress.last = told[-1].seq
                        progress.records += len(told)
                        taken.set()
                        self._report(peer, arena, outcomes)
            except Exception as exc:
                failed = exc
            nursery.cancel_scope.cancel()
        if failed is not None:
            raise failed

    def _report(self, peer: PeerInfo, arena: str, outcomes: list[Accepted]) -> None:
        conflicts = [o for o in outcomes if o.outcome is Outcome.CONFLICT]
        for o in conflicts:
            log.info("%s: %s from %s is concurrent with ours", arena, b"/".join(o.told.path), peer.name)
        changed = [o for o in outcomes if o.outcome is Outcome.APPLIED]
        if changed and self.on_change is not None:
            self.on_change(arena, changed)
        if self.on_news is not None and any(o.outcome is not Outcome.STALE for o in outcomes):
            self.on_news()
