"""Bulk lanes between households, over real TLS on loopback (`realizefs.peers.bulk`).

"a" listens; "b" dials it. A household given *chunks* (a dict's ``get`` here,
served in the lane's thread) issues tokens on the connections it accepts and
opens lanes on those it dials. Hand-made lanes use `bulk.dial_lane`, in a
worker thread, with the keys and tokens each test chooses.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import blake3
import pytest
import trio
import trio.testing

from realizefs.errors import ConnectionLost, RemoteError
from realizefs.peers import bulk, tls
from realizefs.peers.bulk import BadChunk, Fetcher, Server
from realizefs.peers.connection import Connection
from realizefs.peers.frames import encode_frame
from realizefs.peers.identity import Identity
from realizefs.peers.messages import Goodbye, Ping, encode
from realizefs.peers.transport import Refused
from tests.integration.support import FAST, Node, eventually, new_identity, run_trio, start_node

CHUNKS = {blake3.blake3(data).digest(): data for data in (os.urandom(64 << 10) for _ in range(48))}
HASHES = list(CHUNKS)


def lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bulk lane")]


async def pair(
    nursery: trio.Nursery,
    a_chunks: Callable[[bytes], bytes | None] | None = CHUNKS.get,
    b_chunks: Callable[[bytes], bytes | None] | None = CHUNKS.get,
) -> tuple[Node, Node]:
    """a (listening) and b (dialing a), connected."""
    a = await start_node(nursery, "a", chunks=a_chunks)
    b = await start_node(nursery, "b", [a.peer()], listen=False, chunks=b_chunks)
    a.household.update([b.peer(address=False)])
    await eventually(lambda: a.state("b") == "connected" and b.state("a") == "connected", what="connected")
    return a, b


def control(node: Node, name: str) -> Connection:
    conn = node.household.connection(name)
    assert conn is not None
    return conn


async def lanes_open(a: Node, b: Node) -> tuple[Fetcher, Fetcher]:
    """Wait for both lanes of the pair; the fetching end of each (b's, then a's)."""
    await eventually(
        lambda: control(b, "a").lane is not None and control(a, "b").lane is not None, what="both lanes"
    )
    b_lane, a_lane = control(b, "a").lane, control(a, "b").lane
    assert b_lane is not None and a_lane is not None
    return b_lane, a_lane


async def dial(a: Node, who: Identity, token: bytes, role: str = bulk.FETCH) -> bulk.Reader:
    """A lane to a, dialed as *who* presenting *token*."""
    assert a.address is not None
    return await trio.to_thread.run_sync(
        bulk.dial_lane,
        a.address,
        tls.client_context(who.private_key),
        who.public_key,
        a.identity.public_key,
        token,
        role,
        FAST.handshake_timeout,
    )


async def refused(a: Node, who: Identity, token: bytes, role: str = bulk.FETCH) -> str:
    with pytest.raises(Refused) as caught:
        await dial(a, who, token, role)
    return caught.value.reason


def test_chunks_travel_both_ways_pipelined() -> None:
    async def test(nursery: trio.Nursery) -> None:
        gate = threading.Event()
        asked: list[bytes] = []

        def gated(chunk: bytes) -> bytes | None:  # a's source: the first answer waits for the gate
            asked.append(chunk)
            if len(asked) == 1:
                gate.wait(60)
            return CHUNKS.get(chunk)

        a, b = await pair(nursery, a_chunks=gated)
        b_lane, a_lane = await lanes_open(a, b)
        assert control(b, "a").lanes and control(a, "b").lanes  # not counted as connections:
        assert [s.state for s in a.household.status()] == ["connected"]
        got: dict[bytes, bytes] = {}

        async def fetch(lane: Fetcher, chunk: bytes) -> None:
            got[chunk] = await lane.fetch(chunk)

        async with trio.open_nursery() as fetches:
            fetches.start_soon(fetch, b_lane, HASHES[0])
            await eventually(lambda: len(asked) == 1, what="the first request at a")
            # a's thread holds the first answer while b's thread waits for it: requests queued
            # meanwhile still go out at once, DEPTH unanswered at most
            for chunk in HASHES[1:40]:
                fetches.start_soon(fetch, b_lane, chunk)
            await eventually(
                lambda: len(b_lane._waiting) == 40 and b_lane._queue.qsize() == 40 - bulk.DEPTH,
                what="DEPTH requests sent",
            )
            await trio.testing.wait_all_tasks_blocked()
            assert b_lane._queue.qsize() == 40 - bulk.DEPTH and len(b_lane._waiting) == 40
            assert len(asked) == 1
            gate.set()
            for chunk in HASHES[40:]:
                fetches.start_soon(fetch, a_lane, chunk)  # the other way: a fetches from b
        assert got == CHUNKS
        assert sorted(asked) == sorted(HASHES[:40])
        with pytest.raises(RemoteError) as caught:
            await b_lane.fetch(bytes(32))
        assert caught.value.code == "not-found"
        assert await b_lane.fetch(HASHES[0]) == CHUNKS[HASHES[0]]  # the lane goes on

    run_trio(test)


def test_a_chunk_that_does_not_match_its_hash_is_refused_by_the_fetcher() -> None:
    async def test(nursery: trio.Nursery) -> None:
        def damaged(chunk: bytes) -> bytes | None:
            data = CHUNKS.get(chunk)
            return None if data is None else bytes([data[0] ^ 0xFF]) + data[1:]

        a, b = await pair(nursery, a_chunks=damaged)
        b_lane, _ = await lanes_open(a, b)
        with pytest.raises(BadChunk):
            await b_lane.fetch(HASHES[0])
        assert control(b, "a").lane is b_lane  # an answer, not a broken lane

    run_trio(test)


def test_a_cancelled_fetch_does_not_wedge_the_lane() -> None:
    async def test(nursery: trio.Nursery) -> None:
        entered, gate = threading.Event(), threading.Event()
        asked: list[bytes] = []

        def gated(chunk: bytes) -> bytes | None:
            asked.append(chunk)
            if chunk == HASHES[0]:
                entered.set()
                gate.wait(60)
            return CHUNKS.get(chunk)

        a, b = await pair(nursery, a_chunks=gated)
        b_lane, _ = await lanes_open(a, b)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(b_lane.fetch, HASHES[0])
                await eventually(entered.is_set, what="the request at a")
                for chunk in HASHES[1:40]:  # DEPTH sent, the rest queued behind them
                    inner.start_soon(b_lane.fetch, chunk)
                await eventually(
                    lambda: len(b_lane._waiting) == 40 and b_lane._queue.qsize() == 40 - bulk.DEPTH,
                    what="DEPTH sent",
                )
                scope.cancel()
        gate.set()
        assert await b_lane.fetch(HASHES[1]) == CHUNKS[HASHES[1]]
        assert control(b, "a").lane is b_lane
        assert not b_lane._waiting
        # Those sent were answered (the answers dropped); those still queued were never sent.
        assert asked[0] == HASHES[0] and asked[-1] == HASHES[1] and len(asked) == bulk.DEPTH + 1
        assert set(asked[1:-1]) < set(HASHES[1:40])  # (trio runs the fetches in any order)

    run_trio(test)


@pytest.mark.expect_log(r"^refused a bulk lane from ", r"^refused a connection: ")
def test_a_lane_is_refused_without_the_token_and_key_of_a_live_control_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test(nursery: trio.Nursery) -> None:
        c = new_identity()
        stranger = new_identity()
        # b opens no lanes itself (no chunks): the test opens them, as b or as others.
        a = await start_node(nursery, "a", chunks=CHUNKS.get)
        b_identity = new_identity()
        a.household.update([Node.entry("b", b_identity), Node.entry("c", c)])
        # No control connection at all yet.
        assert "no live control connection" in await refused(a, b_identity, os.urandom(32))

        b = await start_node(nursery, "b", [a.peer()], listen=False, identity=b_identity, chunks=None)
        await eventually(lambda: a.state("b") == "connected", what="b connected")
        conn = control(a, "b")
        token = conn.bulk_token
        assert token is not None
        assert "no live control connection" in await refused(a, b_identity, os.urandom(32))
        # c is a configured peer, but the token is b's connection's.
        assert "not that of the control connection" in await refused(a, c, token)
        with pytest.raises(Refused) as caught:  # a key a does not know: refused in the handshake
            await dial(a, stranger, token)
        assert not conn.lanes

        reader = await dial(a, b_identity, token)  # b, with its token: accepted
        await eventually(lambda: len(conn.lanes) == 1, what="the lane at a")
        assert "a second bulk lane" in await refused(a, b_identity, token)
        reader.stream.close()
        await eventually(lambda: not conn.lanes, what="the lane gone at a")
        assert control(a, "b") is conn and conn.closed_reason is None  # the control connection lives
        assert b.state("a") == "connected"
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a bulk lane")]
        assert len(lines) == 4, lines
        assert caught.value.reason

    run_trio(test)


@pytest.mark.expect_log(r"bulk lane \(serving\): protocol error: .*; closing the lane")
def test_a_malformed_frame_closes_only_the_lane() -> None:
    async def test(nursery: trio.Nursery) -> None:
        a, b = await pair(nursery, b_chunks=None)  # b opens no lanes: the test opens one as b
        conn = control(a, "b")
        token = conn.bulk_token
        assert token is not None
        b_identity = b.identity
        reader = await dial(a, b_identity, token)
        await eventually(lambda: len(conn.lanes) == 1, what="the lane at a")
        server = conn.lanes[0]
        assert isinstance(server, Server)
        await trio.to_thread.run_sync(reader.stream.send, encode_frame(encode(Ping(1))))
        goodbye = await trio.to_thread.run_sync(reader.one)
        assert isinstance(goodbye, Goodbye) and "a Ping on a bulk lane" in goodbye.reason
        with pytest.raises(ConnectionLost):
            await trio.to_thread.run_sync(reader.one)
        reader.stream.close()
        await eventually(lambda: not server.thread.is_alive() and not conn.lanes, what="the lane closed")
        assert control(a, "b") is conn and conn.closed_reason is None
        assert await control(b, "a").request("echo", "still here") == "still here"

    run_trio(test)


def test_lanes_close_with_their_control_connection_and_leave_no_thread() -> None:
    async def test(nursery: trio.Nursery) -> None:
        await eventually(lambda: not lane_threads(), what="no lane thread of an earlier test")
        a, b = await pair(nursery)
        b_lane, a_lane = await lanes_open(a, b)
        await eventually(lambda: len(control(a, "b").lanes) == len(control(b, "a").lanes) == 2, what="4 ends")
        ends = [*control(a, "b").lanes, *control(b, "a").lanes]
        assert len(lane_threads()) == 4
        await control(b, "a").close("the test closes it")
        await eventually(lambda: not any(end.thread.is_alive() for end in ends), what="lane threads ended")
        assert b_lane.closed_reason is not None and a_lane.closed_reason is not None
        with pytest.raises(ConnectionLost):
            await b_lane.fetch(HASHES[0])
        # b dials again: a new connection, new lanes.
        await eventually(
            lambda: (conn := b.household.connection("a")) is not None and conn.lane not in (None, b_lane),
            what="new lanes",
        )
        a.stop()
        b.stop()
        await eventually(lambda: not lane_threads(), what="no lane thread left")

    run_trio(test)
