"""Several households in one process, over real TLS on loopback."""

from __future__ import annotations

import logging

import pytest
import trio

from realizefs.errors import RemoteError
from realizefs.peers.connection import DEFAULT_WINDOW, Connection
from realizefs.peers.messages import PROTOCOL_VERSION
from tests.integration.support import (
    FAST,
    FreezableProxy,
    Node,
    eventually,
    run_trio,
    start_node,
    through_a_proxy,
)
from tests.support import reserve_port

HOUSEHOLD = "realizefs.peers.household"


async def keepalive_rounds(n: int, *pairs: tuple[Node, str], timeout: float = 60.0) -> list[Connection]:
    """Wait until each (node, peer) has had *n* keepalive round trips on one same connection.

    Each pong sets a new `Connection.rtt` object: polling sees at most as many rounds as
    were made, and pings are `keepalive` seconds apart, so *n* rounds take at least
    ``(n - 1) * keepalive`` seconds however fast the machine. A connection replaced or
    lost starts its count over. The connections, once each has had its rounds.
    """
    seen: list[tuple[Connection | None, object, int]] = [(None, None, 0)] * len(pairs)

    def counted() -> bool:
        for i, (node, name) in enumerate(pairs):
            conn = node.household.connection(name)
            last, rtt, rounds = seen[i]
            if conn is not last:
                seen[i] = (conn, conn.rtt if conn else None, 0)
            elif conn is not None and conn.rtt is not None and conn.rtt is not rtt:
                seen[i] = (conn, conn.rtt, rounds + 1)
        return all(rounds >= n for _, _, rounds in seen)

    await eventually(counted, timeout, f"{n} keepalive rounds on one connection")
    return [conn for conn, _, _ in seen if conn is not None]


async def frozen_until_dropped(node: Node, name: str, proxy: FreezableProxy) -> tuple[float, float]:
    """Freeze *proxy* and wait until *node* drops peer *name*; two `trio.current_time` instants.

    The first is before *node* last read anything from the peer: the start of the poll
    before the one that saw ``bytes_in`` last grow (bytes are counted before their message
    is marked received), so the proxy freezes once a first growth has been seen. The
    second is after the drop. Their difference bounds from above the silence it waited for.
    """

    def status() -> tuple[int, str]:
        s = {s.name: s for s in node.household.status()}[name]
        return s.bytes_in, s.state

    previous = trio.current_time()
    bytes_in, _ = status()
    received_after: float | None = None
    with trio.fail_after(60):
        while True:
            started = trio.current_time()
            now_in, state = status()
            if now_in != bytes_in:
                bytes_in, received_after = now_in, previous
                proxy.freeze()
            if state != "connected":
                assert proxy.frozen and received_after is not None, f"dropped before the freeze: {state}"
                return received_after, trio.current_time()
            previous = started
            await trio.sleep(0.01)  # a poll's interval, not a condition


def test_two_listening_peers_connect_once_and_talk_both_ways(caplog: pytest.LogCaptureFixture) -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b")
        a.household.update([b.peer()])
        b.household.update([a.peer()])  # both dial: one connection must remain
        await eventually(lambda: a.state("b") == "connected" and b.state("a") == "connected")
        # Nothing flaps: one connection outlives the keepalive timeout and several redial periods.
        rounds = int(2 * max(FAST.timeout, FAST.reconnect_max) / FAST.keepalive) + 1
        ab, ba = await keepalive_rounds(rounds, (a, "b"), (b, "a"))
        assert a.state("b") == "connected" and b.state("a") == "connected"
        assert not [r for r in caplog.records if r.getMessage().startswith("disconnected from peer")]
        connected = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connected to peer")]
        assert len(connected) <= 4, connected  # each side: its own dial and the other's, at most
        local = ab.transport.stream
        assert ab.transport.dialed != ba.transport.dialed
        assert await ab.request("echo", {"x": [1, b"2"]}) == {"x": [1, b"2"]}
        assert await ba.request("echo", "back") == "back"
        assert ("a", "echo") in b.handler.served and ("b", "echo") in a.handler.served
        try:
            await ab.request("nope")
        except RemoteError as exc:
            assert exc.code == "unknown-method"
        else:
            raise AssertionError("an unknown method must fail")
        assert a.household.connection("b") is ab and ab.transport.stream is local

    with caplog.at_level(logging.INFO, logger=HOUSEHOLD):
        run_trio(test)


