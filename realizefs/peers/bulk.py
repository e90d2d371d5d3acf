"""Bulk lanes: chunk requests and their answers on a second TLS connection, in blocking threads.

A control connection (`realizefs.peers.connection`) carries every decision;
the chunks themselves travel on its lanes, where a thread per end runs
little Python per chunk and OpenSSL and the socket calls release the GIL
(the measurements are in docs/design.md, "Transfers off the FUSE thread").

Opening one, always by the peer that dialed the control connection, after
its hellos:

1. the dialer asks the listener for the connection's token (`BULK_TOKEN`, a
   request on the control connection, answered by `Connection` itself: 32
   random bytes the listener chose for that connection alone);
2. it dials the same address in a thread (`dial_lane`): the TLS handshake and
   key checks of `realizefs.peers.transport.dial`; the listener authenticates
   it as any connection and sends its hello, proving it accepted our key;
3. its first frame is `Request(1, OPEN_LANE, {"token", "role"})` where a hello
   would be: the listener tells a lane from a control connection by it, and
   accepts it (`Response`) only if the token is that of a live control
   connection with the same peer key and that connection has no lane of that
   role yet; otherwise it says `Goodbye` with the reason and closes it.

*role* says which end asks: ``fetch`` (the dialer asks, the listener
serves) or ``serve``, the reverse; a dialer with chunks to serve opens both.
From then on the asking end (`Fetcher`) sends ``chunk`` requests, ids from 1
upwards, at most `DEPTH` unanswered, and the serving end (`Server`) answers
each at once, in order, with the chunk (`Response`) or an `Error`. Frames and
messages are those of the control connection (`frames`, `messages`).
Anything else, or anything malformed, closes that lane only, with the reason
logged; the control connection and its reads go on (chunks then travel as
``chunk`` requests on it). A lane ends with its control connection.

Threads: each end owns its socket in one thread (plus `dial_lane`, run in a
worker thread by the household). The trio side (`Fetcher.fetch`,
`close`) only queues work and shuts the socket down; answers come back to
the trio loop with `TrioToken.run_sync_soon`. `Server` calls the layer
above's *chunks* callable in its thread.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import select
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3
import trio

from realizefs.errors import ConnectionLost, ProtocolError, RemoteError
from realizefs.peers.frames import FrameDecoder, encode_frame
from realizefs.peers.messages import (
    MAX_TEXT,
    Error,
    Goodbye,
    Hello,
    Message,
    Request,
    Response,
    decode,
    encode,
)
from realizefs.peers.transfers import Transfers
from realizefs.peers.transport import BlockingTls, Refused, dial_blocking
from realizefs.types import Address

log = logging.getLogger(__name__)

BULK_TOKEN = "bulk-token"  # on the control connection: the token binding lanes to it
OPEN_LANE = "bulk-lane"  # a lane's first frame
CHUNK = "chunk"
TOKEN_BYTES = 32
DEPTH = 16  # chunk requests a fetcher keeps unanswered at most
FETCH, SERVE = "fetch", "serve"  # the dialer's role on a lane
ROLES = (FETCH, SERVE)

ChunkSource = Callable[[bytes], bytes | None]  # a chunk's bytes by its hash, in the server's thread


class BadChunk(Exception):
    """A peer answered a chunk request with bytes that do not match the hash."""


def lane_request(token: bytes, role: str) -> Request:
    return Request(1, OPEN_LANE, {"token": token, "role": role})


def lane_args(request: Request) -> tuple[bytes, str] | None:
    """The token and role of a lane's first frame; None if malformed."""
    args = request.args
    if type(args) is not dict or set(args) != {"token", "role"}:
        return None
    token, role = args["token"], args["role"]
    if type(token) is not bytes or len(token) != TOKEN_BYTES or role not in ROLES:
        return None
    return token, role


class Reader:
    """Messages from a lane's stream, one or all that have arrived (the lane's thread)."""

    def __init__(self, stream: BlockingTls) -> None:
        self.stream = stream
        self._decoder = FrameDecoder()
        self._frames: deque[bytes] = deque()

    def _fill(self) -> None:
        self._frames.extend(self._decoder.feed(b""))  # an error found after earlier frames
        while not self._frames:
            data = self.stream.receive()
            if not data:
                how = "in the middle of a frame" if self._decoder.pending else "by the peer"
                raise ConnectionLost(f"closed {how}")
            self._frames.extend(self._decoder.feed(data))

    def one(self) -> Message:
        """The next message; `ConnectionLost` at the end, `ProtocolError` if malformed."""
        if not self._frames:
            self._fill()
        return decode(self._frames.popleft())

    def all(self) -> list[Message]:
        """The next messages, at least one: all that have arrived."""
        if not self._frames:
            self._fill()
        frames, self._frames = self._frames, deque()
        return [decode(frame) for frame in frames]

    def ready(self) -> list[Message]:
        """The messages that have arrived whole, without waiting: maybe none (then wait for the
        socket and `BlockingTls.pull`); `ConnectionLost` once the peer has closed."""
        self._frames.extend(self._decoder.feed(b""))  # an error found after earlier frames
        data = self.stream.received()
        if data:
            self._frames.extend(self._decoder.feed(data))
        elif data == b"" and not self._frames:
            how = "in the middle of a frame" if self._decoder.pending else "by the peer"
            raise ConnectionLost(f"closed {how}")
        frames, self._frames = self._frames, deque()
        return [decode(frame) for frame in frames]


