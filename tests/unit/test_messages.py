"""The wire's messages (realizefs.peers.messages): exact bytes, round trips, every malformed input refused.

The vectors pin the bytes of one message of every kind, so that a change of
encoding cannot pass unnoticed. The malformed inputs are a table, most of it
generated field by field from the shape each message must have: every field
given a value of the wrong type or out of bounds is refused with
`ProtocolError`, saying which field; the values exactly at the bounds are
accepted, so the refusals are not a decoder that refuses everything.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.errors import ProtocolError
from realizefs.peers.frames import MAX_FRAME
from realizefs.peers.messages import (
    MAGIC,
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
    Unencodable,
    decode,
    encode,
)
from tests.support import examples

MAX_ID = 2**63 - 1
MAX_AMOUNT = MAX_FRAME * 1024  # the largest window or credit
ALL_KINDS = {Hello, Goodbye, Ping, Pong, Request, Data, Response, Error, Cancel, Credit}


def pack(value: Any) -> bytes:
    """Plain msgpack, as any peer (or attacker) could write it."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def refused(data: bytes) -> str:
    """The reason *data* is refused; fails the test unless refused with `ProtocolError` itself."""
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert type(info.value) is ProtocolError  # not `IncompatibleVersion`, which only a version makes
    return str(info.value)


# ---------------------------------------------------------------- known answers

VECTORS: list[tuple[str, Message, str]] = [  # the wire as hex, spaced between msgpack items
    (
        "Hello",
        Hello("laptop", b"\x01\x02\x03\x04", ("photos", "docs")),
        # [1, "realizefs", 1, "laptop", bin 01020304, ["photos", "docs"]]
        "96 01 a9 7265616c697a656673 01 a6 6c6170746f70 c404 01020304 92 a6 70686f746f73 a4 646f6373",
    ),
    ("Goodbye", Goodbye("bye"), "92 02 a3 627965"),
    ("Ping", Ping(300), "92 03 cd012c"),
    ("Pong", Pong(MAX_ID), "92 04 cf7fffffffffffffff"),
    ("Request without window", Request(1, "stat", "a/b"), "95 05 01 a4 73746174 a3 612f62 00"),
    (
        "Request with window",
        Request(7, "read", {"path": "f", "offset": 0}, window=65536),
        "95 05 07 a4 72656164 82 a4 70617468 a1 66 a6 6f6666736574 00 ce00010000",
    ),
    ("Data", Data(2, b"\x00\xff"), "93 06 02 c402 00ff"),
    (
        "Response with a nested value",
        Response(3, {"entries": [{"name": "a", "size": 10}, None, True, -1, 1.5, b"\x09"]}),
        "93 07 03 81 a7 656e7472696573 96 82 a4 6e616d65 a1 61 a4 73697a65 0a"
        " c0 c3 ff cb3ff8000000000000 c401 09",
    ),
    (
        "Error",
        Error(4, "not-found", "no such file"),
        "94 08 04 a9 6e6f742d666f756e64 ac 6e6f20737563682066696c65",
    ),
    ("Cancel", Cancel(5), "92 09 05"),
    ("Credit", Credit(5, 1 << 20), "93 0a 05 ce00100000"),
]


