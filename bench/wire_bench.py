"""Benchmark: where chunk transfers should run so that FUSE stays responsive.

Every figure comes from two processes on loopback (requester and server, so
they do not share a GIL), with TLS 1.3 mutually authenticated by Ed25519 keys
through the project's own `realizefs.peers.identity` and `realizefs.peers.tls`
(the dialer's peer key is checked as `transport.dial` does). The requester
asks for 64 KiB chunks, ``--pipeline`` N outstanding at a time, and a FUSE
stand-in answers a small request every millisecond on the requester's main
trio loop: a third process (the "kernel") sends one byte over a UNIX socket
and times the answer, so the probe's own clock never waits for our GIL.

Designs:

- **tcp**, **ssl**: baselines, one blocking thread each side streaming bytes
  (``ssl``: the requester an `ssl.SSLSocket`; the server `ssl.SSLObject` over
  memory BIOs, because the project's SNI callback expects an `SSLObject`).
- **b. one loop**: today's path, `transport.dial` / `Acceptor` (`TlsStream`) and
  a `Connection` on the main trio loop; each chunk is a ``chunk`` request
  answered by a `Response` holding the 64 KiB.
- **c. second loop**: the same `TlsStream` + `Connection` in a second
  ``trio.run`` on its own OS thread; the main loop submits requests with the
  network loop's `TrioToken.run_sync_soon` and gets finished chunks back with
  its own. **c_si**: the same with CPython's GIL switch interval at 0.5 ms.
- **d. blocking thread**: a worker thread with a blocking `ssl.SSLSocket`
  speaking the same frames (hello, ``chunk`` requests, responses) on a second,
  bulk connection; the server side is a blocking thread too. The control
  connection would stay on trio; it is idle here and left out. **d_bio**: the
  same with the requester's TLS over memory BIOs (256 KiB per `recv`).
- **e. TLS threads**: one connection; `ThreadTlsStream` does TLS and the socket
  in a reader and a writer thread under the unchanged `Transport` and
  `Connection` on the main loop.

The server for b, c and e is the project's `Acceptor` + `Connection` on one
trio loop in its own process (a serving peer's network loop, whichever thread
it runs on). For each design: MB/s, the probe's p50/p99/max during the
transfer (and idle, without a transfer), the first chunk's latency, the
requester's peak RSS growth during the transfer (VmHWM after resetting it at
the start), and each side's CPU seconds per GiB. Each figure is the median of
``--repeat`` runs, each in fresh processes. Asserts nothing about time.
Connections end with a goodbye: `TlsStream.receive_some` spins on a bare
close_notify (see docs/design.md, "Transfers off the FUSE thread").

    .venv/bin/python bench/wire_bench.py [--quick] [--size-mib N] [--repeat N] [--pipeline 1,4,16]
        [--designs idle,tcp,ssl,b,c,c_si,d,d_bio,e] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import queue
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

from realizefs.errors import RemoteError
from realizefs.peers import identity, tls
from realizefs.peers.connection import Connection, PeerInfo, Reply, Timing
from realizefs.peers.frames import FrameDecoder, encode_frame
from realizefs.peers.messages import Hello, Ping, Request, Response, Value, decode, encode
from realizefs.peers.transport import RECEIVE_SIZE, Acceptor, Transport, dial
from realizefs.types import Address

MIB = 1 << 20
CHUNK = 64 << 10
STREAM_WRITE = 256 << 10
TIMING = Timing(keepalive=15.0, timeout=45.0, hello_timeout=10.0)
HELLO = Hello("bench", b"\0" * 16, ())
PROBE_INTERVAL = 0.001
IDLE_SECONDS = 2.0
FORK = multiprocessing.get_context("fork")
SWITCH_INTERVAL = 0.0005  # design c_si; CPython's default is 0.005 s

Fetch = Callable[[int], Awaitable[bytes]]


@dataclass(frozen=True)
class Keys:
    client: identity.Identity
    server: identity.Identity


def load_keys(root: Path) -> Keys:
    """Both peers' identities, created in data directories as the daemon creates them."""
    dirs = [root / "client", root / "server"]
    for d in dirs:
        d.mkdir()
    return Keys(identity.load_or_create(dirs[0]), identity.load_or_create(dirs[1]))


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5\n")  # VmHWM := VmRSS


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# ------------------------------------------------------------------ blocking TLS over memory BIOs (server)


