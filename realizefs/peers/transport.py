"""The one module that touches a peer's byte stream: TLS handshakes, frames in and out.

`Acceptor.accept` and `dial` run the TLS 1.3 handshake over a TCP stream and
check the peer's key (see `realizefs.peers.tls`), raising `Refused` with the
reason and the key offered when they refuse; they return a `Transport`.
A `Transport` sends whole messages under one send lock (frames never
interleave) and receives them from a single reader; it counts the bytes each
way. Frames are written shielded from cancellation, since half a frame
would break the stream; `abort` ends a write stuck on a dead peer. Tests make
transports over trio's memory streams to drive the protocol
without TLS.

`BlockingTls` is the same TLS over memory BIOs on a blocking socket, for a
bulk lane's thread (`realizefs.peers.bulk`): `dial_blocking` opens one with
the checks of `dial`, and `Transport.detach` hands an accepted connection
over to one. A `BlockingTls` belongs to one thread at a time, except
`shutdown`, which any thread may call to end a blocked send or receive.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from realizefs.errors import ConnectionLost, PeerRefused, ProtocolError
from realizefs.peers import tls
from realizefs.peers.frames import FrameDecoder, encode_frame
from realizefs.peers.messages import Message, decode, encode
from realizefs.types import Address

log = logging.getLogger(__name__)

RECEIVE_SIZE = 256 << 10
_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class Refused(PeerRefused):
    """A handshake refused: *reason* for the log, *offered* the key the peer offered, if known.

    *cut*: nothing was refused; the connection ended before the handshake
    (or the hellos) finished: a peer stopping or a network cut, not a
    disagreement worth a warning."""

    def __init__(self, reason: str, offered: bytes | None = None, cut: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offered = offered
        self.cut = cut


class TlsStream(trio.abc.Stream):
    """TLS over a trio socket stream, through OpenSSL's memory BIOs.

    Instead of `trio.SSLStream`, which returns one TLS record (16 KiB) per
    `receive_some` and drops the alert of a failed handshake: a receive here
    takes all the socket has (up to `RECEIVE_SIZE`) and decrypts every whole
    record in it at once, and the alert is sent. One task may send (callers
    hold a lock) while one receives. Bytes OpenSSL produces while reading (a
    TLS 1.3 key update) are sent ahead of the next write, in order. Every
    TLS failure is raised as `trio.BrokenResourceError` from the `ssl.SSLError`.
    """

    def __init__(self, tcp: trio.SocketStream, context: ssl.SSLContext, server_hostname: str | None = None):
        self.tcp = tcp
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        server_side = context.protocol == ssl.PROTOCOL_TLS_SERVER
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side, server_hostname)
        self._eof = False

    async def _flush(self) -> None:
        if data := self._outgoing.read():
            await self.tcp.send_all(data)

    async def _fill(self) -> None:
        data = await self.tcp.receive_some(RECEIVE_SIZE)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    async def do_handshake(self) -> None:
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except ssl.SSLError as exc:
                with contextlib.suppress(*_GONE):
                    await self._flush()  # the alert telling the peer why
                raise trio.BrokenResourceError from exc
            else:
                await self._flush()
                return

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[self.ssl_object.write(view) :]
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.tcp.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to about *max_bytes* of plaintext; b"" once the peer has closed."""
        limit = max_bytes or RECEIVE_SIZE
        while not self._eof:
            parts: list[bytes] = []
            size = 0
            try:
                while size < limit:
                    part = self.ssl_object.read(limit - size)
                    if not part:  # the peer's close_notify (no data yet raises SSLWantReadError)
                        self._eof = True
                        break
                    parts.append(part)
                    size += len(part)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                self._eof = True
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError from exc
            if parts:
                return b"".join(parts)
            if not self._eof:
                await self._fill()
        return b""

    async def aclose(self) -> None:
        """Send close_notify if the peer still reads, then close the socket."""
        try:
            with contextlib.suppress(ssl.SSLError):
                self.ssl_object.unwrap()
            with trio.move_on_after(1), contextlib.suppress(*_GONE):
                await self._flush()
        finally:
            await self.tcp.aclose()


