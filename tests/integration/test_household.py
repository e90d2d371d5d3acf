"""Several households in one process, over real TLS on loopback."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import trio

from realizefs.errors import RemoteError
from realizefs.peers.connection import Connection
from realizefs.peers.messages import PROTOCOL_VERSION
from tests.integration.support import FreezableProxy, Node, eventually, run_trio, start_node


def test_two_listening_peers_connect_once_and_talk_both_ways() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b")
        a.household.update([b.peer()])
        b.household.update([a.peer()])  # both dial: one connection must remain
        await eventually(lambda: a.state("b") == "connected" and b.state("a") == "connected")
        await trio.sleep(1.0)  # several redial periods: nothing flaps
        ab, ba = a.household.connection("b"), b.household.connection("a")
        assert ab is not None and ba is not None
        assert a.state("b") == "connected" and b.state("a") == "connected"
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
        b = await start_node(nursery, "b")
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

    run_trio(test)


async def _through_a_proxy(nursery: trio.Nursery) -> tuple[Node, Node, FreezableProxy]:
    """a dials b through a proxy the test can freeze or cut."""
    b = await start_node(nursery, "b")
    assert b.address is not None
    proxy = FreezableProxy(b.address)
    proxy_address = await nursery.start(proxy.run)
    a = await start_node(nursery, "a", listen=False)
    b.household.update([a.peer(address=False)])
    a.household.update([replace(b.peer(), address=proxy_address)])
    return a, b, proxy


def test_a_frozen_peer_is_detected_by_keepalive_and_reconnected() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a, _, proxy = await _through_a_proxy(nursery)
        await eventually(lambda: a.state("b") == "connected")
        first = a.household.connection("b")
        await eventually(lambda: first is not None and first.rtt is not None, what="a round-trip time")
        proxy.freeze()
        frozen_at = trio.current_time()
        await eventually(lambda: a.state("b") != "connected", timeout=5, what="keepalive to notice")
        waited = trio.current_time() - frozen_at
        assert 0.8 <= waited <= 2.5, waited  # FAST: timeout 1 s, keepalive 0.2 s
        status = {s.name: s for s in a.household.status()}["b"]
        assert status.last_error is not None and "keepalive" in status.last_error
        proxy.thaw()
        await eventually(lambda: a.state("b") == "connected", what="the reconnection")
        assert a.household.connection("b") is not first

    run_trio(test)


def test_a_reset_connection_is_noticed_at_once_and_redialed() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a, b, proxy = await _through_a_proxy(nursery)
        await eventually(lambda: a.state("b") == "connected" and b.state("a") == "connected")
        first = a.household.connection("b")
        await proxy.drop()
        dropped = trio.current_time()
        await eventually(lambda: a.state("b") != "connected" or a.household.connection("b") is not first)
        assert trio.current_time() - dropped < 0.5  # a reset, not a keepalive timeout
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
        latencies: list[float] = []

        async def bulk() -> None:
            async with conn.stream("bulk", {"size": 256 << 20}) as stream:
                async for _ in stream:
                    await trio.sleep(0)

        async with trio.open_nursery() as inner:
            inner.start_soon(bulk)
            await eventually(lambda: b.handler.sent > 8 << 20, what="the bulk transfer to start")
            for i in range(20):
                started = trio.current_time()
                assert await conn.request("echo", i) == i
                latencies.append(trio.current_time() - started)
            assert b.handler.sent < 256 << 20, "the requests waited for the whole transfer"
            inner.cancel_scope.cancel()
        assert max(latencies) < 1.0, latencies

    run_trio(test)


def test_leaving_a_stream_cancels_the_transfer_at_the_peer() -> None:
    async def test(nursery: trio.Nursery) -> None:
        _, b, conn = await _pair(nursery)
        async with conn.stream("bulk", {"size": 1 << 30}, window=1 << 20) as stream:
            async for _ in stream:
                break
        await eventually(lambda: b.handler.cancelled == ["a"], what="the peer to stop sending")
        sent = b.handler.sent
        await trio.sleep(0.3)
        assert b.handler.sent == sent < 4 << 20
        assert await conn.request("echo", "still up") == "still up"

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
        await trio.sleep(1.0)  # b keeps dialing: a refuses it now
        assert b.state("a").startswith("refused"), b.state("a")
        assert a.state("c") == "connected"

    run_trio(test)
