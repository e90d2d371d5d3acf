"""A household's events for the layers above, over real TLS on loopback.

A subscriber learns of each connection as it becomes a peer's (`Connected`,
with the peer's name, proven key and hello) and as it stops being so
(`Disconnected`, with the reason): the other side closing, a keepalive
timeout, a removal by a reload, a newer connection replacing it. For one
peer the events alternate, each `Disconnected` naming the connection its
`Connected` announced, however the connections come and go.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field, replace

import pytest
import trio

from realizefs.peers.connection import Connection
from realizefs.peers.events import Connected, Disconnected, Event
from realizefs.peers.household import Household
from realizefs.types import Address
from tests.integration.support import (
    FAST,
    FreezableProxy,
    Node,
    eventually,
    new_identity,
    run_trio,
    start_node,
    through_a_proxy,
)


@dataclass
class Log:
    """What one subscriber has read, and whether its subscription ended."""

    events: list[Event] = field(default_factory=list)
    ended: bool = False

    def of(self, name: str) -> list[Event]:
        return [e for e in self.events if e.peer.name == name]

    def kinds(self, name: str) -> list[str]:
        return [type(e).__name__ for e in self.of(name)]

    def connected(self, name: str) -> Connection | None:
        """The connection the last event for *name* announced, if it was a `Connected`."""
        events = self.of(name)
        return events[-1].connection if events and isinstance(events[-1], Connected) else None


async def subscribed(nursery: trio.Nursery, household: Household) -> Log:
    """A task reading *household*'s events into a `Log`, subscribed before this returns."""
    log = Log()

    async def read(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with household.subscribe() as events:
            task_status.started()
            async for event in events:
                log.events.append(event)
        log.ended = True

    await nursery.start(read)
    return log


def assert_alternating(events: list[Event]) -> None:
    """For each peer: Connected, Disconnected, Connected... each Disconnected for the last Connected."""
    live: dict[str, Connection] = {}
    for i, event in enumerate(events):
        name = event.peer.name
        if isinstance(event, Connected):
            assert name not in live, f"event {i}: a second Connected for {name} without a Disconnected"
            live[name] = event.connection
        else:
            assert live.pop(name, None) is event.connection, f"event {i}: Disconnected for another connection"


def test_connect_then_disconnect_when_the_other_side_stops() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b")
        a_log, b_log = await subscribed(nursery, a.household), await subscribed(nursery, b.household)
        b.household.update([a.peer(address=False)])
        a.household.update([b.peer()])
        await eventually(lambda: a_log.connected("b") and b_log.connected("a"), what="both Connected")
        [connected] = a_log.events
        assert isinstance(connected, Connected)
        peer = connected.peer
        assert (peer.name, peer.key, peer.outbound) == ("b", b.identity.public_key, True)
        assert (peer.store_id, peer.arenas) == (b"b".ljust(16, b"\0"), ("a",))
        assert peer.hello == b.household.hello
        assert connected.connection is a.household.connection("b")
        assert await connected.connection.request("echo", "hi") == "hi"
        [back] = b_log.events
        assert isinstance(back, Connected) and back.peer.key == a.identity.public_key
        assert not back.peer.outbound

        b.stop()
        await eventually(lambda: len(a_log.events) == 2 and b_log.ended, what="a Disconnected on each side")
        disconnected = a_log.events[1]
        assert isinstance(disconnected, Disconnected) and disconnected.connection is connected.connection
        assert disconnected.reason and "keepalive" not in disconnected.reason, disconnected.reason
        assert b_log.kinds("a") == ["Connected", "Disconnected"]  # before its subscription ended
        assert_alternating(a_log.events)

    run_trio(test)


def test_disconnect_by_keepalive_timeout() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a, _, proxy = await through_a_proxy(nursery)
        log = await subscribed(nursery, a.household)
        await eventually(lambda: log.connected("b"), what="Connected")
        proxy.freeze()
        await eventually(lambda: len(log.events) >= 2, what="Disconnected")
        connected, disconnected = log.events[:2]
        assert isinstance(disconnected, Disconnected) and disconnected.connection is connected.connection
        assert "keepalive timeout" in disconnected.reason, disconnected.reason

    run_trio(test)


def test_removal_by_a_reload_is_published_at_once_and_a_subscription_starts_with_the_connected() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b")
        b.household.update([a.peer(address=False)])
        a.household.update([b.peer()])
        await eventually(lambda: a.state("b") == "connected")
        live = a.household.connection("b")
        with a.household.subscribe() as events:
            first = events.receive_nowait()  # the snapshot: no waiting
            assert isinstance(first, Connected) and first.connection is live and first.peer.name == "b"
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()
            a.household.update([])
            gone = events.receive_nowait()  # published by `update` itself, before any task ran
            assert isinstance(gone, Disconnected) and gone.connection is live
            assert gone.reason == "removed from the household"
            await eventually(lambda: b.state("a") != "connected", what="b to see a go")
            with pytest.raises(trio.WouldBlock):
                events.receive_nowait()  # the connection's end publishes nothing more

    run_trio(test)


def test_a_newer_connection_replacing_the_live_one_is_a_disconnect_then_a_connect() -> None:
    """b still holds a's first connection (frozen, and b's timeout is long) when a's second arrives."""

    async def test(nursery: trio.Nursery) -> None:
        a, b, proxy = await through_a_proxy(nursery, b_network=replace(FAST, timeout=3600.0))
        a_log, b_log = await subscribed(nursery, a.household), await subscribed(nursery, b.household)
        await eventually(lambda: a_log.connected("b") and b_log.connected("a"), what="both Connected")
        first = b_log.connected("a")
        proxy.freeze()  # a's goodbye for the first connection never reaches b
        a.household.update([b.peer()])  # the same b at another address: a redials, directly
        await eventually(lambda: len(b_log.events) == 3, what="b to take the new connection")
        assert b_log.kinds("a") == ["Connected", "Disconnected", "Connected"]
        replaced = b_log.events[1]
        assert isinstance(replaced, Disconnected) and replaced.connection is first
        assert replaced.reason == "replaced by a newer connection"
        assert b_log.events[2].connection is b.household.connection("a") is not first
        await eventually(lambda: len(a_log.events) == 3, what="a's new connection")
        assert a_log.kinds("b") == ["Connected", "Disconnected", "Connected"]
        assert isinstance(a_log.events[1], Disconnected)
        assert a_log.events[1].reason == "its configuration changed"
        assert_alternating(a_log.events)
        assert_alternating(b_log.events)

    run_trio(test)


# A drop may cut a connection in its handshake or hello, which the household logs as refused.
def test_events_alternate_per_peer_under_a_reconnect_storm() -> None:
    rounds = 8

    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b")
        assert a.address is not None and b.address is not None
        to_b, to_a = FreezableProxy(b.address), FreezableProxy(a.address)
        b_via = await nursery.start(to_b.run)
        a_via = await nursery.start(to_a.run)
        a_log, b_log = await subscribed(nursery, a.household), await subscribed(nursery, b.household)
        a.household.update([replace(b.peer(), address=b_via)])  # both dial: duplicates happen
        b.household.update([replace(a.peer(), address=a_via)])
        late: Log | None = None

        def anew(old: Connection | None) -> bool:
            live = a.household.connection("b")
            return live is not None and live is not old and b.state("a") == "connected"

        previous: Connection | None = None
        for i in range(rounds):
            await eventually(functools.partial(anew, previous), what=f"round {i}: connected again")
            previous = a.household.connection("b")
            if i == rounds // 2:
                late = await subscribed(nursery, a.household)  # joins mid-storm
            await to_b.drop()
            await to_a.drop()
        await eventually(lambda: a.state("b") == "connected" and b.state("a") == "connected")
        await eventually(
            lambda: (
                a_log.connected("b") is a.household.connection("b")
                and b_log.connected("a") is b.household.connection("a")
            ),
            what="the logs to reach the live connections",
        )
        assert late is not None
        for log in (a_log, b_log, late):
            assert_alternating(log.events)
        assert a_log.kinds("b").count("Connected") >= rounds
        assert late.events[0].peer.name == "b"

    run_trio(test)


def test_a_connection_cut_during_the_handshake_is_no_refusal(caplog: pytest.LogCaptureFixture) -> None:
    """A peer that closes the connection half-way (stopping, or a network cut) refused
    nothing: its state says what happened, and no warning is logged either way."""

    async def test(nursery: trio.Nursery) -> None:
        cutter = await trio.open_tcp_listeners(0, host="127.0.0.1")
        cut_address = Address("127.0.0.1", cutter[0].socket.getsockname()[1])
        accepted = 0

        async def cut(stream: trio.SocketStream) -> None:
            nonlocal accepted
            accepted += 1
            await trio.aclose_forcefully(stream)  # before the server's half of the handshake

        nursery.start_soon(functools.partial(trio.serve_listeners, cut, cutter))
        b = new_identity()
        a = await start_node(nursery, "a", [Node.entry("b", b, cut_address)])
        await eventually(lambda: accepted >= 2, what="two dials cut")
        [status] = a.household.status()
        assert status.state == "disconnected" and "closed during the TLS handshake" in (
            status.last_error or ""
        )
        assert a.address is not None
        for _ in range(2):  # and inbound: a client that connects and leaves
            client = await trio.open_tcp_stream(a.address.host, a.address.port)
            await client.aclose()
        await eventually(
            lambda: sum("a connection from" in r.getMessage() for r in caplog.records) >= 2,
            what="the cut inbound connections logged",
        )
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "refused" in r.getMessage()]

    caplog.set_level(logging.DEBUG, logger="realizefs")
    run_trio(test)