@pytest.mark.parametrize(("message", "wire"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_known_answer_vectors(message: Message, wire: str) -> None:
    assert MAGIC.encode().hex() == "7265616c697a656673"
    assert encode(message) == bytes.fromhex(wire)
    assert decode(bytes.fromhex(wire)) == message
    assert decode(encode(message)) == message


def test_the_vectors_cover_every_kind() -> None:
    assert {type(m) for _, m, _ in VECTORS} == ALL_KINDS
    requests = [m for _, m, _ in VECTORS if isinstance(m, Request)]
    assert {r.window > 0 for r in requests} == {True, False}


def test_a_hello_carries_the_version_it_speaks() -> None:
    assert Hello("n", b"s", ()).version == PROTOCOL_VERSION == 1
    hello = decode(encode(Hello("n", b"s", ())))
    assert isinstance(hello, Hello) and hello.version == PROTOCOL_VERSION


# ---------------------------------------------------------------- round trip

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
ids = st.integers(0, MAX_ID)
amounts = st.integers(0, MAX_AMOUNT)
names = st.text(max_size=64)
texts = st.text(max_size=300)
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, names, st.binary(min_size=1, max_size=64), st.lists(texts, max_size=5).map(tuple)),
    st.builds(Goodbye, texts),
    st.builds(Ping, ids),
    st.builds(Pong, ids),
    st.builds(Request, ids, names, values, amounts),
    st.builds(Data, ids, st.binary(min_size=1, max_size=500)),
    st.builds(Response, ids, values),
    st.builds(Error, ids, names, texts),
    st.builds(Cancel, ids),
    st.builds(Credit, ids, amounts),
)


@settings(max_examples=examples(300))
@given(messages)
def test_round_trip(message: Message) -> None:
    decoded = decode(encode(message))
    assert decoded == message and type(decoded) is type(message)


@settings(max_examples=examples(100))
@given(messages, st.binary(min_size=1, max_size=8))
def test_a_message_is_exactly_its_bytes(message: Message, extra: bytes) -> None:
    wire = encode(message)
    for end in range(len(wire)):
        assert "not a msgpack message" in refused(wire[:end])
    assert "not a msgpack message" in refused(wire + extra)


# ---------------------------------------------------------------- malformed inputs, field by field

# Each kind as msgpack writes it: its number, what precedes its fields, a valid value of each field,
# and what each field must be: ("int", max), ("str", max), ("bytes", min, max), ("names",) or ("any",).
Shape = tuple[int, list[Any], list[Any], list[tuple[Any, ...]]]
ID, AMOUNT, ANY = ("int", MAX_ID), ("int", MAX_AMOUNT), ("any",)
SHAPES: dict[type[Message], Shape] = {
    Hello: (1, [MAGIC, PROTOCOL_VERSION], ["n", b"s", ["a"]], [("str", 64), ("bytes", 1, 64), ("names",)]),
    Goodbye: (2, [], ["bye"], [("str", 4096)]),
    Ping: (3, [], [1], [ID]),
    Pong: (4, [], [1], [ID]),
    Request: (5, [], [1, "m", None, 0], [ID, ("str", 64), ANY, AMOUNT]),
    Data: (6, [], [1, b"d"], [ID, ("bytes", 1, MAX_FRAME)]),
    Response: (7, [], [1, None], [ID, ANY]),
    Error: (8, [], [1, "c", "m"], [ID, ("str", 64), ("str", 4096)]),
    Cancel: (9, [], [1], [ID]),
    Credit: (10, [], [1, 1], [ID, AMOUNT]),
}


def wire_of(cls: type[Message], index: int | None = None, value: Any = None) -> bytes:
    """The valid *cls* message in msgpack, with field *index* (0-based) replaced by *value*."""
    kind, prefix, fields, _ = SHAPES[cls]
    fields = list(fields)
    if index is not None:
        fields[index] = value
    return pack([kind, *prefix, *fields])


