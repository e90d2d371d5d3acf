"""Fuzzing the wire: whatever bytes a peer sends, the worst it gets is its own connection closed.

(a) The decoders, pure: random bytes, mutated frames of valid messages and
random msgpack values are either messages or refused with `ProtocolError`,
never another exception.

(b) A live `Connection` over trio memory streams, fed raw bytes at the other
end: `run` returns (it never raises), and `closed_reason` says exactly why,
as predicted by a small model of the protocol's rules; what the connection
answered before it closed is what the model expects, a protocol error is
told to the peer in a goodbye, and a second connection beside it is
untouched. Time is trio's `MockClock`, jumping ahead whenever every task
waits, and every run is bounded by a `fail_after` in virtual seconds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from realizefs.errors import ConnectionLost, ProtocolError
from realizefs.peers.connection import Connection, Timing
from realizefs.peers.frames import FrameDecoder, encode_frame
from realizefs.peers.messages import (
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
    decode,
    encode,
)
from realizefs.peers.methods import Methods
from realizefs.peers.transport import Transport
from tests.support import examples

TIMING = Timing(keepalive=10.0, timeout=30.0, hello_timeout=5.0)
OUR_HELLO = Hello("us", b"\x02" * 16, ())
THEIR_HELLO = Hello("them", b"\x01" * 16, ("a",))

SAMPLES: list[Message] = [
    THEIR_HELLO,
    Goodbye("bye"),
    Ping(7),
    Pong(7),
    Request(1, "stat", {"path": "a/b", "n": [1, None, True, 2.5, b"x"]}),
    Request(2, "read", [b"\x00" * 4], window=1 << 20),
    Data(3, b"\x01\x02\x03"),
    Response(1, {"ok": "yes"}),
    Error(2, "not-found", "no such file"),
    Cancel(9),
    Credit(9, 1 << 16),
]
VALID = b"".join(encode_frame(encode(m)) for m in SAMPLES)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, at_least: int = 1) -> bytes:
    """*data* with bytes flipped, inserted and deleted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(at_least, 6))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        match draw(st.sampled_from(["flip", "insert", "delete"])):
            case "flip":
                out[at] ^= 1 << draw(st.integers(0, 7))
            case "insert":
                out[at:at] = draw(st.binary(min_size=1, max_size=6))
            case "delete":
                del out[at : at + draw(st.integers(1, 6))]
    return bytes(out)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 3) | st.binary(max_size=2), inner, max_size=3)
    ),
    max_leaves=12,
)
# Arrays shaped like messages (a kind first), to reach the checks of every field.
message_shaped = st.tuples(st.integers(-1, 12), st.lists(msgpack_values, max_size=6)).map(
    lambda kind_fields: [kind_fields[0], *kind_fields[1]]
)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- (a) the decoders


def decode_all(data: bytes, cuts: list[int]) -> list[Message]:
    """Feed *data* cut at *cuts*; the messages, or `ProtocolError` and nothing else."""
    decoder = FrameDecoder()
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    out = []
    for start, end in itertools.pairwise(bounds):
        for frame in decoder.feed(data[start:end]):
            out.append(decode(frame))
    return out


def check_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    try:
        messages = decode_all(data, cuts)
    except ProtocolError:
        return  # the one way to refuse
    for message in messages:  # whatever is accepted can be sent on, and reads back the same
        assert encode(decode(encode(message))) == encode(message)


@settings(max_examples=examples(200))
@given(st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=4))
@example(b"\x00\x00\x00\x00", [])
@example(b"\xff\xff\xff\xff", [])
@example(encode_frame(b"\xc1"), [2])
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    check_only_protocol_errors(data, cuts)


@settings(max_examples=examples(200))
@given(mutated(VALID), st.lists(st.integers(0, 1000), max_size=4))
def test_mutated_frames_of_valid_messages(data: bytes, cuts: list[int]) -> None:
    check_only_protocol_errors(data, cuts)


