"""Benchmark: one authenticated peer connection on loopback, against plain TLS and plain TCP.

Both ends run in this one process and one trio loop (as two peers' event
loops would each run on their own core, the figures are a floor). Measured
in the same run:

- **realizefs**: a `Connection` over TLS 1.3 authenticated by key, the server
  streaming ``--size`` bytes as 256 KiB `Data` parts to one ``stream``
  request (framing, msgpack, flow control with a 4 MiB window).
- **plain TLS**: the same TLS connection (same contexts, same handshake),
  the same bytes written with ``send_all`` of 256 KiB and read with
  ``receive_some``: no framing, no protocol.
- **plain TLS, trio.SSLStream**: the same contexts through trio's own TLS
  stream, which realizefs does not use (it yields one 16 KiB record per read).
- **plain TCP**: trio socket streams, the same writes.
- **round trip**: ``--requests`` sequential requests answered at once, idle
  and while a bulk stream runs on the same connection (median and p99).

Prints a table and JSON; asserts nothing about time.

    .venv/bin/python bench/peers_bench.py [--quick] [--size-mib N] [--requests N] [--json FILE]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

from realizefs.errors import RemoteError
from realizefs.peers import tls
from realizefs.peers.connection import Connection, PeerInfo, Reply, Timing
from realizefs.peers.messages import Hello, Request, Value
from realizefs.peers.transport import Acceptor, Transport, dial
from realizefs.types import Address
from tests.integration.support import new_identity

MIB = 1 << 20
PART = 256 << 10
TIMING = Timing(keepalive=15.0, timeout=45.0, hello_timeout=10.0)


class Server:
    """``bulk`` streams ``size`` bytes in parts of ``PART``; ``ping`` answers at once."""

    async def handle(self, peer: PeerInfo, request: Request, reply: Reply) -> Value:
        if request.method == "ping":
            return None
        if request.method == "bulk":
            size = request.args
            data = b"\0" * PART
            sent = 0
            while sent < size:
                n = min(PART, size - sent)
                await reply.send(data if n == PART else data[:n])
                sent += n
            return sent
        raise RemoteError("unknown-method", request.method)


@asynccontextmanager
async def tls_pair() -> AsyncIterator[tuple[Transport, Transport]]:
    """Two authenticated transports over loopback: (client, server)."""
    client_id, server_id = new_identity(), new_identity()
    acceptor = Acceptor(server_id.private_key, frozenset({client_id.public_key}))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[Transport] = []
    async with trio.open_nursery() as nursery:

        async def accept_one() -> None:
            tcp = await listeners[0].accept()
            accepted.append(await acceptor.accept(tcp, "client", 10.0))

        nursery.start_soon(accept_one)
        context = tls.client_context(client_id.private_key)
        client = await dial(
            Address("127.0.0.1", port), context, client_id.public_key, server_id.public_key, 10
        )
    await listeners[0].aclose()
    try:
        yield client, accepted[0]
    finally:
        await client.aclose()
        await accepted[0].aclose()


@asynccontextmanager
async def connection_pair() -> AsyncIterator[Connection]:
    """A running realizefs connection whose peer serves `Server`; yields the client's side."""
    async with tls_pair() as (client_t, server_t):
        hello = Hello("bench", b"\0" * 16, ())
        client = Connection(client_t, "server", hello, Server(), TIMING)
        server = Connection(server_t, "client", hello, Server(), TIMING)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.open)
            await client.open()
            nursery.start_soon(client.run)
            nursery.start_soon(server.run)
            yield client
            nursery.cancel_scope.cancel()


async def bulk(conn: Connection, size: int) -> int:
    received = 0
    async with conn.stream("bulk", size) as stream:
        async for part in stream:
            received += len(part)
    return received


async def realizefs_throughput(size: int) -> float:
    async with connection_pair() as conn:
        start = time.perf_counter()
        assert await bulk(conn, size) == size
        return size / (time.perf_counter() - start) / 1e6


