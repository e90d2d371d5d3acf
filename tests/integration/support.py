"""Helpers for several peers in one trio process over real TLS on loopback.

`Node` is one peer: an identity, a `Household` listening on an ephemeral
loopback port (or deaf), and a handler that records what it served.
`FreezableProxy` forwards TCP between two ports and can freeze (stop
forwarding, keep the sockets open, as a frozen process or a pulled cable
would) or drop everything; a ``once`` proxy forwards one connection and then
refuses the others.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from realizefs.config import NetworkConfig, PeerConfig
from realizefs.errors import RemoteError
from realizefs.peers.connection import Handler, PeerInfo, Reply
from realizefs.peers.household import Household
from realizefs.peers.identity import Identity
from realizefs.peers.messages import PROTOCOL_VERSION, Hello, Request, Value
from realizefs.types import Address
from tests.support import MIN_DEADLINE

FAST = NetworkConfig(keepalive=0.2, timeout=1.0, handshake_timeout=1.0, reconnect_max=0.4)


def new_identity() -> Identity:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Identity(key, raw)


@dataclass
class Recorder:
    """A handler: ``echo`` answers its args, ``bulk`` streams ``size`` bytes in ``part`` parts."""

    served: list[tuple[str, str]] = field(default_factory=list)  # (peer, method)
    cancelled: list[str] = field(default_factory=list)
    sent: int = 0

    async def handle(self, info: PeerInfo, request: Request, reply: Reply) -> Value:
        peer = info.name
        self.served.append((peer, request.method))
        if request.method == "echo":
            return request.args
        if request.method == "bulk":
            size, part = request.args["size"], request.args.get("part", 256 << 10)
            data = b"x" * part
            try:
                while self.sent < size:
                    await reply.send(data[: min(part, size - self.sent)])
                    self.sent += min(part, size - self.sent)
            except trio.Cancelled:
                self.cancelled.append(peer)
                raise
            return self.sent
        raise RemoteError("unknown-method", request.method)


@dataclass
class Node:
    name: str
    identity: Identity
    household: Household
    handler: Recorder
    listeners: list[trio.SocketListener]
    address: Address | None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @staticmethod
    def entry(name: str, identity: Identity, address: Address | None = None) -> PeerConfig:
        """A `[[peer]]` entry for any identity."""
        return PeerConfig(name, identity.public_key, address)

    def peer(self, address: bool = True) -> PeerConfig:
        """This node as a `[[peer]]` entry of another node's config."""
        return PeerConfig(self.name, self.identity.public_key, self.address if address else None)

    def state(self, name: str) -> str:
        return next(s.state for s in self.household.status() if s.name == name)

    def stop(self) -> None:
        self.scope.cancel()


async def start_node(
    nursery: trio.Nursery,
    name: str,
    peers: Sequence[PeerConfig] = (),
    *,
    listen: bool = True,
    identity: Identity | None = None,
    port: int = 0,
    network: NetworkConfig = FAST,
    version: int = PROTOCOL_VERSION,
    handler: Handler | None = None,
    store_id: bytes | None = None,
    chunks: Callable[[bytes], bytes | None] | None = None,
) -> Node:
    """A running household named *name*; `Node.stop` ends it. By default its handler is a
    `Recorder` and its store id its name; given *chunks*, it opens and serves bulk lanes."""
    identity = identity or new_identity()
    recorder = Recorder()
    store_id = store_id or name.encode().ljust(16, b"\0")
    hello = Hello(name, store_id, ("a",), version=version)
    household = Household(
        identity, hello, network, peers, handler or recorder, rng=random.Random(1), chunks=chunks
    )
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1") if listen else []
    address = Address("127.0.0.1", listeners[0].socket.getsockname()[1]) if listeners else None
    node = Node(name, identity, household, recorder, listeners, address)

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with node.scope:
            await household.run(listeners, task_status=task_status)

    await nursery.start(run)
    return node


async def eventually(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until *condition* holds (checked every 10 ms); fail after *timeout* s (at least 30)."""
    timeout = max(timeout, MIN_DEADLINE)
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class FreezableProxy:
    """A TCP forwarder from an ephemeral loopback port to *target*; `frozen` stops it."""

    def __init__(self, target: Address, once: bool = False) -> None:
        self.target = target
        self.once = once
        self.frozen = False
        self.address: Address | None = None
        self._thaw = trio.Event()
        self._connections: list[trio.SocketStream] = []

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False
        self._thaw.set()
        self._thaw = trio.Event()

    async def drop(self) -> None:
        """Close every forwarded connection at once (a reset, seen by both ends)."""
        for stream in self._connections:
            await trio.aclose_forcefully(stream)
        self._connections.clear()

    async def run(self, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = Address("127.0.0.1", listeners[0].socket.getsockname()[1])
        task_status.started(self.address)
        if self.once:
            client = await listeners[0].accept()
            await listeners[0].aclose()  # the next connection is refused by the kernel
            await self._forward(client)
            return
        await trio.serve_listeners(self._forward, listeners)

    async def _forward(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream(self.target.host, self.target.port)
        self._connections += [client, server]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
            nursery.start_soon(self._pump, server, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                while self.frozen:
                    await self._thaw.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


Runner = Callable[[trio.Nursery], Awaitable[None]]


def run_trio(test: Runner, timeout: float = 4 * MIN_DEADLINE) -> None:
    """Run *test* with a nursery under a deadline; the nursery is cancelled when it returns."""

    async def main() -> None:
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                await test(nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)


async def through_a_proxy(
    nursery: trio.Nursery, b_network: NetworkConfig = FAST
) -> tuple[Node, Node, FreezableProxy]:
    """a dials b through a proxy the test can freeze or cut."""
    b = await start_node(nursery, "b", network=b_network)
    assert b.address is not None
    proxy = FreezableProxy(b.address)
    proxy_address = await nursery.start(proxy.run)
    a = await start_node(nursery, "a", listen=False)
    b.household.update([a.peer(address=False)])
    a.household.update([replace(b.peer(), address=proxy_address)])
    return a, b, proxy