def test_a_deaf_peer_is_reached_over_the_connection_it_opens() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        deaf = await start_node(nursery, "deaf", [a.peer()], listen=False)
        a.household.update([deaf.peer(address=False)])
        await eventually(lambda: a.state("deaf") == "connected")
        back = a.household.connection("deaf")
        assert back is not None and not back.transport.dialed
        assert await back.request("echo", b"from a") == b"from a"
        assert deaf.handler.served == [("a", "echo")]
        status = {s.name: s for s in a.household.status()}["deaf"]
        assert status.address is None and status.direction == "inbound"
        assert status.bytes_in > 0 and status.bytes_out > 0

    run_trio(test)


def test_a_restarted_peer_is_reconnected() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b", port=port)  # the port stays b's while b is down
        a.household.update([b.peer()])
        b.household.update([a.peer(address=False)])
        await eventually(lambda: a.state("b") == "connected")
        assert b.address is not None
        b.stop()
        for listener in b.listeners:
            await listener.aclose()
        await eventually(lambda: a.state("b") != "connected", what="the disconnection")
        b2 = await start_node(nursery, "b", [a.peer(address=False)], identity=b.identity, port=b.address.port)
        await eventually(lambda: a.state("b") == "connected" and b2.state("a") == "connected")
        conn = a.household.connection("b")
        assert conn is not None and await conn.request("echo", 1) == 1

    with reserve_port() as reservation:
        port = reservation.getsockname()[1]
        run_trio(test)


def test_a_frozen_peer_is_detected_by_keepalive_and_reconnected() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a, _, proxy = await through_a_proxy(nursery)
        await eventually(lambda: a.state("b") == "connected")
        first = a.household.connection("b")
        await eventually(lambda: first is not None and first.rtt is not None, what="a round-trip time")
        received_after, dropped_by = await frozen_until_dropped(a, "b", proxy)
        assert dropped_by - received_after >= FAST.timeout, (received_after, dropped_by)  # not sooner
        status = {s.name: s for s in a.household.status()}["b"]
        assert status.last_error is not None and "keepalive" in status.last_error
        proxy.thaw()
        await eventually(lambda: a.state("b") == "connected", what="the reconnection")
        assert a.household.connection("b") is not first

    run_trio(test)


def test_a_reset_connection_is_noticed_at_once_and_redialed() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a, b, proxy = await through_a_proxy(nursery)
        await eventually(lambda: a.state("b") == "connected" and b.state("a") == "connected")
        first = a.household.connection("b")
        assert first is not None
        await proxy.drop()
        await eventually(lambda: first.closed_reason is not None, what="a to notice the reset")
        reason = first.closed_reason or ""
        assert "keepalive" not in reason, reason  # the reset, not a timeout
        await eventually(lambda: a.state("b") == "connected" and a.household.connection("b") is not first)

    run_trio(test)


async def _pair(nursery: trio.Nursery) -> tuple[Node, Node, Connection]:
    """Two connected nodes, and a's connection to b."""
    a = await start_node(nursery, "a")
    b = await start_node(nursery, "b")
    a.household.update([b.peer()])
    b.household.update([a.peer(address=False)])
    await eventually(lambda: a.state("b") == "connected")
    conn = a.household.connection("b")
    assert conn is not None
    return a, b, conn


def test_a_stream_never_runs_ahead_of_its_window() -> None:
    window, part = 1 << 20, 256 << 10

    async def test(nursery: trio.Nursery) -> None:
        _, b, conn = await _pair(nursery)
        consumed = 0
        ahead = 0
        async with conn.stream("bulk", {"size": 16 << 20, "part": part}, window=window) as stream:
            async for data in stream:
                consumed += len(data)
                await trio.sleep(0.002)  # a slow reader
                ahead = max(ahead, b.handler.sent - consumed)
            assert stream.result == 16 << 20
        assert consumed == 16 << 20
        assert ahead <= window + part, ahead

    run_trio(test)