def dial_lane(
    address: Address,
    context: ssl.SSLContext,
    own_key: bytes,
    peer_key: bytes,
    token: bytes,
    role: str,
    timeout: float,
) -> Reader:
    """Open a lane of *role* to the peer with *peer_key* at *address* (blocking).

    Its reader (which holds what the peer sent after accepting it). `Refused` (closed) if
    the handshake fails or the peer refuses the lane, `OSError` if unreachable,
    `ConnectionLost` if the peer hangs up, all within about *timeout* seconds."""
    stream = dial_blocking(address, context, own_key, peer_key, timeout)
    try:
        reader = Reader(stream)
        hello = reader.one()
        if isinstance(hello, Goodbye):
            raise Refused(f"the peer refused: {hello.reason}")
        if not isinstance(hello, Hello):
            raise Refused(f"expected a hello, got {type(hello).__name__}")
        stream.send(encode_frame(encode(lane_request(token, role))))
        answer = reader.one()
        if isinstance(answer, Goodbye):
            raise Refused(f"the peer refused the lane: {answer.reason}")
        if not isinstance(answer, Response) or answer.id != 1:
            raise Refused(f"expected the lane's acceptance, got {type(answer).__name__}")
        stream.sock.settimeout(None)
        return reader
    except ProtocolError as exc:
        stream.close()
        raise Refused(f"malformed answer: {exc}") from None
    except BaseException:
        stream.close()
        raise


@dataclass(eq=False)
class _Wait:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: BaseException | None = None


