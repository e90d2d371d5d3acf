"""One authenticated connection to a peer: hellos, requests both ways, streams, keepalive.

`Connection.open` exchanges hellos (the dialing side waits for the
listener's first, see `realizefs.peers.tls`), refusing another protocol
version with a reason sent to the peer and raised as `Refused`. `run` is the
connection's life, in three tasks and the requests it serves:

- the **reader**, the only task that receives. It never waits on the network
  to send: what it must answer (pongs, "busy") goes through an outbox
  drained by the **sender** task, so two peers both blocked sending can
  never stop each other's readers. Only a full outbox (a peer sending a
  flood of pings) makes the reader wait; a peer that floods and never reads
  our answers then goes silent for us and the keeper drops it.
- the **keeper**, which pings every `keepalive` seconds (the pong gives the
  round-trip time) and ends the connection when nothing at all has arrived
  for `timeout` seconds.
- one task per request the peer sent us, running the `Handler`, cancelled if
  the peer sends `Cancel`.

Flow control is per request, in bytes: a request states the window it can
buffer, the responder may send `Data` while the credit it holds is positive
(so at most the window plus one part is ever buffered), and the requester
grants credit back as its reader consumes. A peer that sends beyond its
credit, answers a request never made, reuses an id or sends anything
malformed is a protocol error: the connection is closed with the reason,
logged and sent as a goodbye; nothing else is affected.

Bulk lanes (`realizefs.peers.bulk`): the listening side answers the
`BULK_TOKEN` request itself with its `bulk_token` (when the household set
one); on that side `open` returns, instead of exchanging hellos, the first
frame of a connection that is a lane. `lane` is this connection's fetching
lane, if open; `lanes` every lane bound to it, closed with it by the household.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Protocol

import trio

from realizefs.errors import ConnectionLost, ProtocolError, RemoteError
from realizefs.peers.bulk import BULK_TOKEN, CHUNK, OPEN_LANE, Fetcher, Server
from realizefs.peers.frames import MAX_FRAME
from realizefs.peers.messages import (
    MAX_NAME,
    MAX_TEXT,
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
    Value,
)
from realizefs.peers.transfers import Transfers
from realizefs.peers.transport import Refused, Transport

log = logging.getLogger(__name__)

MAX_DATA = 1 << 20  # the largest `Data` payload; a frame also holds its envelope
MAX_SERVING = 256  # requests from one peer served at once; more are answered "busy"
OUTBOX = 64  # answers the reader may queue before it waits for the sender
DEFAULT_WINDOW = 4 << 20
GRACE = 1.0  # seconds an ending connection's writes (a goodbye) get before its socket is cut
assert MAX_DATA + 64 <= MAX_FRAME


def _error(call_id: int, code: str, message: str) -> Error:
    """An error answer within the bounds the peer accepts."""
    return Error(call_id, code[:MAX_NAME], message[:MAX_TEXT])


class _Lost(ConnectionLost):
    """This connection ended while a handler was streaming on it."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is at the other end of a connection: its configured name, its proven key, its hello."""

    name: str  # as this peer's config calls it
    key: bytes  # its Ed25519 public key, proven by the TLS handshake
    hello: Hello  # what it said of itself: its store id (for resync), its arenas, its protocol version
    address: str  # where the connection comes from or goes to
    outbound: bool  # whether we dialed it

    @property
    def store_id(self) -> bytes:
        return self.hello.store_id

    @property
    def arenas(self) -> tuple[str, ...]:
        return self.hello.arenas

    @property
    def version(self) -> int:
        return self.hello.version


class Handler(Protocol):
    """What the layer above does with a request from a peer (`realizefs.peers.methods.Methods`).

    Returns the final answer; may first stream parts with ``reply.send``;
    raises `RemoteError` to answer with an error.
    """

    async def handle(self, peer: PeerInfo, request: Request, reply: Reply) -> Value: ...


@dataclass(frozen=True)
class Timing:
    keepalive: float  # seconds between pings
    timeout: float  # a peer silent this long is dead
    hello_timeout: float  # the time the hello exchange may take


class Reply:
    """The responder's side of one request: `send` streams a part within the credit."""

    def __init__(self, connection: Connection, request: Request) -> None:
        self._connection = connection
        self._id = request.id
        self.credit = request.window
        self.streams = request.window > 0
        self._lot = trio.lowlevel.ParkingLot()

    def grant(self, amount: int) -> None:
        self.credit += amount
        self._lot.unpark_all()

    async def send(self, data: bytes) -> None:
        """Send *data* (1 byte to `MAX_DATA`) as a part of the answer, once credit allows."""
        if not self.streams:
            raise RemoteError("not-a-stream", "the request asked for no streamed data")
        if not 0 < len(data) <= MAX_DATA:
            raise ValueError(f"a part holds 1 to {MAX_DATA} bytes, not {len(data)}")
        while self.credit <= 0:
            await self._lot.park()
        self.credit -= len(data)
        try:
            await self._connection.transport.send(Data(self._id, data))
        except ConnectionLost as exc:
            raise _Lost(str(exc)) from None


