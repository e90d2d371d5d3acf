"""Requests served through a `Methods` table: arguments checked before any method runs.

One `Connection` over trio memory streams, serving a small table of methods
whose functions record what they were given; the test plays the peer by
hand. Whatever the arguments, a method's function is called only with
arguments its schema accepts (checked here by an independent predicate),
others are answered ``bad-arguments`` naming the field, and the connection
stays up. Time is trio's `MockClock`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.peers.connection import Connection, PeerInfo, Reply, Timing
from realizefs.peers.messages import Error, Hello, Message, Ping, Pong, Request, Response, Value
from realizefs.peers.methods import Method, Methods, Served
from realizefs.peers.schema import Bool, Bytes, Default, Int, ListOf, MapOf, Nil, Optional, Record, Str
from realizefs.peers.transport import Transport
from tests.support import examples

TIMING = Timing(keepalive=10.0, timeout=30.0, hello_timeout=5.0)
THEIR_KEY = b"u" * 32
THEIR_HELLO = Hello("them", b"\x01" * 16, ("photos", "music"))
MAX_OFFSET = 1 << 40


@dataclass(frozen=True)
class Read:
    hash: bytes
    offset: int
    length: int


READ = Method(
    "read",
    Record(
        Read,
        {"hash": Bytes(32, low=32), "offset": Int(0, MAX_OFFSET), "length": Default(Int(1, 1 << 20), 65536)},
    ),
)
NAMES = Method("names", ListOf(Str(8, low=1), 4))
VECTOR = Method("vector", MapOf(Bytes(8, low=8), Int(), 3))
NOTHING = Method("nothing", Nil())
FLAG = Method("flag", Optional(Bool()))


def valid_read(v: Any) -> bool:
    if type(v) is not dict or not {"hash", "offset"} <= set(v) <= {"hash", "offset", "length"}:
        return False
    length = v.get("length", 1)
    return (
        type(v["hash"]) is bytes
        and len(v["hash"]) == 32
        and type(v["offset"]) is int
        and 0 <= v["offset"] <= MAX_OFFSET
        and type(length) is int
        and 1 <= length <= 1 << 20
    )


VALID: dict[str, Callable[[Any], bool]] = {
    "read": valid_read,
    "names": lambda v: (
        type(v) is list and len(v) <= 4 and all(type(s) is str and 1 <= len(s) <= 8 for s in v)
    ),
    "vector": lambda v: (
        type(v) is dict
        and len(v) <= 3
        and all(
            type(k) is bytes and len(k) == 8 and type(n) is int and 0 <= n < 1 << 63 for k, n in v.items()
        )
    ),
    "nothing": lambda v: v is None,
    "flag": lambda v: v is None or type(v) is bool,
}


@dataclass
class Recording:
    """The methods' functions: each records (method, peer, args) and answers a summary of its args."""

    calls: list[tuple[str, PeerInfo, object]] = field(default_factory=list)

    def methods(self) -> Methods:
        return Methods(
            Served(READ, self.read),
            Served(NAMES, self.names),
            Served(VECTOR, self.vector),
            Served(NOTHING, self.nothing),
            Served(FLAG, self.flag),
        )

    async def read(self, peer: PeerInfo, args: Read, reply: Reply) -> Value:
        self.calls.append(("read", peer, args))
        return [args.offset, args.length]

    async def names(self, peer: PeerInfo, args: tuple[str, ...], reply: Reply) -> Value:
        self.calls.append(("names", peer, args))
        return list(args)

    async def vector(self, peer: PeerInfo, args: dict[bytes, int], reply: Reply) -> Value:
        self.calls.append(("vector", peer, args))
        return args

    async def nothing(self, peer: PeerInfo, args: None, reply: Reply) -> Value:
        self.calls.append(("nothing", peer, args))
        return "ok"

    async def flag(self, peer: PeerInfo, args: bool | None, reply: Reply) -> Value:
        self.calls.append(("flag", peer, args))
        return args


Driver = Callable[[Connection, Transport], Awaitable[None]]


def run(driver: Driver, methods: Methods) -> Connection:
    """A listening-side connection serving *methods*, past its hellos, driven by *driver*."""
    ours, theirs = trio.testing.memory_stream_pair()
    conn = Connection(
        Transport(ours, THEIR_KEY, "test", dialed=False),
        "them",
        Hello("us", b"\x02" * 16, ()),
        methods,
        TIMING,
    )
    peer = Transport(theirs, b"k" * 32, "test", dialed=True)

    async def main() -> None:
        with trio.fail_after(600):  # virtual seconds
            async with trio.open_nursery() as nursery:
                await peer.send(THEIR_HELLO)
                await conn.open()
                assert isinstance(await peer.receive(), Hello)
                nursery.start_soon(conn.run)
                await driver(conn, peer)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return conn


