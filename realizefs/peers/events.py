"""Events for the layers above the household: a peer connected, a peer disconnected.

`Publisher` fans each event out to every `Subscription`. Publishing never
waits: the household publishes from the task that changed the peer's state,
in the order the changes happened, so for one peer the events alternate
`Connected`, `Disconnected`, `Connected`... each `Disconnected` naming the
connection its `Connected` announced.

Backpressure: each subscription buffers up to `BUFFER` events (plus room for
its first snapshot). A subscriber that falls further behind is not waited
for, and its events are not silently dropped either: its subscription is
ended, and once it has read what was buffered it gets `Overflowed`. It then
subscribes again, which starts with a `Connected` for each peer connected at
that moment, the state to resync from (as a watch that fell behind relists).
Nothing is lost without the subscriber knowing, and memory stays bounded
whatever a reconnecting peer does.

All in the household's trio thread; nothing here blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import trio

from realizefs.peers.connection import PeerInfo

if TYPE_CHECKING:
    from realizefs.peers.connection import Connection

log = logging.getLogger(__name__)

BUFFER = 1024  # events a subscriber may fall behind by before its subscription is ended


@dataclass(frozen=True, eq=False)
class Connected:
    """*peer* is connected over *connection*, which carries requests both ways until `Disconnected`."""

    peer: PeerInfo
    connection: Connection


@dataclass(frozen=True, eq=False)
class Disconnected:
    """The *connection* to *peer* that a `Connected` announced is no longer the peer's; *reason* says why."""

    peer: PeerInfo
    connection: Connection
    reason: str


Event: TypeAlias = Connected | Disconnected


class Overflowed(Exception):
    """The subscriber fell more than `BUFFER` events behind: subscribe again to resync."""


class Subscription:
    """The events of a household from the moment of `Publisher.subscribe`; ``async for`` them.

    Iteration ends when the household stops; `Overflowed` if the subscriber fell behind.
    Use it as a context manager (or call `close`) to unsubscribe.
    """

    def __init__(self, publisher: Publisher, buffer: int) -> None:
        self._publisher = publisher
        self._send, self._receive = trio.open_memory_channel[Event](buffer)  # see the module doc
        self.overflowed = False

    def _offer(self, event: Event) -> bool:
        """Buffer *event*; False if this subscription has ended (or ends now, having overflowed)."""
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.overflowed = True
            self._send.close()
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _end(self) -> None:
        self._send.close()

    async def receive(self) -> Event:
        """The next event; `trio.EndOfChannel` once the household has stopped, `Overflowed`."""
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self.overflowed:
                raise Overflowed("the subscriber fell too far behind: subscribe again") from None
            raise

    def receive_nowait(self) -> Event:
        """The next event if one is buffered; `trio.WouldBlock` if none, as `receive` otherwise."""
        try:
            return self._receive.receive_nowait()
        except trio.EndOfChannel:
            if self.overflowed:
                raise Overflowed("the subscriber fell too far behind: subscribe again") from None
            raise

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._publisher.unsubscribe(self)
        self._send.close()
        self._receive.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Publisher:
    """The subscriptions to one household's events."""

    def __init__(self, buffer: int = BUFFER) -> None:
        self.buffer = buffer
        self._subscriptions: list[Subscription] = []
        self._ended = False

    def subscribe(self, connected: Iterable[Connected]) -> Subscription:
        """A subscription starting with *connected*, the peers connected now."""
        snapshot = list(connected)
        subscription = Subscription(self, self.buffer + len(snapshot))
        for event in snapshot:
            subscription._offer(event)
        if self._ended:
            subscription._end()
        else:
            self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)

    def publish(self, event: Event) -> None:
        """Hand *event* to every subscription, without waiting; end those that fell behind."""
        kept = []
        for subscription in self._subscriptions:
            if subscription._offer(event):
                kept.append(subscription)
            elif subscription.overflowed:
                log.warning("a subscriber to peer events fell %d events behind: ended", self.buffer)
        self._subscriptions = kept

    def end(self) -> None:
        """The household has stopped: every subscription ends once its events are read."""
        self._ended = True
        for subscription in self._subscriptions:
            subscription._end()
        self._subscriptions.clear()