def wrong_values(rule: tuple[Any, ...]) -> list[tuple[str, Any]]:
    """Values a field of *rule* must refuse (within msgpack's own limits), each with its name."""
    match rule:
        case ("int", limit):
            return [
                ("true", True),
                ("false", False),
                ("negative", -1),
                ("most negative", -(2**63)),
                ("above the maximum", limit + 1),
                ("2**64-1", 2**64 - 1),
                ("float", 1.0),
                ("str", "1"),
                ("bytes", b"\x01"),
                ("nil", None),
                ("array", [1]),
            ]
        case ("str", limit):
            return [
                ("bytes", b"x"),
                ("int", 1),
                ("bool", True),
                ("nil", None),
                ("array", ["x"]),
                ("map", {"x": "y"}),
                ("one character too long", "x" * (limit + 1)),
                ("one wide character too long", "é" * (limit + 1)),
            ]
        case ("bytes", low, high):
            wrong = [("str", "x" * low), ("int", 1), ("nil", None), ("array", [b"x"]), ("bool", False)]
            if low > 0:
                wrong.append(("empty", b""))
            if high < 1 << 16:
                wrong.append(("one byte too long", b"x" * (high + 1)))
            return wrong
        case ("names",):
            return [
                ("str", "a"),
                ("nil", None),
                ("map", {"a": "b"}),
                ("int in the list", ["a", 1]),
                ("bytes in the list", [b"a"]),
                ("nil in the list", [None]),
                ("nested list", [["a"]]),
                ("a name too long", ["x" * 4097]),
                ("one name too many", ["a"] * 1025),
            ]
    return []  # "any" takes anything msgpack accepts


FIELD_CASES: list[Any] = [
    pytest.param(
        wire_of(cls, i, value), f"{cls.__name__} field {i + 1}:", id=f"{cls.__name__}-{i + 1}-{name}"
    )
    for cls, (_, _, _, rules) in SHAPES.items()
    for i, rule in enumerate(rules)
    for name, value in wrong_values(rule)
]


@pytest.mark.parametrize(("data", "reason"), FIELD_CASES)
def test_a_field_of_the_wrong_type_or_size_is_refused(data: bytes, reason: str) -> None:
    assert reason in refused(data)


def test_every_field_has_wrong_values() -> None:
    for cls, (_, _, fields, rules) in SHAPES.items():
        assert len(fields) == len(rules), cls
        assert all(wrong_values(r) for r in rules if r != ANY), cls
    assert len(FIELD_CASES) > 100


ARITY_CASES: list[Any] = [
    pytest.param(
        pack(
            [kind, *prefix, *fields[: len(fields) + change]]
            if change < 0
            else [kind, *prefix, *fields, *[0] * change]
        ),
        f"{cls.__name__}: expected {len(fields)} fields, got {len(fields) + change}",
        id=f"{cls.__name__}{change:+d}",
    )
    for cls, (kind, prefix, fields, _) in SHAPES.items()
    for change in (-1, +1, +5)
]


@pytest.mark.parametrize(("data", "reason"), ARITY_CASES)
def test_a_message_of_the_wrong_arity_is_refused(data: bytes, reason: str) -> None:
    assert reason in refused(data)


def test_the_shapes_themselves_decode() -> None:
    for cls in SHAPES:
        assert type(decode(wire_of(cls))) is cls


# (what, a field's value exactly at its bound, the message it makes)
BOUNDS: list[tuple[str, bytes, Message]] = [
    ("id 0", wire_of(Ping, 0, 0), Ping(0)),
    ("the largest id", wire_of(Cancel, 0, MAX_ID), Cancel(MAX_ID)),
    ("the largest window", wire_of(Request, 3, MAX_AMOUNT), Request(1, "m", None, MAX_AMOUNT)),
    ("the largest credit", wire_of(Credit, 1, MAX_AMOUNT), Credit(1, MAX_AMOUNT)),
    ("a 64-character method", wire_of(Request, 1, "é" * 64), Request(1, "é" * 64, None)),
    ("an empty name", wire_of(Hello, 0, ""), Hello("", b"s", ("a",))),
    ("a 64-byte store id", wire_of(Hello, 1, b"\xff" * 64), Hello("n", b"\xff" * 64, ("a",))),
    ("1024 arenas", wire_of(Hello, 2, ["a"] * 1024), Hello("n", b"s", ("a",) * 1024)),
    ("no arenas", wire_of(Hello, 2, []), Hello("n", b"s", ())),
    ("a 4096-character arena", wire_of(Hello, 2, ["x" * 4096]), Hello("n", b"s", ("x" * 4096,))),
    ("a 4096-character goodbye", wire_of(Goodbye, 0, "€" * 4096), Goodbye("€" * 4096)),
    ("a 4096-character error", wire_of(Error, 2, "x" * 4096), Error(1, "c", "x" * 4096)),
    ("a one-byte part", wire_of(Data, 1, b"\x00"), Data(1, b"\x00")),
    ("the largest part", wire_of(Data, 1, b"\x00" * MAX_FRAME), Data(1, b"\x00" * MAX_FRAME)),
    ("args keyed by str", wire_of(Request, 2, {"a": {"b": [1]}}), Request(1, "m", {"a": {"b": [1]}})),
]