class BioTls:
    """A blocking socket carrying TLS through an `SSLObject`, as `TlsStream` does on trio."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str | None = None):
        self.sock = sock
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        server_side = context.protocol == ssl.PROTOCOL_TLS_SERVER
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side, server_hostname)

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(RECEIVE_SIZE)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return bool(data)

    def handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            else:
                self._flush()
                return

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.obj.write(view) :]
        self._flush()

    def receive(self) -> bytes:
        """All the plaintext the socket holds (one `recv` of up to 256 KiB); b"" at the end."""
        while True:
            parts: list[bytes] = []
            try:
                while part := self.obj.read(RECEIVE_SIZE):
                    parts.append(part)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return b"".join(parts)
            if parts:
                return b"".join(parts)
            if self.incoming.eof or not self._fill():
                return b""  # (a peer's close_notify makes `read` return b"")


def blocking_accept(keys: Keys, listener: socket.socket) -> BioTls:
    """Accept one client and authenticate it exactly as `Acceptor.accept` does."""
    claims: dict[ssl.SSLObject, bytes | None] = {}
    server = tls.server_context(keys.server.private_key, [keys.client.public_key], claims.__setitem__)
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = BioTls(sock, server.context)
    stream.handshake()
    tls.peer_key(stream.obj, claims.get(stream.obj), "the one it claimed")
    return stream


def bio_dial(keys: Keys, port: int) -> BioTls:
    """The same over memory BIOs: one `recv` takes many records (an `SSLSocket` reads one)."""
    context = tls.client_context(keys.client.private_key)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = BioTls(sock, context, tls.claim_name(keys.client.public_key))
    stream.handshake()
    tls.peer_key(stream.obj, keys.server.public_key, "the one configured")
    return stream


def blocking_dial(keys: Keys, port: int) -> ssl.SSLSocket:
    """A blocking `SSLSocket` to the server, checked as `transport.dial` checks it."""
    context = tls.client_context(keys.client.private_key)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ssock = context.wrap_socket(sock, server_hostname=tls.claim_name(keys.client.public_key))
    der = ssock.getpeercert(binary_form=True)
    assert der is not None
    # `tls.peer_key` reads only getpeercert, which an SSLSocket has too.
    tls.peer_key(ssock, keys.server.public_key, "the one configured")  # type: ignore[arg-type]
    return ssock


# ------------------------------------------------------------------ servers (own process)


class ChunkServer:
    """``chunk`` answers 64 KiB; the same bytes every time (the wire, not the disk, is measured)."""

    def __init__(self) -> None:
        self.chunk = os.urandom(CHUNK)

    async def handle(self, peer: PeerInfo, request: Request, reply: Reply) -> Value:
        if request.method == "chunk":
            return self.chunk
        raise RemoteError("unknown-method", request.method)


async def trio_server(
    keys: Keys, listener: socket.socket, ready: multiprocessing.connection.Connection
) -> None:
    acceptor = Acceptor(keys.server.private_key, frozenset({keys.client.public_key}))
    tl = trio.SocketListener(trio.socket.from_stdlib_socket(listener))
    ready.send(True)
    tcp = await tl.accept()
    transport = await acceptor.accept(tcp, "client", 10.0)
    conn = Connection(transport, "client", HELLO, ChunkServer(), TIMING)
    await conn.open()
    await conn.run()  # until the client closes


def serve_stream(stream_send: Callable[[bytes], None], size: int) -> None:
    data = b"\0" * STREAM_WRITE
    sent = 0
    while sent < size:
        n = min(STREAM_WRITE, size - sent)
        stream_send(data if n == STREAM_WRITE else data[:n])
        sent += n


def serve_bulk(stream: BioTls) -> None:
    """The blocking server of design d: hellos, then a `Response` per ``chunk`` request."""
    chunk = os.urandom(CHUNK)
    decoder = FrameDecoder()
    stream.send(encode_frame(encode(HELLO)))
    while data := stream.receive():
        for frame in decoder.feed(data):
            message = decode(frame)
            if isinstance(message, Request):  # each answer sent at once: the first is not held back
                stream.send(encode_frame(encode(Response(message.id, chunk))))


def server_main(design: str, keys: Keys, size: int, ready: multiprocessing.connection.Connection) -> None:
    """Serve one run of *design*; send the port, "listening", then the CPU seconds it took."""
    cpu = cpu_seconds()
    serve(design, keys, size, ready)
    ready.send(cpu_seconds() - cpu)


def serve(design: str, keys: Keys, size: int, ready: multiprocessing.connection.Connection) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    ready.send(listener.getsockname()[1])
    if design in ("b", "c", "c_si", "e"):
        trio.run(trio_server, keys, listener, ready)
        return
    ready.send(True)
    if design == "tcp":
        sock, _ = listener.accept()
        serve_stream(sock.sendall, size)
        sock.close()
    elif design == "ssl":
        stream = blocking_accept(keys, listener)
        serve_stream(stream.send, size)
        stream.sock.close()
    elif design in ("d", "d_bio"):
        serve_bulk(blocking_accept(keys, listener))
    # "idle": no connection at all


# ------------------------------------------------------------------ the requester (own process)


def probe_main(sock: socket.socket, other: socket.socket, out: multiprocessing.connection.Connection) -> None:
    """The FUSE stand-in's kernel: one byte every `PROBE_INTERVAL`, timing each answer."""
    other.close()  # the requester's end: its close is our end of the run
    samples: list[tuple[float, float]] = []
    while True:
        start = time.perf_counter()
        try:
            sock.send(b"p")
            answer = sock.recv(1)
        except OSError:
            break
        end = time.perf_counter()
        if not answer:
            break
        samples.append((start, end - start))
        delay = PROBE_INTERVAL - (time.perf_counter() - start)
        if delay > 0:
            time.sleep(delay)
    out.send(samples)


