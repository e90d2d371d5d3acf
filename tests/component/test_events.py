"""The fan-out of peer events: never waiting on a subscriber, never losing an event unannounced."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from realizefs.peers.connection import Connection, PeerInfo, Timing
from realizefs.peers.events import Connected, Disconnected, Event, Overflowed, Publisher
from realizefs.peers.messages import Hello
from realizefs.peers.methods import Methods
from realizefs.peers.transport import Transport

TIMING = Timing(keepalive=10.0, timeout=30.0, hello_timeout=5.0)


def connection(name: str) -> tuple[PeerInfo, Connection]:
    """A connection object (never opened: events only carry it) and its peer."""
    stream, _ = trio.testing.memory_stream_pair()
    transport = Transport(stream, name.encode() * 32, "test", dialed=True)
    info = PeerInfo(name, transport.peer_key, Hello(name, b"s" * 16, ()), "test", outbound=True)
    return info, Connection(transport, name, Hello("us", b"u" * 16, ()), Methods(), TIMING)


def flaps(n: int) -> list[Event]:
    """*n* connections to one peer, each connected then disconnected."""
    events: list[Event] = []
    for _ in range(n):
        info, conn = connection("p")
        events += [Connected(info, conn), Disconnected(info, conn, "closed")]
    return events


@pytest.mark.expect_log(r"fell 4 events behind")
def test_a_slow_subscriber_is_ended_not_waited_for_and_told_once_it_has_read() -> None:
    async def main() -> None:
        publisher = Publisher(buffer=4)
        slow, keeping_up = publisher.subscribe([]), publisher.subscribe([])
        events = flaps(5)
        for event in events:  # publishing never waits, whoever reads or not
            publisher.publish(event)
            assert await keeping_up.receive() is event
        assert [await slow.receive() for _ in range(4)] == events[:4]  # what it had, in order
        with pytest.raises(Overflowed):
            await slow.receive()
        publisher.end()
        with pytest.raises(trio.EndOfChannel):
            await keeping_up.receive()

    trio.run(main)


def test_a_subscription_starts_with_its_snapshot_and_ends_with_the_household() -> None:
    async def main() -> None:
        publisher = Publisher(buffer=1)
        info, conn = connection("q")
        snapshot = [Connected(*connection("p")), Connected(*connection("r"))]
        subscription = publisher.subscribe(snapshot)  # a snapshot larger than the buffer fits
        publisher.publish(Connected(info, conn))
        publisher.end()
        seen = [event async for event in subscription]
        assert seen[:2] == snapshot and isinstance(seen[2], Connected) and seen[2].connection is conn
        late = publisher.subscribe([])  # after the end: ended at once
        assert [event async for event in late] == []

    trio.run(main)