@pytest.mark.parametrize(("data", "message"), [b[1:] for b in BOUNDS], ids=[b[0] for b in BOUNDS])
def test_values_at_the_bounds_are_accepted(data: bytes, message: Message) -> None:
    assert decode(data) == message


# ---------------------------------------------------------------- malformed inputs, the rest

HELLO_WIRE = encode(Hello("n", b"s", ()))
ARGS = bytes.fromhex("95") + pack(5) + pack(1) + pack("m")  # a request but its args and window
MALFORMED: list[tuple[str, bytes, str]] = [
    ("nothing", b"", "not a msgpack message"),
    ("truncated", encode(Goodbye("bye"))[:-1], "not a msgpack message"),
    ("truncated header", bytes.fromhex("dc00"), "not a msgpack message"),
    ("trailing nil", encode(Ping(1)) + b"\xc0", "not a msgpack message"),
    ("trailing zero", encode(Ping(1)) + b"\x00", "not a msgpack message"),
    ("two messages", encode(Ping(1)) + encode(Ping(2)), "not a msgpack message"),
    ("an int", pack(3), "expected a message array, got 3"),
    ("a str", pack("ping"), "expected a message array, got str"),
    ("nil", pack(None), "expected a message array, got None"),
    ("bytes", pack(b"\x92\x03\x01"), "expected a message array, got bytes"),
    ("a map", pack({"kind": 3, "token": 1}), "expected a message array, got dict"),
    ("an empty array", pack([]), "expected a message array, got list of length 0"),
    ("kind 0", pack([0, 1]), "unknown message kind 0"),
    ("kind 11", pack([11, 1]), "unknown message kind 11"),
    ("kind 99", pack([99]), "unknown message kind 99"),
    ("kind -1", pack([-1, 1]), "unknown message kind -1"),
    ("kind 2**64-1", pack([2**64 - 1, 1]), "unknown message kind 18446744073709551615"),
    ("kind as a string", pack(["ping", 1]), "unknown message kind str"),
    ("kind as its number in a string", pack(["3", 1]), "unknown message kind str"),
    ("kind as bytes", pack([b"\x03", 1]), "unknown message kind bytes"),
    ("kind as true (== 1)", pack([True, MAGIC, 1, "n", b"s", []]), "unknown message kind True"),
    ("kind as a float", pack([3.0, 1]), "unknown message kind 3.0"),
    ("kind as nil", pack([None, 1]), "unknown message kind None"),
    ("kind as an array", pack([[3], 1]), "unknown message kind list"),
    ("invalid utf-8", bytes.fromhex("9202a2ffff"), "not a msgpack message"),
    ("reserved byte 0xc1", bytes.fromhex("9203c1"), "not a msgpack message"),
    ("a str beyond msgpack's limit", pack([2, "x" * 70_000]), "not a msgpack message"),
    ("bytes beyond the largest frame", pack([6, 1, b"x" * (MAX_FRAME + 1)]), "not a msgpack message"),
    # extension types, anywhere
    ("ext 5", pack([7, 1, msgpack.ExtType(5, b"x")]), "not a msgpack message"),
    ("ext -1, a timestamp", pack([7, 1, msgpack.Timestamp(1, 0)]), "not a msgpack message"),
    ("ext -1, a 32-bit timestamp", bytes.fromhex("930701d6ff00000001"), "not a msgpack message"),
    ("ext -1, a 96-bit timestamp", pack([7, 1, msgpack.Timestamp(2**40, 5)]), "not a msgpack message"),
    ("ext -1 without data", bytes.fromhex("930701c700ff"), "not a msgpack message"),
    ("ext 5 without data", bytes.fromhex("930701c70005"), "not a msgpack message"),
    ("ext 127", pack([7, 1, msgpack.ExtType(127, b"")]), "not a msgpack message"),
    ("ext as the kind", pack([msgpack.ExtType(3, b"\x01")]), "not a msgpack message"),
    ("ext in request args", pack([5, 1, "m", {"a": [msgpack.ExtType(1, b"")]}, 0]), "not a msgpack message"),
    ("ext as an id", pack([3, msgpack.ExtType(0, b"\x01")]), "not a msgpack message"),
    # maps keyed by anything but strings
    ("int map key in args", ARGS + bytes.fromhex("81") + pack(1) + pack("x") + pack(0), "int is not allowed"),
    ("nested int map key in args", pack([5, 1, "m", {"a": {1: 2}}, 0]), "int is not allowed for map key"),
    ("float map key in args", pack([5, 1, "m", {1.5: 2}, 0]), "float is not allowed for map key"),
    ("nil map key in args", pack([5, 1, "m", {None: 2}, 0]), "not allowed for map key"),
    ("bool map key in args", pack([5, 1, "m", {True: 2}, 0]), "not allowed for map key"),
    ("array map key in args", ARGS + bytes.fromhex("81910101") + pack(0), "not a msgpack message"),
    ("int map key in a response", pack([7, 1, [{2: "x"}]]), "int is not allowed for map key"),
    # hellos
    ("wrong magic", pack([1, "syncthing", 1, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("magic in capitals", pack([1, MAGIC.upper(), 1, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("magic as bytes", pack([1, MAGIC.encode(), 1, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("magic with a nul", pack([1, MAGIC + "\x00", 1, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("no magic", pack([1, 1, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("magic alone", pack([1, MAGIC]), "Hello: not a realizefs hello"),
    ("kind alone", pack([1]), "Hello: not a realizefs hello"),
    ("version as a str", pack([1, MAGIC, "1", "n", b"s", []]), "Hello: not a realizefs hello"),
    ("version as true (== 1)", pack([1, MAGIC, True, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("version as a float", pack([1, MAGIC, 1.0, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("version as nil", pack([1, MAGIC, None, "n", b"s", []]), "Hello: not a realizefs hello"),
    ("hello without its fields", pack([1, MAGIC, 1]), "Hello: expected 3 fields, got 0"),
]


@pytest.mark.parametrize(("data", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_inputs_are_refused(data: bytes, reason: str) -> None:
    why = refused(data)
    assert reason in why, why


@pytest.mark.parametrize(("name", "message", "wire"), VECTORS, ids=[v[0] for v in VECTORS])
def test_every_prefix_of_a_vector_is_refused(name: str, message: Message, wire: str) -> None:
    data = bytes.fromhex(wire)
    for end in range(len(data)):
        assert "not a msgpack message" in refused(data[:end]), (name, end)


# ---------------------------------------------------------------- bombs and depth

BOMBS: dict[str, str] = {
    "array of 2**32-1": "ddffffffff",
    "map of 2**32-1": "dfffffffff",
    "bytes of 4 GiB": "c6ffffffff",
    "str of 4 GiB": "dbffffffff",
    "ext of 4 GiB": "c9ffffffff05",
    "array just above the limit": "dd00010001",
    "map just above the limit": "df00010001",
}


@pytest.mark.parametrize("where", ["the message", "a response's value", "a request's args"])
@pytest.mark.parametrize("header", BOMBS.values(), ids=BOMBS.keys())
def test_a_bomb_fails_fast_without_allocating(header: str, where: str) -> None:
    before = {"the message": "", "a response's value": "930701", "a request's args": "950501a16d"}
    data = bytes.fromhex(before[where] + header) + b"\x00" * 64
    tracemalloc.start()
    try:
        why = refused(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "not a msgpack message" in why, why
    assert peak < 1 << 20, peak  # what it declares is never allocated (nor walked: no time is measured)


@pytest.mark.parametrize(
    ("what", "data"),
    [
        ("arrays in a response", bytes.fromhex("930701") + b"\x91" * 100_000 + b"\xc0"),
        ("maps in a response", bytes.fromhex("930701") + b"\x81\xa1k" * 50_000 + b"\xc0"),
        ("arrays in request args", bytes.fromhex("950501a16d") + b"\x91" * 100_000 + b"\xc0\x00"),
        ("arrays as the message", b"\x91" * 100_000 + b"\xc0"),
        ("arrays, unterminated", bytes.fromhex("930701") + b"\x91" * 100_000),
    ],
)
def test_deep_nesting_is_refused(what: str, data: bytes) -> None:
    assert "not a msgpack message" in refused(data)


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize("version", [0, 2, 255, 2**32, 2**64 - 1, -1])
def test_a_hello_of_another_version_says_which(version: int) -> None:
    with pytest.raises(IncompatibleVersion) as info:
        decode(pack([1, MAGIC, version, "n", b"s", []]))
    assert info.value.version == version
    assert isinstance(info.value, ProtocolError)
    assert str(info.value) == (
        f"protocol version {version} is not supported (this peer speaks {PROTOCOL_VERSION})"
    )


def test_another_version_is_recognised_before_its_fields() -> None:
    """A later version may shape its hello differently: it is still told apart by its version."""
    for future in ([1, MAGIC, 2], [1, MAGIC, 2, {"name": "n"}], [1, MAGIC, 3, 1, 2, 3, 4, 5, 6]):
        with pytest.raises(IncompatibleVersion) as info:
            decode(pack(future))
        assert info.value.version == future[2]


def test_an_encoded_hello_of_another_version_is_refused() -> None:
    with pytest.raises(IncompatibleVersion) as info:
        decode(encode(Hello("n", b"s", ("a",), version=PROTOCOL_VERSION + 1)))
    assert info.value.version == PROTOCOL_VERSION + 1


@pytest.mark.parametrize("magic", ["syncthing", "", MAGIC.upper(), None, 1])
def test_a_hello_with_the_wrong_magic_is_a_protocol_error_not_a_version(magic: Any) -> None:
    for version in (PROTOCOL_VERSION, PROTOCOL_VERSION + 1):
        with pytest.raises(ProtocolError) as info:
            decode(pack([1, magic, version, "n", b"s", []]))
        assert type(info.value) is ProtocolError
        assert str(info.value) == "Hello: not a realizefs hello"


# ---------------------------------------------------------------- what we may send

UNSENDABLE: list[tuple[str, Message]] = [
    ("an error message over 4096 characters", Error(1, "internal", "y" * 4097)),
    ("an error code over 64 characters", Error(1, "c" * 65, "x")),
    ("a goodbye over 4096 characters", Goodbye("z" * 4097)),
    ("a method over 64 characters", Request(1, "m" * 65, None)),
    ("a string longer than msgpack's limit", Response(1, "s" * (70 << 10))),
    ("an integer msgpack cannot carry", Response(1, 2**64)),
    ("a type msgpack cannot carry", Response(1, {"x": object()})),
    ("a map keyed by integers", Request(1, "m", {1: 2})),
    ("more than a frame holds", Response(1, b"b" * (3 << 20))),
]


@pytest.mark.parametrize(("what", "message"), UNSENDABLE, ids=[u[0] for u in UNSENDABLE])
def test_what_a_peer_would_refuse_is_never_encoded(what: str, message: Message) -> None:
    with pytest.raises(Unencodable):
        encode(message)


def test_the_bounds_themselves_are_sent() -> None:
    for message in (Error(1, "c" * 64, "y" * 4096), Goodbye("z" * 4096), Request(1, "m" * 64, {"k": [b"v"]})):
        assert decode(encode(message)) == message