@settings(max_examples=examples(200))
@given(
    st.lists(st.sampled_from(SAMPLES))
    .map(lambda ms: [encode(m) for m in ms])
    .flatmap(lambda payloads: st.tuples(*(mutated(p, at_least=0) for p in payloads)))
)
def test_mutated_payloads_in_whole_frames(payloads: tuple[bytes, ...]) -> None:
    """Frames intact, payloads damaged: the message decoder, not the framing, must refuse."""
    check_only_protocol_errors(b"".join(encode_frame(p) for p in payloads if p), [])


@settings(max_examples=examples(200))
@given(msgpack_values | message_shaped)
def test_random_msgpack_values(value: Any) -> None:
    check_only_protocol_errors(encode_frame(pack(value)), [])


def test_the_samples_decode() -> None:
    """The fuzzing starts from valid input: unmutated, it all decodes."""
    assert decode_all(VALID, [5, 50, 100]) == SAMPLES


# ---------------------------------------------------------------- (b) a live connection


@dataclass
class Expected:
    """What a connection fed some bytes (then the end of the stream) must do."""

    reason: str  # its closed_reason, exactly
    required: Counter[Message] = field(default_factory=Counter)  # answers it must send
    optional: Counter[Message] = field(default_factory=Counter)  # answers it may send


def unknown_method(request: Request) -> Error:
    return Error(request.id, "unknown-method", f"this peer does not serve {request.method!r}")


def expect(data: bytes) -> Expected:
    """The protocol's rules, for a connection that has made no request and serves no method.

    *data* arrives in one piece: the whole frames before a refused length are
    read and may be answered, then the refusal closes the connection.
    """
    decoder = FrameDecoder()
    try:
        frames = decoder.feed(data)
    except ProtocolError as exc:
        return Expected(f"protocol error: {exc}")
    answers: Counter[Message] = Counter()
    cancelled: Counter[Message] = Counter()  # whether the answer beat the cancel is up to the scheduler

    def ended(reason: str) -> Expected:
        return Expected(reason, optional=answers + cancelled)

    last = 0
    for frame in frames:
        try:
            message = decode(frame)
        except ProtocolError as exc:
            return ended(f"protocol error: {exc}")
        match message:
            case Goodbye(reason=reason):
                return ended(f"the peer said goodbye: {reason}")
            case Hello():
                return ended("protocol error: a second hello")
            case Data(id=i) | Response(id=i) | Error(id=i) if i >= 1:
                return ended(f"protocol error: an answer to request {i}, which was never made")
            case Request(id=i) if i <= last:
                return ended(f"protocol error: request id {i} is not above the last one ({last})")
            case Request(id=i):
                last = i
                answers[unknown_method(message)] += 1
            case Cancel(id=i) | Credit(id=i) if i > last:
                return ended(f"protocol error: a message about request {i}, which was never made")
            case Cancel(id=i):
                for answer in [a for a in answers if isinstance(a, Error) and a.id == i]:
                    cancelled[answer] += answers.pop(answer)
            case Ping(token=token):
                answers[Pong(token)] += 1
    try:
        decoder.feed(b"")  # a bad length after whole frames is refused once they are read
    except ProtocolError as exc:
        return ended(f"protocol error: {exc}")  # answers may or may not leave before the goodbye
    how = "in the middle of a frame" if decoder.pending else "by the peer"
    return Expected(f"connection closed {how}", required=answers, optional=cancelled)


async def connected() -> tuple[Connection, Transport, trio.abc.HalfCloseableStream]:
    """A listening-side connection past its hellos; the peer's transport and its raw stream."""
    ours, theirs = trio.testing.memory_stream_pair()
    conn = Connection(
        Transport(ours, peer_key=b"k" * 32, address="test", dialed=False),
        "them",
        OUR_HELLO,
        Methods(),
        TIMING,
    )
    peer = Transport(theirs, peer_key=b"u" * 32, address="test", dialed=True)
    await peer.send(THEIR_HELLO)  # memory streams buffer: it waits there for `open`
    await conn.open()
    assert await peer.receive() == OUR_HELLO
    assert conn.peer_hello == THEIR_HELLO
    return conn, peer, theirs


