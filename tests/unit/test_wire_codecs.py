"""The wire's framing and messages: known-answer vectors, and every malformed input refused."""

from __future__ import annotations

import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.errors import ProtocolError
from realizefs.peers.frames import HEADER, MAX_FRAME, FrameDecoder, encode_frame
from realizefs.peers.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Credit,
    Data,
    Error,
    Goodbye,
    Hello,
    IncompatibleVersion,
    Message,
    Ping,
    Pong,
    Request,
    Response,
    decode,
    encode,
)

# ---------------------------------------------------------------- frames


def test_frame_vectors() -> None:
    assert encode_frame(b"abc").hex() == "00000003616263"
    assert encode_frame(b"\x00" * 256)[:4].hex() == "00000100"


def test_frame_sizes_refused_when_encoding() -> None:
    for size in (0, MAX_FRAME + 1):
        with pytest.raises(ValueError):
            encode_frame(b"x" * size)
    assert len(encode_frame(b"x" * MAX_FRAME)) == MAX_FRAME + 4


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.data())
def test_frames_come_out_whole_however_the_bytes_are_split(
    payloads: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[start:end])
    assert out == payloads and decoder.pending == 0


def test_byte_by_byte() -> None:
    decoder = FrameDecoder()
    stream = encode_frame(b"hello") + encode_frame(b"world")
    out = [frame for i in range(len(stream)) for frame in decoder.feed(stream[i : i + 1])]
    assert out == [b"hello", b"world"]


def test_an_oversize_length_is_refused_from_its_header_alone() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="a frame of 2097153 bytes"):
        decoder.feed(HEADER.pack(MAX_FRAME + 1))  # no payload sent: nothing allocated for it
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_an_empty_frame_is_refused() -> None:
    with pytest.raises(ProtocolError, match="a frame of 0 bytes"):
        FrameDecoder().feed(b"\x00\x00\x00\x00")


def test_a_truncated_frame_waits_for_the_rest() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"abcdef")[:7]) == []
    assert decoder.pending == 7
    assert decoder.feed(b"def") == [b"abcdef"] and decoder.pending == 0


# ---------------------------------------------------------------- messages

VECTORS: list[tuple[Message, str]] = [
    (
        Hello("laptop", bytes(range(16)), ("photos", "family/docs")),
        "9601a97265616c697a65667301a66c6170746f70c410000102030405060708090a0b0c0d0e0f"
        "92a670686f746f73ab66616d696c792f646f6373",
    ),
    (Goodbye("shutting down"), "9202ad7368757474696e6720646f776e"),
    (Ping(7), "920307"),
    (Pong(7), "920407"),
    (
        Request(1, "echo", {"path": b"a/b", "n": [1, None, True, 2.5]}),
        "950501a46563686f82a470617468c403612f62a16e9401c0c3cb400400000000000000",
    ),
    (
        Request(2**32, "read", [b"\x00" * 4], window=4 << 20),
        "9505cf0000000100000000a47265616491c40400000000ce00400000",
    ),
    (Data(3, b"\x01\x02\x03"), "930603c403010203"),
    (Response(1, {"ok": "yes"}), "93070181a26f6ba3796573"),
    (
        Error(2, "unknown-method", "this peer does not serve 'x'"),
        "940802ae756e6b6e6f776e2d6d6574686f64bc74686973207065657220646f6573206e6f7420736572766520277827",
    ),
    (Cancel(9), "920909"),
    (Credit(9, 1 << 20), "930a09ce00100000"),
]


@pytest.mark.parametrize(("message", "wire"), VECTORS, ids=[type(m).__name__ for m, _ in VECTORS])
def test_message_vectors(message: Message, wire: str) -> None:
    assert encode(message).hex() == wire
    assert decode(bytes.fromhex(wire)) == message


def test_every_kind_has_a_vector() -> None:
    kinds = {Hello, Goodbye, Ping, Pong, Request, Data, Response, Error, Cancel, Credit}
    assert {type(m) for m, _ in VECTORS} == kinds


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
ids = st.integers(0, 2**63 - 1)
messages = st.one_of(
    st.builds(
        Hello, st.text(max_size=64), st.binary(min_size=1, max_size=64), st.lists(st.text()).map(tuple)
    ),
    st.builds(Goodbye, st.text(max_size=200)),
    st.builds(Ping, ids),
    st.builds(Pong, ids),
    st.builds(Request, ids, st.text(max_size=64), values, st.integers(0, 1 << 30)),
    st.builds(Data, ids, st.binary(min_size=1, max_size=1000)),
    st.builds(Response, ids, values),
    st.builds(Error, ids, st.text(max_size=64), st.text(max_size=200)),
    st.builds(Cancel, ids),
    st.builds(Credit, ids, st.integers(0, 1 << 30)),
)