async def answer(peer: Transport) -> Message:
    while isinstance(message := await peer.receive(), Ping):
        await peer.send(Pong(message.token))
    return message


def test_a_method_gets_the_peer_and_its_typed_arguments() -> None:
    served = Recording()

    async def driver(conn: Connection, peer: Transport) -> None:
        await peer.send(Request(1, "read", {"hash": b"h" * 32, "offset": 7}))
        assert await answer(peer) == Response(1, [7, 65536])

    run(driver, served.methods())
    [(method, info, args)] = served.calls
    assert (method, args) == ("read", Read(b"h" * 32, 7, 65536))
    assert info == PeerInfo("them", THEIR_KEY, THEIR_HELLO, "test", outbound=False)
    assert (info.store_id, info.arenas, info.version) == (b"\x01" * 16, ("photos", "music"), 1)


def test_unknown_methods_and_bad_arguments_are_answered_and_the_connection_stays() -> None:
    served = Recording()

    async def driver(conn: Connection, peer: Transport) -> None:
        await peer.send(Request(1, "write", None))
        assert await answer(peer) == Error(1, "unknown-method", "this peer does not serve 'write'")
        await peer.send(Request(2, "read", {"hash": b"h" * 32, "offset": -1}))
        assert await answer(peer) == Error(
            2,
            "bad-arguments",
            f"bad arguments: args.offset: expected an integer from 0 to {MAX_OFFSET}, got -1",
        )
        await peer.send(Request(3, "names", ["ok", "far too long"]))
        bad = await answer(peer)
        assert isinstance(bad, Error) and bad.message.startswith("bad arguments: args[1]: "), bad
        await peer.send(Request(4, "nothing", None))
        assert await answer(peer) == Response(4, "ok")
        assert conn.closed_reason is None

    run(driver, served.methods())
    assert [call[0] for call in served.calls] == ["nothing"]


def test_a_table_serves_each_method_once() -> None:
    served = Recording()
    with pytest.raises(ValueError, match="served twice"):
        Methods(Served(NOTHING, served.nothing), Served(NOTHING, served.nothing))


# Garbage: any msgpack value of small size, and near misses of valid arguments.
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.binary(max_size=40),
)
garbage = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(["hash", "offset", "length", "x"]) | st.text(max_size=4), inner, max_size=4
        )
        | st.dictionaries(st.binary(min_size=7, max_size=9), inner, max_size=4)
    ),
    max_leaves=12,
)
near_read = st.fixed_dictionaries(
    {"hash": st.binary(min_size=31, max_size=33), "offset": st.integers(-2, MAX_OFFSET + 1)},
    optional={"length": st.integers(-1, (1 << 20) + 1) | st.none(), "extra": st.none()},
)
near_names = st.lists(st.text(max_size=9) | st.binary(max_size=2), max_size=5)
near_vector = st.dictionaries(st.binary(min_size=7, max_size=9), st.integers(-1, 1 << 63), max_size=4)
requests = st.lists(
    st.tuples(
        st.sampled_from([*VALID, "unknown"]),
        st.one_of(garbage, near_read, near_names, near_vector, st.just(None)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=examples(200), deadline=None)
@given(requests)
def test_garbage_arguments_never_reach_a_method_and_the_connection_survives(
    sent: list[tuple[str, object]],
) -> None:
    served = Recording()
    answers: list[Message] = []

    async def driver(conn: Connection, peer: Transport) -> None:
        for i, (method, args) in enumerate(sent, 1):
            await peer.send(Request(i, method, args))
            answers.append(await answer(peer))
        await peer.send(Request(len(sent) + 1, "nothing", None))  # still served
        assert await answer(peer) == Response(len(sent) + 1, "ok")
        assert conn.closed_reason is None

    run(driver, served.methods())
    called = iter(served.calls)
    for i, ((method, args), reply) in enumerate(zip(sent, answers, strict=True), 1):
        assert reply.id == i  # type: ignore[union-attr]
        if method == "unknown":
            assert isinstance(reply, Error) and reply.code == "unknown-method"
        elif VALID[method](args):
            assert isinstance(reply, Response), (method, args, reply)
            name, info, _ = next(called)
            assert name == method and info.key == THEIR_KEY
        else:
            assert isinstance(reply, Error) and reply.code == "bad-arguments", (method, args, reply)
            assert reply.message.startswith("bad arguments: args")
    assert [name for name, _, _ in called] == ["nothing"]  # only the final request is left