def test_small_requests_pass_a_bulk_transfer() -> None:
    async def test(nursery: trio.Nursery) -> None:
        _, b, conn = await _pair(nursery)
        passed: list[int] = []  # bulk bytes b sent while each request was under way

        async def bulk() -> None:
            async with conn.stream("bulk", {"size": 256 << 20}) as stream:
                async for _ in stream:
                    await trio.sleep(0)

        async with trio.open_nursery() as inner:
            inner.start_soon(bulk)
            await eventually(lambda: b.handler.sent > 8 << 20, what="the bulk transfer to start")
            for i in range(20):
                sent = b.handler.sent
                assert await conn.request("echo", i) == i
                passed.append(b.handler.sent - sent)
            assert b.handler.sent < 256 << 20, "the requests waited for the whole transfer"
            inner.cancel_scope.cancel()
        # While a request waits, b sends at most its credit (the window and a part) before it
        # reads the request, one part before its answer, and as much again while a reads the
        # data ahead of the answer: bounded by bytes, however slow the machine.
        assert max(passed) <= 3 * DEFAULT_WINDOW, passed

    run_trio(test)


def test_leaving_a_stream_cancels_the_transfer_at_the_peer() -> None:
    async def test(nursery: trio.Nursery) -> None:
        _, b, conn = await _pair(nursery)
        async with conn.stream("bulk", {"size": 1 << 30}, window=1 << 20) as stream:
            async for _ in stream:
                break
        await eventually(lambda: b.handler.cancelled == ["a"], what="the peer to stop sending")
        sent = b.handler.sent
        assert await conn.request("echo", "still up") == "still up"  # b has read on since
        assert b.handler.sent == sent < 4 << 20

    run_trio(test)


@pytest.mark.expect_log(r"protocol version \d+ is not supported")
def test_another_protocol_version_is_refused_with_the_reason_on_both_sides(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        future = await start_node(nursery, "future", [a.peer()], listen=False, version=PROTOCOL_VERSION + 1)
        a.household.update([future.peer(address=False)])
        await eventually(lambda: a.state("future").startswith("refused"))
        assert f"protocol version {PROTOCOL_VERSION + 1} is not supported" in a.state("future")
        # In one process both sides decode alike, so "future" accepts a's hello and learns
        # the reason from a's goodbye; a real newer peer refuses ours the same way a does.
        await eventually(lambda: future.state("a") != "connected")
        status = {s.name: s for s in future.household.status()}["a"]
        assert status.last_error is not None and "is not supported" in status.last_error
        assert a.handler.served == [] and future.handler.served == []

    with caplog.at_level(logging.WARNING, logger="realizefs.peers"):
        run_trio(test)
    assert any("protocol version" in r.getMessage() for r in caplog.records)


@pytest.mark.expect_log(r"^peer c \(.*\): protocol error: not a msgpack message")
def test_malformed_input_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b", [a.peer()], listen=False)
        c = await start_node(nursery, "c", [a.peer()], listen=False)
        a.household.update([b.peer(address=False), c.peer(address=False)])
        await eventually(lambda: a.state("b") == "connected" and a.state("c") == "connected")
        to_a = c.household.connection("a")
        assert to_a is not None
        async with to_a.transport._send_lock:  # between c's own frames (its keepalives)
            await to_a.transport.stream.send_all(b"\x00\x00\x00\x05\xc1garbage")  # 0xc1: never msgpack
        await eventually(lambda: a.state("c") != "connected", what="a to drop c")
        status = {s.name: s for s in a.household.status()}["c"]
        assert status.last_error is not None and "protocol error" in status.last_error
        ab = a.household.connection("b")
        assert ab is not None and await ab.request("echo", "fine") == "fine"
        assert a.handler.served == []

    with caplog.at_level(logging.WARNING, logger="realizefs.peers"):
        run_trio(test)
    assert [r for r in caplog.records if "protocol error" in r.getMessage()]


@pytest.mark.expect_log(r"^refused ")
def test_reloading_adds_and_removes_peers() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b")
        c = await start_node(nursery, "c")
        b.household.update([a.peer()])
        c.household.update([a.peer()])
        a.household.update([b.peer()])
        await eventually(lambda: a.state("b") == "connected")
        assert c.state("a") != "connected"
        a.household.update([b.peer(), c.peer()])  # c added
        await eventually(lambda: a.state("c") == "connected" and c.state("a") == "connected")
        a.household.update([c.peer()])  # b removed
        await eventually(lambda: b.state("a") != "connected", what="b to be disconnected")
        assert [s.name for s in a.household.status()] == ["c"]
        assert a.household.connection("b") is None
        await eventually(lambda: b.state("a").startswith("refused"), what="b to redial and a to refuse it")
        assert a.state("c") == "connected"

    run_trio(test)