async def answer_probe(sock: trio.socket.SocketType) -> None:
    """The main loop's small request/response: what a FUSE `getattr` costs the loop, roughly."""
    while data := await sock.recv(64):
        await sock.send(data[-1:])


async def pipeline(fetch: Fetch, count: int, depth: int) -> float:
    """Fetch chunks 0..count-1 keeping *depth* outstanding; the first chunk's latency in s."""
    indexes = iter(range(count))
    start = time.perf_counter()
    first: list[float] = []
    received = 0

    async def worker() -> None:
        nonlocal received
        for i in indexes:
            data = await fetch(i)
            if not first:
                first.append(time.perf_counter() - start)
            received += len(data)

    async with trio.open_nursery() as nursery:
        for _ in range(depth):
            nursery.start_soon(worker)
    assert received == count * CHUNK, received
    return first[0]


class NetworkLoop:
    """Design c: a `Connection` in a second trio loop on its own thread, fetched from the main loop."""

    def __init__(self, keys: Keys, port: int) -> None:
        self.keys = keys
        self.port = port
        self.main_token = trio.lowlevel.current_trio_token()
        self.ready = trio.Event()
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self.conn: Connection | None = None
        self.thread = threading.Thread(target=trio.run, args=(self._main,), name="network")

    async def _main(self) -> None:
        context = tls.client_context(self.keys.client.private_key)
        transport = await dial(
            Address("127.0.0.1", self.port),
            context,
            self.keys.client.public_key,
            self.keys.server.public_key,
            10,
        )
        self.conn = Connection(transport, "server", HELLO, ChunkServer(), TIMING)
        await self.conn.open()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.token = trio.lowlevel.current_trio_token()
            nursery.start_soon(self.conn.run)
            self.main_token.run_sync_soon(self.ready.set)
            await trio.sleep_forever()

    async def start(self) -> None:
        self.thread.start()
        await self.ready.wait()

    def stop(self) -> None:
        assert self.token is not None and self.nursery is not None
        nursery = self.nursery

        async def close() -> None:
            assert self.conn is not None
            await self.conn.close("done")  # a goodbye: see `requester`
            nursery.cancel_scope.cancel()

        self.token.run_sync_soon(lambda: nursery.start_soon(close))

    async def fetch(self, index: int) -> bytes:
        done = trio.Event()
        box: list[bytes] = []

        def deliver(data: bytes) -> None:  # in the main loop
            box.append(data)
            done.set()

        async def ask() -> None:  # in the network loop
            assert self.conn is not None
            data = await self.conn.request("chunk", index)
            assert isinstance(data, bytes)
            self.main_token.run_sync_soon(deliver, data)

        assert self.token is not None and self.nursery is not None
        nursery = self.nursery
        self.token.run_sync_soon(lambda: nursery.start_soon(ask))
        await done.wait()
        return box[0]