@dataclass(eq=False)
class Transport:
    """An authenticated (or, in tests, trusted) stream to the peer with *peer_key*."""

    stream: trio.abc.Stream
    peer_key: bytes
    address: str
    dialed: bool  # True if we opened it
    bytes_in: int = 0
    bytes_out: int = 0
    _send_lock: trio.Lock = field(default_factory=trio.Lock)
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _received: deque[bytes] = field(default_factory=deque)

    async def send(self, message: Message) -> None:
        """Send one message; `ConnectionLost` if the stream is gone, `Unencodable` (nothing sent)."""
        data = encode_frame(encode(message))
        async with self._send_lock:
            # Shielded: a frame cancelled half-written would break the TLS stream for every
            # request on it. A send stuck on a dead peer is ended by `abort` instead.
            with trio.CancelScope(shield=True):
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise ConnectionLost(f"lost while sending: {_why(exc)}") from None
            self.bytes_out += len(data)

    async def receive(self) -> Message:
        """The next message; `ProtocolError` if malformed, `ConnectionLost` at the end."""
        if self._received:
            # Let the other tasks run between messages that arrived together (the sender
            # drains the answers to a burst of pings as the reader takes them).
            await trio.lowlevel.checkpoint()
        else:
            self._received.extend(self._decoder.feed(b""))  # an error found after earlier frames
        while not self._received:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionLost(f"lost while receiving: {_why(exc)}") from None
            if not data:
                how = "in the middle of a frame" if self._decoder.pending else "by the peer"
                raise ConnectionLost(f"connection closed {how}")
            self.bytes_in += len(data)
            self._received.extend(self._decoder.feed(data))
        return decode(self._received.popleft())

    def detach(self) -> BlockingTls:
        """This connection's TLS on a blocking socket, for a thread; the transport is done with.

        `ProtocolError` (the socket closed) if frames arrived beyond the last one received:
        the peer sent before it was answered."""
        stream = self.stream
        if not isinstance(stream, TlsStream):
            raise TypeError("only a TLS connection can be detached")
        if self._received or self._decoder.pending:
            self.abort()
            raise ProtocolError("it sent more before it was answered")
        sock = socket.socket(fileno=stream.tcp.socket.detach())
        sock.setblocking(True)
        return BlockingTls(sock, stream.ssl_object, stream._incoming, stream._outgoing)

    def abort(self) -> None:
        """Close the socket now: a send blocked on a peer that stopped reading fails at once."""
        stream = self.stream.tcp if isinstance(self.stream, TlsStream) else self.stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close the stream once a send under way has ended, politely if that takes under *timeout* s."""
        with trio.move_on_after(timeout) as scope:
            async with self._send_lock:
                with contextlib.suppress(*_GONE):
                    await self.stream.aclose()
        if scope.cancelled_caught:
            self.abort()
            with contextlib.suppress(*_GONE, trio.BusyResourceError):
                await trio.aclose_forcefully(self.stream)


class BlockingTls:
    """TLS through an `SSLObject` over a blocking socket, as `TlsStream` does on trio.

    `receive` takes all the socket holds (up to `RECEIVE_SIZE`) and decrypts every
    whole record in it. TLS failures are raised as `ConnectionLost`; so are socket
    errors, and `shutdown` (from any thread) makes a blocked call fail or end.
    """

    def __init__(
        self, sock: socket.socket, ssl_object: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
    ) -> None:
        self.sock = sock
        self.ssl_object = ssl_object
        self._incoming = incoming
        self._outgoing = outgoing
        self._lock = threading.Lock()  # between `shutdown` and `close`: never on a reused descriptor
        self._closed = False

    @classmethod
    def wrap(
        cls, sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None = None
    ) -> BlockingTls:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        server_side = context.protocol == ssl.PROTOCOL_TLS_SERVER
        ssl_object = context.wrap_bio(incoming, outgoing, server_side, server_hostname)
        return cls(sock, ssl_object, incoming, outgoing)

    def _flush(self) -> None:
        if data := self._outgoing.read():
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise ConnectionLost(f"lost while sending: {exc.strerror or exc}") from None

    def _fill(self) -> None:
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except OSError as exc:
            raise ConnectionLost(f"lost while receiving: {exc.strerror or exc}") from None
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def handshake(self) -> None:
        """The TLS handshake; `ConnectionLost` from the `ssl.SSLError` if it fails."""
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            except ssl.SSLError as exc:
                with contextlib.suppress(ConnectionLost):
                    self._flush()  # the alert telling the peer why
                raise ConnectionLost(f"TLS handshake failed ({exc.reason or exc})") from exc
            else:
                self._flush()
                return

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[self.ssl_object.write(view) :]
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS failed while sending ({exc.reason or exc})") from None
        self._flush()

    def receive(self) -> bytes:
        """The plaintext that has arrived (waiting for some); b"" once the peer has closed."""
        while (data := self.received()) is None:
            self._fill()
        return data

    def received(self) -> bytes | None:
        """The plaintext of what has arrived, without waiting: None if no whole TLS record
        is here yet, b"" once the peer has closed."""
        parts: list[bytes] = []
        try:
            while len(parts) < 64 and (part := self.ssl_object.read(RECEIVE_SIZE)):
                parts.append(part)
            if not parts:
                return b""  # the peer's close_notify (no data yet raises SSLWantReadError)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            return b"".join(parts)
        except ssl.SSLError as exc:
            raise ConnectionLost(f"TLS failed while receiving ({exc.reason or exc})") from None
        if parts:
            return b"".join(parts)
        return b"" if self._incoming.eof else None

    def pull(self) -> None:
        """Take what the socket holds into the TLS layer (waits only if it holds nothing)."""
        self._fill()

    def shutdown(self) -> None:
        """End the connection both ways now (any thread): a blocked send or receive ends."""
        with self._lock:
            if not self._closed:
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self.sock.close()


def dial_blocking(
    address: Address, context: ssl.SSLContext, own_key: bytes, expected_key: bytes, timeout: float
) -> BlockingTls:
    """`dial` for a thread: connect and check that the server holds *expected_key*.

    `Refused` if it does not, `OSError` if it cannot be reached (`TimeoutError` after
    *timeout* seconds for the connection or the handshake). The socket is left blocking
    with *timeout* set: the caller clears it once the peer has answered."""
    sock = socket.create_connection((address.host, address.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = BlockingTls.wrap(sock, context, server_hostname=tls.claim_name(own_key))
    try:
        stream.handshake()
        tls.peer_key(stream.ssl_object, expected_key, "the one configured for this peer")
    except ConnectionLost as exc:
        stream.close()
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLError):
            raise _handshake_refusal(trio.BrokenResourceError(), None, cause) from None
        raise Refused(CUT, cut=True) from None
    except tls.KeyMismatch as exc:
        stream.close()
        raise Refused(f"the server presented {exc}", exc.offered) from None
    except BaseException:
        stream.close()
        raise
    return stream


def _why(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    return str(exc) or type(exc).__name__


CUT = "closed during the TLS handshake"


def _handshake_refusal(
    exc: BaseException, offered: bytes | None = None, cause: BaseException | None = None
) -> Refused:
    if cause is not None:
        exc.__cause__ = cause
    reason = _handshake_error(exc)
    return Refused(reason, offered, cut=reason == CUT)


def _handshake_error(exc: BaseException) -> str:
    """A person's reason for a failed TLS handshake."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return "its certificate is not signed by the key it claims"
    reason = cause.reason if isinstance(cause, ssl.SSLError) else None
    if reason is not None and "ACCESS_DENIED" in reason:
        return "the peer does not accept our key (is this peer in its [[peer]] list?)"
    if reason in {"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}:
        return f"not a TLS 1.3 handshake ({reason.lower().replace('_', ' ')})"
    if isinstance(cause, ssl.SSLEOFError) or (cause is None and isinstance(exc, trio.BrokenResourceError)):
        return CUT
    return f"TLS handshake failed ({_why(exc)})"


class Acceptor:
    """Accepts TLS clients whose key is in the allowed set (which `allow` replaces)."""

    def __init__(self, private_key: Ed25519PrivateKey, allowed: frozenset[bytes]) -> None:
        self._private_key = private_key
        self._claims: weakref.WeakKeyDictionary[ssl.SSLObject, bytes | None] = weakref.WeakKeyDictionary()
        self.allow(allowed)

    def allow(self, allowed: frozenset[bytes]) -> None:
        self._server = tls.server_context(self._private_key, allowed, self._claims.__setitem__)

    async def accept(self, tcp: trio.SocketStream, address: str, timeout: float) -> Transport:
        """Handshake with a client on *tcp*; `Refused` (stream closed) if it may not in."""
        server = self._server
        stream = TlsStream(tcp, server.context)
        ssl_object = stream.ssl_object
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
            key = tls.peer_key(ssl_object, self._claims.get(ssl_object), "the one it claimed")
        except trio.TooSlowError:
            await trio.aclose_forcefully(stream)
            raise Refused(f"no TLS handshake within {timeout:g}s", self._claims.get(ssl_object)) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await trio.aclose_forcefully(stream)
            raise self._refusal(ssl_object, server.allowed, exc) from None
        except tls.KeyMismatch as exc:
            await trio.aclose_forcefully(stream)
            raise Refused(f"it presented {exc}", exc.offered or self._claims.get(ssl_object)) from None
        return Transport(stream, key, address, dialed=False)

    def _refusal(self, ssl_object: ssl.SSLObject, allowed: frozenset[bytes], exc: BaseException) -> Refused:
        if ssl_object not in self._claims:  # the handshake failed before the client named a key
            return _handshake_refusal(exc)
        offered = self._claims[ssl_object]
        if offered is None:
            return Refused("it claimed no key (not a realizefs peer?)")
        if offered not in allowed:
            return Refused("its key is not a configured peer", offered)
        return _handshake_refusal(exc, offered)


async def dial(
    address: Address,
    context: ssl.SSLContext,
    own_key: bytes,
    expected_key: bytes,
    timeout: float,
) -> Transport:
    """Connect to *address* and check that the server holds *expected_key*.

    `Refused` if it does not, `OSError` if it cannot be reached, and
    `trio.TooSlowError` if the TCP connection and handshake take over *timeout*.
    """
    with trio.fail_after(timeout):
        tcp = await trio.open_tcp_stream(address.host, address.port)
        stream = TlsStream(tcp, context, server_hostname=tls.claim_name(own_key))
        try:
            await stream.do_handshake()
            key = tls.peer_key(stream.ssl_object, expected_key, "the one configured for this peer")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await trio.aclose_forcefully(stream)
            raise _handshake_refusal(exc) from None
        except tls.KeyMismatch as exc:
            await trio.aclose_forcefully(stream)
            raise Refused(f"the server presented {exc}", exc.offered) from None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    return Transport(stream, key, str(address), dialed=True)