async def pump(send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, size: int) -> float:
    """MB/s of *size* bytes written with 256 KiB ``send_all`` and read with ``receive_some``."""
    data = b"\0" * PART

    async def sender() -> None:
        sent = 0
        while sent < size:
            n = min(PART, size - sent)
            await send.send_all(data if n == PART else data[:n])
            sent += n

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        received = 0
        while received < size:
            received += len(await receive.receive_some(PART))
    return size / (time.perf_counter() - start) / 1e6


async def plain_tls_throughput(size: int) -> float:
    async with tls_pair() as (client, server):
        return await pump(server.stream, client.stream, size)


async def trio_ssl_throughput(size: int) -> float:
    """Plain TLS through `trio.SSLStream` (one record per receive), the same contexts."""
    client_id, server_id = new_identity(), new_identity()
    server_context = tls.server_context(server_id.private_key, [client_id.public_key], lambda *_: None)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    client = trio.SSLStream(
        tcp, tls.client_context(client_id.private_key), server_hostname=tls.claim_name(client_id.public_key)
    )
    server = trio.SSLStream(await listeners[0].accept(), server_context.context, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        await client.do_handshake()
    try:
        return await pump(server, client, size)
    finally:
        await trio.aclose_forcefully(client)
        await trio.aclose_forcefully(server)
        await listeners[0].aclose()


async def plain_tcp_throughput(size: int) -> float:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    try:
        return await pump(server, client, size)
    finally:
        await client.aclose()
        await server.aclose()
        await listeners[0].aclose()


async def round_trips(requests: int, loaded: bool) -> dict[str, float]:
    """Median and p99 round trip of ``ping`` requests, in microseconds."""
    async with connection_pair() as conn:
        times = []
        async with trio.open_nursery() as nursery:
            if loaded:
                nursery.start_soon(bulk, conn, 1 << 40)
                await trio.sleep(0.2)  # the stream is flowing
            for _ in range(requests):
                start = time.perf_counter()
                await conn.request("ping")
                times.append((time.perf_counter() - start) * 1e6)
            nursery.cancel_scope.cancel()
    times.sort()
    return {"median_us": statistics.median(times), "p99_us": times[int(len(times) * 0.99) - 1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB and 500 requests")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    size = (64 if args.quick else args.size_mib) * MIB
    requests = 500 if args.quick else args.requests

    rates = {
        "tcp": trio.run(plain_tcp_throughput, size),
        "tls": trio.run(plain_tls_throughput, size),
        "trio_ssl": trio.run(trio_ssl_throughput, size),
        "realizefs": trio.run(realizefs_throughput, size),
    }
    idle = trio.run(round_trips, requests, False)
    loaded = trio.run(round_trips, requests, True)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "size_bytes": size,
        "throughput_MBps": {k: round(v, 1) for k, v in rates.items()},
        "realizefs_over_tls": round(rates["realizefs"] / rates["tls"], 3),
        "realizefs_over_tcp": round(rates["realizefs"] / rates["tcp"], 3),
        "realizefs_over_trio_ssl": round(rates["realizefs"] / rates["trio_ssl"], 3),
        "round_trip_idle": {k: round(v, 1) for k, v in idle.items()},
        "round_trip_under_bulk": {k: round(v, 1) for k, v in loaded.items()},
        "loaded_over_idle_median": round(loaded["median_us"] / idle["median_us"], 2),
    }
    print(f"{'':32}{'MB/s':>10}{'realizefs/row':>15}")
    for name, label in (
        ("realizefs", "realizefs (auth, framed)"),
        ("tls", "plain TLS (same TLS stream)"),
        ("trio_ssl", "plain TLS (trio.SSLStream)"),
        ("tcp", "plain TCP"),
    ):
        print(f"{label:32}{rates[name]:10.1f}{rates['realizefs'] / rates[name]:15.2f}")
    print(f"\n{'round trip':32}{'median µs':>10}{'p99 µs':>15}")
    print(f"{'idle':32}{idle['median_us']:10.0f}{idle['p99_us']:15.0f}")
    print(f"{'under a bulk stream':32}{loaded['median_us']:10.0f}{loaded['p99_us']:15.0f}\n")
    report(result, args.json)


if __name__ == "__main__":
    main()