class _End:
    """What a lane's two ends share: its thread, its stream, how it ends."""

    kind = "lane"

    def __init__(
        self, reader: Reader, name: str, on_end: Callable[[], None], counts: Transfers | None = None
    ) -> None:
        self.reader = reader
        self.counts = counts or Transfers()  # its connection's: this lane's thread counts its chunks
        self.stream = reader.stream
        self.name = name  # the peer's
        self._on_end = on_end  # called in the trio thread once the lane has ended
        self._token = trio.lowlevel.current_trio_token()
        self.closed_reason: str | None = None  # set in the trio thread
        self.thread = threading.Thread(target=self._thread, name=f"{self.kind} {name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """End the lane (trio thread): its thread stops at once, whatever it was waiting for."""
        self.stream.shutdown()

    def _thread(self) -> None:
        reason = "closed"
        try:
            self._run()
        except ProtocolError as exc:
            reason = f"protocol error: {exc}"
            log.warning("peer %s: %s: %s; closing the lane", self.name, self.kind, reason)
            with contextlib.suppress(ConnectionLost, ValueError):
                self.stream.send(encode_frame(encode(Goodbye(reason[:MAX_TEXT]))))
        except ConnectionLost as exc:
            reason = str(exc)
            log.debug("peer %s: %s ended: %s", self.name, self.kind, reason)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("peer %s: %s failed", self.name, self.kind)
        finally:
            self.stream.close()
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._ended, reason)

    def _run(self) -> None:
        raise NotImplementedError

    def _ended(self, reason: str) -> None:
        self.closed_reason = reason
        self._on_end()


class Fetcher(_End):
    """The asking end of a lane: `fetch` a chunk by its hash, verified in the lane's thread.

    Its thread waits for the socket and for new requests at once (an eventfd the trio side
    writes once per loop turn that queued some): a request queued while answers are awaited
    goes out at once, not after the next answer, so `DEPTH` requests stay unanswered while
    there are that many."""

    kind = "bulk lane (fetching)"

    def __init__(
        self, reader: Reader, name: str, on_end: Callable[[], None], counts: Transfers | None = None
    ) -> None:
        super().__init__(reader, name, on_end, counts)
        self._ids = itertools.count(1)
        self._queue: queue.SimpleQueue[tuple[int, bytes] | None] = queue.SimpleQueue()
        self._wakeup: int | None = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # closed once ended
        self._waiting: dict[int, _Wait] = {}  # trio thread only
        self._dropped: set[int] = set()  # ids no longer waited for (the thread skips those unsent)

    @property
    def in_flight(self) -> int:
        """Chunks asked for and not answered yet (trio thread)."""
        return len(self._waiting)

    async def fetch(self, chunk: bytes) -> bytes:
        """The chunk's bytes; `RemoteError` if the peer has not got it, `BadChunk` if it sent
        wrong bytes, `ConnectionLost` if the lane ended first. Cancelling drops the wait."""
        if self.closed_reason is not None:
            raise ConnectionLost(f"the lane ended: {self.closed_reason}")
        call_id = next(self._ids)
        wait = self._waiting[call_id] = _Wait()
        self._queue.put((call_id, chunk))
        # once for all the requests queued by the tasks that run before the trio loop turns
        self._token.run_sync_soon(self._wake, idempotent=True)
        try:
            await wait.done.wait()
        finally:
            if self._waiting.pop(call_id, None) is not None:
                self._dropped.add(call_id)
        if wait.error is not None:
            raise wait.error
        assert wait.data is not None
        return wait.data

    def close(self) -> None:
        self._queue.put(None)
        self._wake()
        super().close()

    def _wake(self) -> None:
        """Tell the thread something is queued (trio thread: the eventfd is open until `_ended`)."""
        if self._wakeup is not None:
            os.eventfd_write(self._wakeup, 1)

    def _deliver(self, answers: list[tuple[int, bytes | None, BaseException | None]]) -> None:
        for call_id, data, error in answers:
            self._dropped.discard(call_id)
            wait = self._waiting.pop(call_id, None)
            if wait is not None:
                wait.data, wait.error = data, error
                wait.done.set()

    def _ended(self, reason: str) -> None:
        if self._wakeup is not None:
            os.close(self._wakeup)
            self._wakeup = None
        lost = ConnectionLost(f"the lane ended: {reason}")
        self._deliver([(call_id, None, lost) for call_id in list(self._waiting)])
        super()._ended(reason)

    def _run(self) -> None:
        stream, wakeup = self.stream, self._wakeup
        assert wakeup is not None
        waiting = select.poll()
        waiting.register(stream.sock, select.POLLIN)
        waiting.register(wakeup, select.POLLIN)
        asked: dict[int, bytes] = {}  # unanswered: id -> hash
        while True:
            out: list[bytes] = []
            while len(asked) < DEPTH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    return
                call_id, chunk = item
                if call_id in self._dropped:
                    self._dropped.discard(call_id)
                    continue  # cancelled before it was sent
                asked[call_id] = chunk
                out.append(encode_frame(encode(Request(call_id, CHUNK, {"hash": chunk}))))
            if out:
                stream.send(b"".join(out))
            if messages := self.reader.ready():
                answers = [self._answer(asked, message) for message in messages]
                try:
                    self._token.run_sync_soon(self._deliver, answers)
                except trio.RunFinishedError:
                    return
                continue
            for fd, _ in waiting.poll():
                if fd == wakeup:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(wakeup)
                else:
                    stream.pull()

    def _answer(
        self, asked: dict[int, bytes], message: Message
    ) -> tuple[int, bytes | None, BaseException | None]:
        match message:
            case Response(id=call_id, value=data) if call_id in asked:
                chunk = asked.pop(call_id)
                if type(data) is not bytes or blake3.blake3(data).digest() != chunk:
                    return call_id, None, BadChunk("the bytes do not match the chunk's hash")
                self.counts.lane_chunks_in += 1  # (verified: what a damaged chunk carried is not counted)
                self.counts.lane_bytes_in += len(data)
                return call_id, data, None
            case Error(id=call_id, code=code, message=text) if call_id in asked:
                del asked[call_id]
                return call_id, None, RemoteError(code, text)
            case Goodbye(reason=reason):
                raise ConnectionLost(f"the peer said goodbye: {reason}")
            case Response(id=call_id) | Error(id=call_id):
                raise ProtocolError(f"an answer to request {call_id}, which is not waiting")
        raise ProtocolError(f"a {type(message).__name__} on a bulk lane")


class Server(_End):
    """The serving end of a lane: answers each ``chunk`` request with *chunks*' bytes, at once."""

    kind = "bulk lane (serving)"

    def __init__(
        self,
        reader: Reader,
        name: str,
        on_end: Callable[[], None],
        chunks: ChunkSource,
        counts: Transfers | None = None,
    ):
        super().__init__(reader, name, on_end, counts)
        self._chunks = chunks

    def _run(self) -> None:
        stream = self.stream
        last = 0
        while True:
            for message in self.reader.all():
                if isinstance(message, Goodbye):
                    raise ConnectionLost(f"the peer said goodbye: {message.reason}")
                if not isinstance(message, Request) or message.method != CHUNK or message.window:
                    raise ProtocolError(f"a {type(message).__name__} on a bulk lane, not a chunk request")
                if message.id <= last:
                    raise ProtocolError(f"request id {message.id} is not above the last one ({last})")
                last = message.id
                answer = self._answer(message)
                stream.send(encode_frame(encode(answer)))
                if isinstance(answer, Response):
                    self.counts.lane_chunks_out += 1
                    self.counts.lane_bytes_out += len(answer.value)

    def _answer(self, request: Request) -> Message:
        args = request.args
        chunk = args.get("hash") if type(args) is dict and len(args) == 1 else None
        if type(chunk) is not bytes or len(chunk) != 32:
            return Error(request.id, "bad-arguments", "bad arguments: expected {hash: 32 bytes}")
        try:
            data = self._chunks(chunk)
        except Exception as exc:
            log.exception("peer %s: serving a chunk failed", self.name)
            return Error(request.id, "internal", f"{type(exc).__name__}: {exc}"[:MAX_TEXT])
        if data is None:
            return Error(request.id, "not-found", "no such chunk here")
        return Response(request.id, data)