@dataclass(eq=False)
class _Call:
    """One of our requests, waiting for its answer."""

    window: int
    parts: trio.MemorySendChannel[bytes]
    outstanding: int = 0  # bytes received beyond the credit granted back
    done: trio.Event = field(default_factory=trio.Event)
    value: Value = None
    error: BaseException | None = None

    def finish(self, value: Value = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.parts.close()
        self.done.set()


class Stream:
    """The requester's side of a streamed answer: iterate for the parts, then read `result`."""

    def __init__(
        self, connection: Connection, call_id: int, call: _Call, parts: trio.MemoryReceiveChannel[bytes]
    ):
        self._connection = connection
        self._id = call_id
        self._call = call
        self._parts = parts
        self._consumed = 0

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        try:
            data = await self._parts.receive()
        except trio.EndOfChannel:
            if self._call.error is not None:
                raise self._call.error from None
            raise StopAsyncIteration from None
        self._consumed += len(data)
        if self._consumed >= self._call.window // 2 and not self._call.done.is_set():
            self._call.outstanding -= self._consumed
            await self._connection.transport.send(Credit(self._id, self._consumed))
            self._consumed = 0
        return data

    @property
    def result(self) -> Value:
        """The final answer, once every part has been read."""
        if not self._call.done.is_set():
            raise RuntimeError("the stream has not ended")
        if self._call.error is not None:
            raise self._call.error
        return self._call.value


class Connection:
    """A live connection to the peer *name* over *transport*."""

    def __init__(
        self,
        transport: Transport,
        name: str,
        hello: Hello,
        handler: Handler,
        timing: Timing,
    ) -> None:
        self.transport = transport
        self.name = name
        self.hello = hello
        self.handler = handler
        self.timing = timing
        self.peer_hello: Hello | None = None
        self._peer: PeerInfo | None = None
        self.rtt: float | None = None
        self.closed_reason: str | None = None
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._serving: dict[int, tuple[trio.CancelScope, Reply]] = {}
        self._last_peer_id = 0
        self._outbox_in, self._outbox_out = trio.open_memory_channel[Message](OUTBOX)
        self._last_received = 0.0
        self._pings: dict[int, float] = {}
        self._cancel_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._closing: str | None = None
        self._ending = trio.Event()
        self._protocol_error: ProtocolError | None = None
        self.bulk_token: bytes | None = None  # the listener's token binding lanes to this connection
        self.lane: Fetcher | None = None  # the lane this side fetches chunks on, while it lives
        self.lanes: list[Fetcher | Server] = []  # every lane bound to this connection
        self.transfers = Transfers()  # the chunks it and its lanes moved

    # ------------------------------------------------------------ hellos

    async def open(self) -> Request | None:
        """Exchange hellos; `Refused` if the peer refuses or speaks another version.

        On the listening side, a connection opened as a bulk lane sends, instead of its
        hello, the request opening the lane: it is returned (the hellos are not done)."""
        with trio.move_on_after(self.timing.hello_timeout) as scope:
            try:
                if not self.transport.dialed:
                    await self.transport.send(self.hello)
                first = await self._receive_hello()
                if isinstance(first, Request):
                    return first
                self.peer_hello = first
                if self.transport.dialed:
                    await self.transport.send(self.hello)
                t = self.transport
                self._peer = PeerInfo(self.name, t.peer_key, self.peer_hello, t.address, t.dialed)
            except ConnectionLost as exc:
                raise Refused(f"the peer closed the connection before its hello ({exc})", cut=True) from None
        if scope.cancelled_caught:
            raise Refused(f"no hello within {self.timing.hello_timeout:g}s")
        return None

    @property
    def peer(self) -> PeerInfo:
        """The peer, once `open` has exchanged hellos."""
        if self._peer is None:
            raise RuntimeError("the connection has not been opened")
        return self._peer

    async def _receive_hello(self) -> Hello | Request:
        try:
            message = await self.transport.receive()
        except IncompatibleVersion as exc:
            await self._say_goodbye(str(exc))
            raise Refused(str(exc)) from None
        except ProtocolError as exc:
            await self._say_goodbye(f"malformed hello: {exc}")
            raise Refused(f"malformed hello: {exc}") from None
        if isinstance(message, Goodbye):
            raise Refused(f"the peer refused: {message.reason}")
        if isinstance(message, Request) and message.method == OPEN_LANE and not self.transport.dialed:
            return message
        if not isinstance(message, Hello):
            await self._say_goodbye("expected a hello")
            raise Refused(f"expected a hello, got {type(message).__name__}")
        return message

    async def _say_goodbye(self, reason: str) -> None:
        with trio.move_on_after(1), suppress(ConnectionLost):
            await self.transport.send(Goodbye(reason[:MAX_TEXT]))

    # ------------------------------------------------------------ life

    async def run(self) -> None:
        """Serve the connection until it ends; `closed_reason` then says why."""
        self._last_received = trio.current_time()
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._abort_when_stuck)
                with self._cancel_scope:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        for task in (self._reader, self._sender, self._keeper):
                            nursery.start_soon(self._until_it_ends, task)
                if self._protocol_error is not None:
                    where = f"peer {self.name} ({self.transport.address})"
                    log.warning("%s: %s; closing the connection", where, self._closing)
                    await self._say_goodbye(self._closing or "protocol error")
                outer.cancel_scope.cancel()
        finally:
            self.closed_reason = self._closing or "closed"
            lost = ConnectionLost(f"the connection to {self.name} ended: {self.closed_reason}")
            for call in self._calls.values():
                call.finish(error=lost)
            self._calls.clear()
            with trio.CancelScope(shield=True):
                await self.transport.aclose()

    async def _abort_when_stuck(self) -> None:
        """Once the connection is ending, give its writes `GRACE` seconds, then cut the socket."""
        await self._ending.wait()
        await trio.sleep(GRACE)
        self.transport.abort()

    async def _until_it_ends(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run one of the connection's tasks; when it ends, for whatever reason, so does the connection."""
        try:
            await task()
        except ProtocolError as exc:
            self._protocol_error = exc
            self._end(f"protocol error: {exc}")
        except ConnectionLost as exc:
            self._end(str(exc))
        finally:
            self._end("closed")
            self._cancel_scope.cancel()

    def _end(self, reason: str) -> None:
        if self._closing is None:
            self._closing = reason
        self._ending.set()

    async def close(self, reason: str) -> None:
        """End the connection, telling the peer why."""
        if self._closing is None:
            self._end(reason)
            await self._say_goodbye(reason)
        self._cancel_scope.cancel()

    async def _reader(self) -> None:
        while True:
            message = await self.transport.receive()
            self._last_received = trio.current_time()
            await self._dispatch(message)

    async def _dispatch(self, message: Message) -> None:
        match message:
            case Data(id=call_id, payload=payload):
                call = self._call(call_id)
                if call is not None:
                    if call.window == 0 or call.outstanding >= call.window:
                        raise ProtocolError(f"data beyond the window of request {call_id}")
                    call.outstanding += len(payload)
                    call.parts.send_nowait(payload)
            case Response(id=call_id, value=value):
                if (call := self._call(call_id)) is not None:
                    del self._calls[call_id]
                    call.finish(value)
            case Error(id=call_id, code=code, message=text):
                if (call := self._call(call_id)) is not None:
                    del self._calls[call_id]
                    call.finish(error=RemoteError(code, text))
            case Request():
                await self._start_serving(message)
            case Cancel(id=call_id):
                if (serving := self._served(call_id)) is not None:
                    serving[0].cancel()
            case Credit(id=call_id, amount=amount):
                if (serving := self._served(call_id)) is not None:
                    serving[1].grant(amount)
            case Ping(token=token):
                await self._outbox_in.send(Pong(token))
            case Pong(token=token):
                sent = self._pings.pop(token, None)
                if sent is not None:
                    self.rtt = trio.current_time() - sent
            case Goodbye(reason=reason):
                raise ConnectionLost(f"the peer said goodbye: {reason}")
            case Hello():
                raise ProtocolError("a second hello")

    def _call(self, call_id: int) -> _Call | None:
        """Our request *call_id*; None if it has ended (late answers are dropped)."""
        call = self._calls.get(call_id)
        if call is None and call_id >= self._next_id:
            raise ProtocolError(f"an answer to request {call_id}, which was never made")
        return call

    def _served(self, call_id: int) -> tuple[trio.CancelScope, Reply] | None:
        serving = self._serving.get(call_id)
        if serving is None and call_id > self._last_peer_id:
            raise ProtocolError(f"a message about request {call_id}, which was never made")
        return serving

    async def _sender(self) -> None:
        async for message in self._outbox_out:
            await self.transport.send(message)

    async def _keeper(self) -> None:
        tokens = itertools.count(1)
        next_ping = trio.current_time()
        while True:
            now = trio.current_time()
            silent = now - self._last_received
            if silent >= self.timing.timeout:
                raise ConnectionLost(f"no answer for {silent:.0f}s (keepalive timeout)")
            if now >= next_ping:
                token = next(tokens)
                self._pings = {token: now}  # an unanswered older ping no longer counts
                await self.transport.send(Ping(token))
                next_ping = now + self.timing.keepalive
            await trio.sleep_until(min(next_ping, self._last_received + self.timing.timeout))

    # ------------------------------------------------------------ serving the peer

    async def _start_serving(self, request: Request) -> None:
        if request.id <= self._last_peer_id:
            raise ProtocolError(f"request id {request.id} is not above the last one ({self._last_peer_id})")
        self._last_peer_id = request.id
        if len(self._serving) >= MAX_SERVING:
            await self._outbox_in.send(_error(request.id, "busy", f"{MAX_SERVING} requests already running"))
            return
        scope = trio.CancelScope()
        self._serving[request.id] = (scope, Reply(self, request))
        assert self._nursery is not None
        self._nursery.start_soon(self._serve, request, scope)

    async def _serve(self, request: Request, scope: trio.CancelScope) -> None:
        reply = self._serving[request.id][1]
        try:
            with scope:
                try:
                    if request.method == BULK_TOKEN and self.bulk_token is not None:
                        value: Value = self.bulk_token
                    else:
                        value = await self.handler.handle(self.peer, request, reply)
                except RemoteError as exc:
                    answer: Message = _error(request.id, exc.code, exc.message)
                except _Lost:
                    raise  # this connection ended under the handler: not the handler's failure
                except Exception as exc:
                    log.exception("peer %s: serving %r failed", self.name, request.method)
                    answer = _error(request.id, "internal", f"{type(exc).__name__}: {exc}")
                else:
                    answer = Response(request.id, value)
                try:
                    await self.transport.send(answer)
                    value = answer.value if isinstance(answer, Response) else None
                    if request.method == CHUNK and type(value) is bytes:
                        self.transfers.control_chunks_out += 1
                        self.transfers.control_bytes_out += len(value)
                except Unencodable as exc:
                    log.error("peer %s: the answer to %r cannot be sent: %s", self.name, request.method, exc)
                    await self.transport.send(_error(request.id, "internal", f"unsendable answer: {exc}"))
        except ConnectionLost as exc:
            self._end(str(exc))
            self._cancel_scope.cancel()
        finally:
            del self._serving[request.id]

    # ------------------------------------------------------------ asking the peer

    def _new_call(self, window: int) -> tuple[int, _Call, trio.MemoryReceiveChannel[bytes]]:
        if self.closed_reason is not None:
            raise ConnectionLost(f"the connection to {self.name} ended: {self.closed_reason}")
        call_id = self._next_id
        self._next_id += 1
        # Unbounded, but what it holds is bounded by the window: see `_dispatch`.
        send, receive = trio.open_memory_channel[bytes](math.inf)
        call = _Call(window, send)
        self._calls[call_id] = call
        return call_id, call, receive

    async def request(self, method: str, args: Value = None) -> Value:
        """Ask the peer to run *method*; its answer, or `RemoteError` / `ConnectionLost`."""
        call_id, call, _ = self._new_call(0)
        chunk = method == CHUNK
        self.transfers.control_asking += chunk
        try:
            await self._ask(Request(call_id, method, args))
            await call.done.wait()
        finally:
            self.transfers.control_asking -= chunk
            await self._forget(call_id, call)
        if call.error is not None:
            raise call.error
        if chunk and type(call.value) is bytes:
            self.transfers.control_chunks_in += 1
            self.transfers.control_bytes_in += len(call.value)
        return call.value

    @asynccontextmanager
    async def stream(
        self, method: str, args: Value = None, window: int = DEFAULT_WINDOW
    ) -> AsyncIterator[Stream]:
        """Ask for a streamed answer; leaving the block early cancels it at the peer."""
        if window <= 0:
            raise ValueError("a stream needs a positive window")
        call_id, call, parts = self._new_call(window)
        try:
            await self._ask(Request(call_id, method, args, window))
            yield Stream(self, call_id, call, parts)
        finally:
            await self._forget(call_id, call)

    async def _ask(self, request: Request) -> None:
        try:
            await self.transport.send(request)
        except BaseException:  # Unencodable, cancelled waiting to send, or the connection lost
            # never sent whole: nothing to cancel at the peer (and if the connection ended
            # meanwhile, it forgot every call already)
            self._calls.pop(request.id, None)
            raise

    async def _forget(self, call_id: int, call: _Call) -> None:
        """Drop a call; if it had not ended, tell the peer to stop working on it."""
        if self._calls.pop(call_id, None) is not None and not call.done.is_set():
            call.finish(error=ConnectionLost("cancelled"))
            with trio.CancelScope(shield=True), trio.move_on_after(1), suppress(ConnectionLost):
                await self.transport.send(Cancel(call_id))
