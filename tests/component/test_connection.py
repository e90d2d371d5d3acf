"""One `Connection` over trio memory streams: the protocol's rules, without TLS or sockets.

The connection under test runs on one end; the test drives the other end by
hand with a bare `Transport` (or raw bytes), so it can break every rule.
Time is trio's `MockClock`, jumping ahead whenever every task waits.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.errors import RemoteError
from realizefs.peers.connection import Connection, Handler, PeerInfo, Reply, Timing
from realizefs.peers.frames import encode_frame
from realizefs.peers.messages import (
    MAX_TEXT,
    Cancel,
    Credit,
    Data,
    Error,
    Goodbye,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
    Response,
    Unencodable,
    Value,
    encode,
)
from realizefs.peers.methods import Methods
from realizefs.peers.transport import Transport
from tests.integration.support import Recorder
from tests.support import examples

TIMING = Timing(keepalive=10.0, timeout=30.0, hello_timeout=5.0)
HELLO = Hello("them", b"\x01" * 16, ("a",))

Driver = Callable[[Connection, Transport], Awaitable[None]]


def run(driver: Driver, handler: Handler | None = None) -> Connection:
    """Open a connection (listening side) against a hand-driven peer; run *driver*; the connection."""
    ours, theirs = trio.testing.memory_stream_pair()
    conn = Connection(
        Transport(ours, b"k" * 32, "test", dialed=False),
        "them",
        Hello("us", b"\x02" * 16, ()),
        handler or Methods(),
        TIMING,
    )
    peer = Transport(theirs, b"u" * 32, "test", dialed=True)

    async def main() -> None:
        with trio.fail_after(600):  # virtual seconds
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.open)
                assert isinstance(await peer.receive(), Hello)
                await peer.send(HELLO)
                await trio.testing.wait_all_tasks_blocked()
                assert conn.peer_hello == HELLO
                nursery.start_soon(conn.run)
                await driver(conn, peer)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return conn


async def ended(conn: Connection) -> str:
    while conn.closed_reason is None:
        await trio.sleep(0.01)
    return conn.closed_reason


async def skip_pings(peer: Transport) -> Message:
    """The next message from the connection that is not a keepalive ping."""
    while isinstance(message := await peer.receive(), Ping):
        await peer.send(Pong(message.token))
    return message


def test_requests_are_answered_and_unknown_methods_refused() -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        await peer.send(Request(1, "echo", [1, "two", b"3"]))
        assert await skip_pings(peer) == Response(1, [1, "two", b"3"])
        await peer.send(Request(2, "nothing-like-it", None))
        answer = await skip_pings(peer)
        assert isinstance(answer, Error) and answer.code == "unknown-method"
        assert conn.closed_reason is None

    run(driver, Recorder())


def test_a_request_to_the_peer_gets_its_answer() -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                request = await skip_pings(peer)
                assert isinstance(request, Request) and request.method == "stat"
                await peer.send(Response(request.id, {"size": 3}))
                request = await skip_pings(peer)
                assert isinstance(request, Request)
                await peer.send(Error(request.id, "not-found", "no such path"))

            nursery.start_soon(answer)
            assert await conn.request("stat", "a/b") == {"size": 3}
            with pytest.raises(RemoteError) as info:
                await conn.request("stat", "a/c")
            assert info.value.code == "not-found"

    run(driver)


def test_keepalive_gives_the_round_trip_time_and_drops_a_silent_peer() -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        ping = await peer.receive()
        assert isinstance(ping, Ping)
        await trio.sleep(0.25)
        await peer.send(Pong(ping.token))
        await trio.testing.wait_all_tasks_blocked()
        assert conn.rtt is not None and 0.25 <= conn.rtt < 0.3
        silent_from = trio.current_time()
        reason = await ended(conn)  # the peer answers nothing more
        assert "no answer for 30s (keepalive timeout)" in reason
        assert TIMING.timeout <= trio.current_time() - silent_from <= TIMING.timeout + 0.1

    run(driver)


def test_a_stream_is_cancelled_at_the_responder() -> None:
    recorder = Recorder()

    async def driver(conn: Connection, peer: Transport) -> None:
        await peer.send(Request(1, "bulk", {"size": 1 << 30, "part": 1000}, window=5000))
        received = 0
        while received < 5000:
            message = await skip_pings(peer)
            assert isinstance(message, Data)
            received += len(message.payload)
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.sent == 5000  # the window is spent: it waits for credit
        await peer.send(Credit(1, 2000))
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.sent == 7000
        await peer.send(Cancel(1))
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.cancelled == ["them"]
        await peer.send(Credit(1, 2000))  # late credit for a finished request: ignored
        await peer.send(Request(2, "echo", "after"))
        message = await skip_pings(peer)
        while isinstance(message, Data):  # parts already sent before the cancel
            message = await skip_pings(peer)
        assert message == Response(2, "after")
        assert conn.closed_reason is None

    run(driver, recorder)


VIOLATIONS: list[tuple[str, list[Message], str]] = [
    ("data for a request never made", [Data(5, b"x")], "which was never made"),
    ("an answer to a request never made", [Response(1, None)], "which was never made"),
    ("credit for a request never made", [Credit(7, 10)], "which was never made"),
    ("a request id that does not rise", [Request(3, "echo", 1), Request(3, "echo", 2)], "is not above"),
    ("a second hello", [HELLO], "a second hello"),
]


@pytest.mark.expect_log(r": protocol error: .*; closing the connection$")
@pytest.mark.parametrize(("what", "messages", "words"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_protocol_violations_close_the_connection(what: str, messages: list[Message], words: str) -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        for message in messages:
            await peer.send(message)
        reason = await ended(conn)
        assert reason.startswith("protocol error") and words in reason, reason
        while not isinstance(last := await peer.receive(), Goodbye):
            pass
        assert words in last.reason  # the peer is told why

    run(driver, Recorder())


@pytest.mark.expect_log(r": protocol error: data beyond the window")
def test_data_beyond_the_window_closes_the_connection() -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        async with trio.open_nursery() as nursery:

            async def stream() -> None:
                async with conn.stream("bulk", None, window=100):
                    await trio.sleep_forever()  # a reader that takes nothing: no credit is granted

            nursery.start_soon(stream)
            request = await skip_pings(peer)
            assert isinstance(request, Request) and request.window == 100
            await peer.send(Data(request.id, b"x" * 100))
            await peer.send(Data(request.id, b"y"))  # no credit left
            assert "data beyond the window" in await ended(conn)
            nursery.cancel_scope.cancel()

    run(driver)


@pytest.mark.expect_log(r": protocol error: .*; closing the connection$")
@settings(max_examples=examples(60), deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=5))
def test_random_frames_close_only_that_connection(frames: list[bytes]) -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        for frame in frames:
            await peer.stream.send_all(encode_frame(frame))
        await peer.stream.send_all(encode_frame(encode(Goodbye("end of the fuzz"))))
        assert await ended(conn)  # whatever came first, it ended with a reason and raised nothing

    run(driver, Recorder())


def test_a_peer_gone_in_the_middle_of_a_stream_is_not_a_handler_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()

    async def driver(conn: Connection, peer: Transport) -> None:
        await peer.send(Request(1, "bulk", {"size": 1 << 30, "part": 1000}, window=1 << 30))
        assert isinstance(await skip_pings(peer), Data)
        await peer.stream.aclose()  # the peer vanishes while the handler is sending
        await ended(conn)

    with caplog.at_level(logging.INFO, logger="realizefs.peers"):
        conn = run(driver, recorder)
    assert conn.closed_reason is not None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


class Awkward:
    """A handler whose answers cannot go on the wire as they are."""

    async def handle(self, peer: PeerInfo, request: Request, reply: Reply) -> Value:
        if request.method == "huge":
            return b"x" * (3 << 20)  # more than a frame holds
        if request.method == "big-int":
            return 2**64  # msgpack has no such integer
        raise RuntimeError("y" * 5000)  # longer than an error message may be


@pytest.mark.expect_log(
    r"^peer them: the answer to '(huge|big-int)' cannot be sent: ",
    r"^peer them: serving 'long-error' failed$",
)
def test_answers_that_cannot_be_sent_become_errors_and_the_connection_lives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        for i, method in enumerate(("huge", "big-int", "long-error"), 1):
            await peer.send(Request(i, method, None))
            answer = await skip_pings(peer)  # decoded by the same rules as a real peer's
            assert isinstance(answer, Error) and answer.id == i and answer.code == "internal", answer
            assert len(answer.message) <= MAX_TEXT
        assert conn.closed_reason is None

    with caplog.at_level(logging.ERROR, logger="realizefs.peers"):
        run(driver, Awkward())
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 3  # each handler bug is logged


def test_a_request_that_cannot_be_sent_is_refused_here_and_nothing_reaches_the_peer() -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        with pytest.raises(Unencodable):
            await conn.request("stat", "p" * (70 << 10))  # longer than a string may be
        await peer.send(Request(1, "echo", "still fine"))
        assert await skip_pings(peer) == Response(1, "still fine")  # no Cancel for it came first
        assert conn.closed_reason is None

    run(driver, Recorder())


def test_a_burst_of_pings_is_answered_in_full() -> None:
    async def driver(conn: Connection, peer: Transport) -> None:
        await peer.stream.send_all(b"".join(encode_frame(encode(Ping(i))) for i in range(1, 201)))
        tokens: list[int] = []
        while len(tokens) < 200:
            message = await peer.receive()
            if isinstance(message, Pong):
                tokens.append(message.token)
        assert tokens == list(range(1, 201))
        assert conn.closed_reason is None

    run(driver)