class BulkWorker:
    """Design d: a blocking `SSLSocket` in a worker thread, requests pipelined up to *depth*."""

    def __init__(self, keys: Keys, port: int, depth: int, bio: bool) -> None:
        self.keys = keys
        self.port = port
        self.depth = depth
        self.bio = bio
        self.main_token = trio.lowlevel.current_trio_token()
        self.requests: queue.Queue[tuple[int, Callable[[bytes], None]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="bulk")
        self.decoder = FrameDecoder()

    def connect(self) -> None:
        if self.bio:
            stream = bio_dial(self.keys, self.port)
            self.send: Callable[[bytes], None] = stream.send
            self.receive: Callable[[], bytes] = stream.receive
            self.close: Callable[[], None] = stream.sock.close
        else:
            sock = blocking_dial(self.keys, self.port)
            self.send, self.close = sock.sendall, sock.close
            self.receive = lambda: sock.recv(RECEIVE_SIZE)
        frames: list[bytes] = []
        while not frames:
            frames = self.decoder.feed(self.receive())
        assert isinstance(decode(frames[0]), Hello)
        self.send(encode_frame(encode(HELLO)))

    def _run(self) -> None:
        waiting: dict[int, Callable[[bytes], None]] = {}
        ids = itertools.count(1)
        stopping = False
        while not (stopping and not waiting):
            out = []
            while not stopping and len(waiting) < self.depth:
                try:
                    item = self.requests.get(block=not waiting)
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                call_id = next(ids)
                waiting[call_id] = item[1]
                out.append(encode_frame(encode(Request(call_id, "chunk", item[0]))))
            if out:
                self.send(b"".join(out))
            if not waiting:
                continue
            for frame in self.decoder.feed(self.receive()):
                message = decode(frame)
                if isinstance(message, Response):
                    assert isinstance(message.value, bytes)
                    self.main_token.run_sync_soon(waiting.pop(message.id), message.value)
                else:
                    assert isinstance(message, Ping), message
        self.close()

    async def fetch(self, index: int) -> bytes:
        done = trio.Event()
        box: list[bytes] = []

        def deliver(data: bytes) -> None:  # in the main loop
            box.append(data)
            done.set()

        self.requests.put((index, deliver))
        await done.wait()
        return box[0]


class ThreadTlsStream(trio.abc.Stream):
    """Design e: TLS and the socket in two blocking threads, the protocol (`Transport`, `Connection`) on trio.

    A reader thread receives up to 256 KiB at a time and decrypts every record in it; a
    writer thread encrypts and sends. A lock serializes the two threads' calls into the one
    `SSLObject` (OpenSSL releases the GIL inside them, not the lock). At most `READ_AHEAD`
    plaintext pieces wait for the loop, and `WRITE_AHEAD` writes for the writer.
    """

    READ_AHEAD = 8
    WRITE_AHEAD = 16

    def __init__(self, stream: BioTls) -> None:
        self._tls = stream
        self._lock = threading.Lock()
        self._token = trio.lowlevel.current_trio_token()
        self._in_send, self._in_receive = trio.open_memory_channel[bytes](math.inf)
        self._room = threading.Semaphore(self.READ_AHEAD)
        self._out: queue.Queue[bytes | None] = queue.Queue()
        self._out_room = trio.Semaphore(self.WRITE_AHEAD)
        self._threads = [
            threading.Thread(target=self._read, name="tls-reader"),
            threading.Thread(target=self._write, name="tls-writer"),
        ]
        for t in self._threads:
            t.start()

    def _read(self) -> None:
        tls_stream = self._tls
        while True:
            try:
                data = tls_stream.sock.recv(RECEIVE_SIZE)
            except OSError:
                data = b""
            parts: list[bytes] = []
            with self._lock:
                if data:
                    tls_stream.incoming.write(data)
                else:
                    tls_stream.incoming.write_eof()
                try:
                    while part := tls_stream.obj.read(RECEIVE_SIZE):
                        parts.append(part)
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:  # the end, polite or not (we shut the socket down)
                    data = b""
            if parts:
                self._room.acquire()
                self._token.run_sync_soon(self._in_send.send_nowait, b"".join(parts))
            if not data:
                self._token.run_sync_soon(self._in_send.close)
                return

    def _write(self) -> None:
        tls_stream = self._tls
        while (data := self._out.get()) is not None:
            with self._lock:
                view = memoryview(data)
                while view:
                    view = view[tls_stream.obj.write(view) :]
                out = tls_stream.outgoing.read()
            tls_stream.sock.sendall(out)
            self._token.run_sync_soon(self._out_room.release)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._out_room.acquire()
        self._out.put(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        try:
            data = await self._in_receive.receive()
        except trio.EndOfChannel:
            return b""
        self._room.release()
        return data

    async def aclose(self) -> None:
        reader, writer = self._threads
        self._out.put(None)
        await trio.to_thread.run_sync(writer.join)  # what was queued (a goodbye) is sent
        self._tls.sock.shutdown(socket.SHUT_RDWR)
        while reader.is_alive():  # it may wait for room the loop makes
            with contextlib.suppress(trio.WouldBlock):
                self._in_receive.receive_nowait()
                self._room.release()
            await trio.sleep(0.01)
        self._tls.sock.close()


@dataclass
class Measured:
    seconds: float
    first_chunk: float | None
    start: float
    end: float
    rss_start_kib: int


async def requester(
    design: str, keys: Keys, port: int, size: int, depth: int, probe_sock: socket.socket
) -> Measured:
    count = size // CHUNK
    probe = trio.socket.from_stdlib_socket(probe_sock)
    conn: Connection | None = None

    async def fetch_b(index: int) -> bytes:
        assert conn is not None
        data = await conn.request("chunk", index)
        assert isinstance(data, bytes)
        return data

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer_probe, probe)
        first: float | None = None
        if design == "idle":
            start = time.perf_counter()
            rss = rss_kib("VmRSS")
            reset_peak_rss()
            await trio.sleep(IDLE_SECONDS)
        elif design == "b":
            context = tls.client_context(keys.client.private_key)
            transport = await dial(
                Address("127.0.0.1", port), context, keys.client.public_key, keys.server.public_key, 10
            )
            conn = Connection(transport, "server", HELLO, ChunkServer(), TIMING)
            await conn.open()
            nursery.start_soon(conn.run)

            await trio.sleep(0.2)  # the probe has a baseline before the transfer
            rss = rss_kib("VmRSS")
            reset_peak_rss()
            start = time.perf_counter()
            first = await pipeline(fetch_b, count, depth)
        elif design == "e":
            stream = ThreadTlsStream(await trio.to_thread.run_sync(bio_dial, keys, port))
            transport = Transport(stream, keys.server.public_key, "server", dialed=True)
            conn = Connection(transport, "server", HELLO, ChunkServer(), TIMING)
            await conn.open()
            nursery.start_soon(conn.run)
            await trio.sleep(0.2)
            rss = rss_kib("VmRSS")
            reset_peak_rss()
            start = time.perf_counter()
            first = await pipeline(fetch_b, count, depth)
        elif design in ("c", "c_si"):
            network = NetworkLoop(keys, port)
            await network.start()
            await trio.sleep(0.2)
            rss = rss_kib("VmRSS")
            reset_peak_rss()
            start = time.perf_counter()
            first = await pipeline(network.fetch, count, depth)
        else:
            assert design in ("d", "d_bio")
            worker = BulkWorker(keys, port, depth, bio=design == "d_bio")
            await trio.to_thread.run_sync(worker.connect)
            worker.thread.start()
            await trio.sleep(0.2)
            rss = rss_kib("VmRSS")
            reset_peak_rss()
            start = time.perf_counter()
            first = await pipeline(worker.fetch, count, depth)
        end = time.perf_counter()
        if conn is not None:
            # With a goodbye, not by closing the stream alone: `TlsStream.receive_some`
            # spins on a peer's close_notify (`SSLObject.read` returns b"", never raises).
            await conn.close("done")
        elif design in ("c", "c_si"):
            network.stop()
            await trio.to_thread.run_sync(network.thread.join)
        elif design in ("d", "d_bio"):
            worker.requests.put(None)
            await trio.to_thread.run_sync(worker.thread.join)
        nursery.cancel_scope.cancel()
    probe.close()
    return Measured(end - start, first, start, end, rss)


def stream_client(design: str, keys: Keys, port: int, size: int) -> Measured:
    """The baselines: read *size* streamed bytes on one blocking socket."""
    if design == "tcp":
        sock: socket.socket = socket.create_connection(("127.0.0.1", port))
    else:
        sock = blocking_dial(keys, port)
    rss = rss_kib("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    received = 0
    while received < size:
        data = sock.recv(RECEIVE_SIZE)
        assert data
        received += len(data)
    end = time.perf_counter()
    sock.close()
    return Measured(end - start, None, start, end, rss)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def client_main(
    design: str, keys: Keys, port: int, size: int, depth: int, out: multiprocessing.connection.Connection
) -> None:
    cpu = cpu_seconds()
    probe_samples: list[tuple[float, float]] = []
    if design == "c_si":
        sys.setswitchinterval(SWITCH_INTERVAL)  # the GIL passes sooner between the loops
    if design in ("tcp", "ssl"):
        m = stream_client(design, keys, port, size)
    else:
        ours, theirs = socket.socketpair()
        samples_in, samples_out = FORK.Pipe(duplex=False)
        probe = FORK.Process(target=probe_main, args=(theirs, ours, samples_out))
        probe.start()
        theirs.close()
        m = trio.run(requester, design, keys, port, size, depth, ours)
        probe_samples = samples_in.recv()
        probe.join()
    cpu = cpu_seconds() - cpu
    during = [rtt * 1e3 for t, rtt in probe_samples if m.start <= t <= m.end]
    result: dict[str, Any] = {
        "MBps": (size / m.seconds / 1e6) if design != "idle" else None,
        "first_chunk_ms": m.first_chunk * 1e3 if m.first_chunk is not None else None,
        "rss_growth_MB": (rss_kib("VmHWM") - m.rss_start_kib) * 1024 / 1e6,
        "cpu_s_per_GiB": cpu / (size / (1 << 30)) if design != "idle" else None,
        "probes": len(during),
    }
    if during:
        result |= {
            "probe_p50_ms": statistics.median(during),
            "probe_p99_ms": percentile(during, 0.99),
            "probe_max_ms": max(during),
        }
    out.send(result)


# ------------------------------------------------------------------ orchestration


def run_once(design: str, keys: Keys, size: int, depth: int) -> dict[str, Any]:
    ready_in, ready_out = FORK.Pipe(duplex=False)
    server = FORK.Process(target=server_main, args=(design, keys, size, ready_out))
    server.start()
    port = ready_in.recv()
    ready_in.recv()  # listening
    result_in, result_out = FORK.Pipe(duplex=False)
    load = os.getloadavg()[0]
    client = FORK.Process(target=client_main, args=(design, keys, port, size, depth, result_out))
    client.start()
    result: dict[str, Any] = result_in.recv()
    client.join()
    server_cpu = ready_in.recv() if ready_in.poll(10) else None
    server.join(timeout=10)
    if server.is_alive():  # our own child, by its pid
        server.terminate()
        server.join()
    result["server_cpu_s_per_GiB"] = (
        server_cpu / (size / (1 << 30)) if server_cpu and design != "idle" else None
    )
    result["load1"] = load
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    return merged


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, once, pipelines 1 and 16")
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pipeline", default="1,4,16", help="outstanding chunk requests, comma-separated")
    parser.add_argument("--designs", default="idle,tcp,ssl,b,c,c_si,d,d_bio,e")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    size = (64 if args.quick else args.size_mib) * MIB
    repeat = 1 if args.quick else args.repeat
    depths = [1, 16] if args.quick else [int(n) for n in args.pipeline.split(",")]
    designs = args.designs.split(",")
    labels = {
        "idle": "idle (no transfer)",
        "tcp": "a. plain TCP, blocking",
        "ssl": "a. TLS, blocking ssl",
        "b": "b. one trio loop",
        "c": "c. second trio loop",
        "c_si": "c. same, switch 0.5 ms",
        "d": "d. blocking ssl thread",
        "d_bio": "d. same, memory BIOs",
        "e": "e. TLS threads, 1 conn",
    }

    rows: list[tuple[str, int | None, dict[str, Any], list[dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="wire-bench-") as tmp:
        keys = load_keys(Path(tmp))
        for design in designs:
            for depth in [None] if design in ("idle", "tcp", "ssl") else depths:
                runs = [run_once(design, keys, size, depth or 1) for _ in range(repeat)]
                rows.append((design, depth, median_of(runs), runs))
                m = rows[-1][2]
                print(
                    f"  {labels[design]:24} N={depth or '-':<3} {fmt(m['MBps']):>7} MB/s"
                    f"  probe p50/p99 {fmt(m.get('probe_p50_ms'), 2)}/{fmt(m.get('probe_p99_ms'), 2)} ms"
                    f"  load {fmt(m['load1'], 2)}",
                    flush=True,
                )

    ssl_rate = next((m["MBps"] for d, _, m, _ in rows if d == "ssl"), None)
    print(
        f"\n{'design':26}{'N':>3}{'MB/s':>8}{'/ssl':>6}{'probe p50':>10}{'p99':>7}{'max':>7}"
        f"{'1st chunk':>10}{'RSS +MB':>8}{'CPU s/GiB':>10}{'server':>7}{'load':>6}"
    )
    for design, depth, m, _ in rows:
        ratio = m["MBps"] / ssl_rate if ssl_rate and m["MBps"] else None
        print(
            f"{labels[design]:26}{depth or '-':>3}{fmt(m['MBps'], 0):>8}{fmt(ratio, 2):>6}"
            f"{fmt(m.get('probe_p50_ms'), 2):>10}{fmt(m.get('probe_p99_ms'), 2):>7}"
            f"{fmt(m.get('probe_max_ms'), 1):>7}{fmt(m['first_chunk_ms'], 2):>10}"
            f"{fmt(m['rss_growth_MB'], 1):>8}{fmt(m['cpu_s_per_GiB'], 2):>10}"
            f"{fmt(m['server_cpu_s_per_GiB'], 2):>7}"
            f"{fmt(m['load1'], 2):>6}"
        )
    print(f"(medians of {repeat} runs; probe: a 1-byte request answered on the requester's main loop)\n")
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, {ssl.OPENSSL_VERSION}",
        "size_bytes": size,
        "repeat": repeat,
        "rows": [{"design": d, "pipeline": n, "median": m, "runs": r} for d, n, m, r in rows],
    }
    report(result, args.json)


if __name__ == "__main__":
    main()