@given(messages)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


MALFORMED: list[tuple[str, bytes, str]] = [
    ("truncated", encode(Goodbye("bye"))[:-1], "not a msgpack message"),
    ("trailing bytes", encode(Ping(1)) + b"\x00", "not a msgpack message"),
    ("not an array", pack({"kind": 3}), "expected a message array"),
    ("empty array", pack([]), "expected a message array"),
    ("unknown kind", pack([99, 1]), "unknown message kind"),
    ("kind as a string", pack(["ping", 1]), "unknown message kind"),
    ("kind as a bool", pack([True, 1]), "unknown message kind"),
    ("too few fields", pack([3]), "expected 1 fields, got 0"),
    ("too many fields", pack([3, 1, 2]), "expected 1 fields, got 2"),
    ("bool for an id", pack([3, True]), "Ping field 1"),
    ("negative id", pack([9, -1]), "Cancel field 1"),
    ("id above 2**63-1", pack([9, 2**63]), "Cancel field 1"),
    ("float for an id", pack([9, 1.0]), "Cancel field 1"),
    ("str for bytes", pack([6, 1, "payload"]), "Data field 2"),
    ("empty data", pack([6, 1, b""]), "Data field 2"),
    ("bytes for a str", pack([2, b"bye"]), "Goodbye field 1"),
    ("oversize method", pack([5, 1, "m" * 65, None, 0]), "Request field 2"),
    ("negative window", pack([5, 1, "m", None, -1]), "Request field 4"),
    ("oversize error code", pack([8, 1, "c" * 65, "x"]), "Error field 2"),
    ("arenas not a list", pack([1, "realizefs", 1, "n", b"s", "photos"]), "Hello field 3"),
    ("arena not a str", pack([1, "realizefs", 1, "n", b"s", [1]]), "Hello field 3"),
    ("empty store id", pack([1, "realizefs", 1, "n", b"", []]), "Hello field 2"),
    ("wrong magic", pack([1, "syncthing", 1, "n", b"s", []]), "not a realizefs hello"),
    ("no version", pack([1, "realizefs"]), "not a realizefs hello"),
    ("ext type", pack([7, 1, msgpack.ExtType(5, b"x")]), "not a msgpack message"),
    ("timestamp ext", pack([7, 1, msgpack.Timestamp(1, 0)]), "not a msgpack message"),
    (
        "int map key",
        bytes.fromhex("9405") + pack(1) + pack("m") + bytes.fromhex("81") + pack(1) + pack(2),
        "msgpack",
    ),
    ("invalid utf-8", bytes.fromhex("9202a2ffff"), "not a msgpack message"),
    ("reserved byte 0xc1", bytes.fromhex("9203c1"), "not a msgpack message"),
]


@pytest.mark.parametrize(("what", "data", "words"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_messages_are_refused(what: str, data: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert words in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "header",
    [
        "dd" + "ffffffff",  # an array declaring 2**32-1 elements
        "df" + "ffffffff",  # a map declaring 2**32-1 pairs
        "c6" + "ffffffff",  # bytes declaring 4 GiB
        "db" + "ffffffff",  # a string declaring 4 GiB
        "dd" + "0001ffff",  # an array just above the limit
    ],
)
def test_bombs_fail_fast_without_allocating(header: str) -> None:
    data = bytes.fromhex("9307" + "01" + header) + b"\x00" * 16
    started = time.perf_counter()
    with pytest.raises(ProtocolError):
        decode(data)
    assert time.perf_counter() - started < 0.1


def test_deep_nesting_is_refused() -> None:
    deep = bytes.fromhex("930701") + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        decode(deep)


def test_another_version_says_which() -> None:
    wire = encode(Hello("x", b"s", (), version=PROTOCOL_VERSION + 1))
    with pytest.raises(IncompatibleVersion) as info:
        decode(wire)
    assert info.value.version == PROTOCOL_VERSION + 1
    assert f"protocol version {PROTOCOL_VERSION + 1} is not supported" in str(info.value)
    assert isinstance(info.value, ProtocolError)


# ---------------------------------------------------------------- fuzzing

VALID = b"".join(encode_frame(bytes.fromhex(wire)) for _, wire in VECTORS)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """The vectors' frames with bytes flipped, inserted and deleted."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        match draw(st.sampled_from(["flip", "insert", "delete"])):
            case "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            case "delete":
                del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=2000), mutated()))
def test_the_decoders_refuse_anything_only_with_protocol_error(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        for frame in decoder.feed(data):
            decode(frame)
    except ProtocolError:
        pass  # the one way to refuse: the connection is closed with the reason