async def everything_sent(peer: Transport) -> list[Message]:
    """What the connection sent, up to the end of its stream."""
    out = []
    while True:
        try:
            out.append(await peer.receive())  # a malformed message from it fails the test here
        except ConnectionLost:
            return out


async def answer_of(peer: Transport) -> Message:
    """The next message that is not a keepalive ping."""
    while isinstance(message := await peer.receive(), Ping):
        await peer.send(Pong(message.token))
    return message


@dataclass
class Outcome:
    closed_reason: str | None
    sent: list[Message]  # by the connection, after its hello


def feed_connection(data: bytes) -> Outcome:
    """Run a connection, write *data* raw into it, then end the stream; what it did.

    Fails the test if `run` raises or a neighbouring connection is disturbed.
    """
    outcome = Outcome(None, [])

    async def main() -> None:
        with trio.fail_after(120):  # virtual seconds: far beyond anything but a hang
            conn, peer, raw = await connected()
            neighbour, neighbour_peer, _ = await connected()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(neighbour.run)
                async with trio.open_nursery() as fuzzed:
                    fuzzed.start_soon(conn.run)
                    await raw.send_all(data)
                    await trio.sleep(1)  # everything it can do with the bytes is done
                    await raw.send_eof()
                # `run` has returned by itself: nothing cancelled it
                outcome.closed_reason = conn.closed_reason
                outcome.sent = await everything_sent(peer)
                assert neighbour.closed_reason is None
                await neighbour_peer.send(Request(1, "still-there", None))
                assert await answer_of(neighbour_peer) == unknown_method(Request(1, "still-there", None))
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcome


def check_outcome(data: bytes) -> None:
    expected = expect(data)
    outcome = feed_connection(data)
    assert outcome.closed_reason == expected.reason
    sent = [m for m in outcome.sent if not isinstance(m, Ping)]  # its keepalive
    if expected.reason.startswith("protocol error: "):
        assert sent and sent[-1] == Goodbye(expected.reason)  # the peer is told why
        sent = sent[:-1]
    answers = Counter(sent)
    assert not any(isinstance(m, Goodbye) for m in answers)
    assert expected.required <= answers, (expected.required, answers)
    assert answers <= expected.required + expected.optional, (answers, expected)


conn_ids = st.integers(0, 4)
msgpack_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
conn_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, conn_ids),
    st.builds(Pong, conn_ids),
    st.builds(Request, conn_ids, st.sampled_from(["stat", "", "é" * 64]), st.none() | msgpack_ints, conn_ids),
    st.builds(Cancel, conn_ids),
    st.builds(Credit, conn_ids, st.integers(0, 1 << 20)),
    st.builds(Data, conn_ids, st.binary(min_size=1, max_size=8)),
    st.builds(Response, conn_ids, st.none()),
    st.builds(Error, conn_ids, st.just("x"), st.just("y")),
    st.builds(Goodbye, st.text(max_size=8)),
    st.just(THEIR_HELLO),
)
streams = st.lists(conn_messages, max_size=8).map(lambda ms: b"".join(encode_frame(encode(m)) for m in ms))


@st.composite
def polite_streams(draw: st.DrawFn) -> bytes:
    """Messages that break no rule: rising request ids, cancels and credits of them, pings, late answers."""
    messages: list[Message] = []
    last = 0
    for step in draw(
        st.lists(st.sampled_from(["request", "ping", "pong", "cancel", "credit", "late"]), max_size=8)
    ):
        match step:
            case "request":
                last += draw(st.integers(1, 3))
                messages.append(Request(last, draw(st.sampled_from(["stat", "é"])), None, draw(conn_ids)))
            case "ping":
                messages.append(Ping(draw(conn_ids)))
            case "pong":
                messages.append(Pong(draw(conn_ids)))
            case "cancel" | "credit" if last:
                i = draw(st.integers(1, last))
                messages.append(Cancel(i) if step == "cancel" else Credit(i, draw(st.integers(0, 99))))
            case "late":
                late: list[Message] = [Data(0, b"late"), Response(0, 1), Error(0, "x", "y")]
                messages.append(draw(st.sampled_from(late)))
    return b"".join(encode_frame(encode(m)) for m in messages)


garbage_frames = st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=3).map(
    lambda ps: b"".join(encode_frame(p) for p in ps)
)


@pytest.mark.expect_log(r": protocol error: .*; closing the connection$")
@settings(max_examples=examples(50), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=200)
    | streams
    | streams.flatmap(mutated)
    | mutated(VALID)
    | garbage_frames
    | polite_streams()
    | st.tuples(polite_streams(), streams | garbage_frames | st.binary(max_size=8)).map(b"".join)
)
@example(b"")
@example(b"\xff\xff\xff\xff")
@example(b"\x00\x00\x00\x00")
@example(encode_frame(encode(Ping(3))) + b"\x00\x00")
@example(encode_frame(encode(Request(1, "x", None))) + encode_frame(encode(Ping(3))))
@example(encode_frame(encode(Request(1, "x", None))) + encode_frame(encode(Cancel(1))))
@example(encode_frame(encode(Request(2, "x", None))) + encode_frame(encode(Request(2, "y", None))))
@example(encode_frame(encode(Goodbye("enough"))))
@example(encode_frame(encode(THEIR_HELLO)))
@example(encode_frame(b"\x92\x03\xc1"))
@example(b"\x00\x00\x00\x03\x92\x03\x00\x00\x00\x00\x00")  # a pong, then a frame of 0 bytes
@example(encode_frame(encode(Ping(2))) + bytes.fromhex("00200001"))  # a ping, then an oversize length
def test_any_bytes_close_at_most_their_own_connection(data: bytes) -> None:
    check_outcome(data)


def test_the_model_predicts_answers_not_just_endings() -> None:
    """The fuzzing checks something: the model requires answers, and a connection gives them."""
    data = b"".join(encode_frame(encode(m)) for m in (Request(1, "a", None), Ping(4), Request(3, "b", [])))
    expected = expect(data)
    assert expected.reason == "connection closed by the peer"
    assert expected.required == Counter(
        [unknown_method(Request(1, "a", None)), Pong(4), unknown_method(Request(3, "b", []))]
    )
    check_outcome(data)


# ---------------------------------------------------------------- deterministic


def test_an_unknown_method_is_answered_with_an_error_and_the_connection_stays_up() -> None:
    async def main() -> None:
        with trio.fail_after(120):
            conn, peer, _ = await connected()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run)
                await peer.send(Request(1, "frobnicate", {"path": "a"}))
                answer = await answer_of(peer)
                assert answer == Error(1, "unknown-method", "this peer does not serve 'frobnicate'")
                assert conn.closed_reason is None
                await peer.send(Request(2, "stream-it", None, window=1 << 16))
                answer = await answer_of(peer)
                assert isinstance(answer, Error) and (answer.id, answer.code) == (2, "unknown-method")
                await peer.send(Ping(42))
                assert await answer_of(peer) == Pong(42)
                assert conn.closed_reason is None
                await peer.send(Goodbye("done"))
            assert conn.closed_reason == "the peer said goodbye: done"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.expect_log(r": protocol error: a frame of \d+ bytes \(expected 1 to \d+\); closing")
def test_an_oversize_frame_closes_that_connection_with_a_goodbye() -> None:
    outcome = feed_connection(encode_frame(encode(Ping(1))) + bytes.fromhex("00200001"))
    reason = "protocol error: a frame of 2097153 bytes (expected 1 to 2097152)"
    assert outcome.closed_reason == reason
    assert outcome.sent[-1] == Goodbye(reason)
    # the ping before the bad length was read: its pong may leave before the goodbye, nothing else
    assert {type(m) for m in outcome.sent[:-1]} <= {Pong, Ping}
    assert all(m == Pong(1) for m in outcome.sent[:-1] if isinstance(m, Pong))
