"""The household: who we listen to, whom we dial, one connection per peer, and each peer's state.

`Household.run` serves the listening sockets (if `node.listen` is set) and
keeps one dialer task per configured peer with an address. A dialer dials
while its peer has no live connection, backing off exponentially (capped,
jittered) after each failure and starting over once a connection has worked.
A deaf peer (no address) is reached only through the connection it opens to
us, which carries requests both ways like any other.

Both peers may dial each other at once. Each side then holds two
connections and keeps the same one by `keep_new`, a rule both evaluate
alike: the connection dialed by the peer with the smaller key wins, and of
two dialed by the same peer the newer wins (that peer only redials when it
has given up on the older). The loser is closed with a goodbye; a dialer
whose connection lost waits while the winner lives, so nothing flaps.

`update` applies a reloaded `[[peer]]` list: new peers are dialed (and
accepted), removed or changed ones disconnected, without a restart.
Everything runs in the caller's trio thread; `status` is a snapshot for
``.realize/peers``.

`subscribe` gives the layers above a peer's connections as events
(`realizefs.peers.events`): `Connected` when a connection becomes the peer's,
`Disconnected` when it stops being so (closed, timed out, replaced by a
newer one, or its peer removed by `update`), published at that moment so
that for one peer they strictly alternate.

Bulk lanes (`realizefs.peers.bulk`), when the household is given *chunks* to
serve: each control connection we accept gets a random token; on each
connection we dial, once it is the peer's, we ask for that token and open
its lanes (one to fetch, one to serve), each in a worker thread. An inbound
connection whose first frame opens a lane is checked against the live
control connections (same token, same key, no such lane yet), then handed
to its thread; it is never a connection of the pair (dedup, backoff and
status are about control connections), and it is closed with its control
connection.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import random
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from realizefs.config import NetworkConfig, PeerConfig, format_key
from realizefs.errors import ConnectionLost, ProtocolError, RemoteError
from realizefs.peers import bulk, tls
from realizefs.peers.connection import Connection, Handler, Timing
from realizefs.peers.events import Connected, Disconnected, Publisher, Subscription
from realizefs.peers.identity import Identity
from realizefs.peers.messages import MAX_TEXT, Goodbye, Hello, Request, Response
from realizefs.peers.transfers import Transfers
from realizefs.peers.transport import Acceptor, Refused, Transport, dial
from realizefs.types import Address

log = logging.getLogger(__name__)

BACKOFF_START = 1.0  # seconds before the first redial; doubled after each failure
MAX_HANDSHAKES = 64  # connections still proving who they are; more are dropped at once


def backoff_delay(attempt: int, cap: float, rng: random.Random) -> float:
    """Seconds to wait before dial *attempt* (0 after a success): doubling, capped, jittered."""
    ceiling = min(cap, BACKOFF_START * 2 ** min(attempt, 32))
    return rng.uniform(ceiling / 2, ceiling)


def keep_new(existing_dialer: bytes, new_dialer: bytes) -> bool:
    """Whether a new connection replaces the live one, given the key of each one's dialer."""
    return new_dialer == existing_dialer or new_dialer < existing_dialer


@dataclass(frozen=True)
class PeerStatus:
    """What ``.realize/peers`` shows of one configured peer."""

    name: str
    key: bytes
    address: Address | None
    state: str  # connected, connecting, disconnected or "refused: <reason>"
    since: float  # wall-clock time the state began
    direction: str | None  # "outbound" or "inbound" while connected
    rtt: float | None  # seconds, from the latest keepalive
    bytes_in: int
    bytes_out: int
    last_error: str | None
    next_attempt: float | None  # wall-clock time of the next dial, if waiting
    connected_at: float | None = None  # wall-clock time of the last connection (None: never)
    transfers: Transfers | None = None  # the chunks the live connection and its lanes moved, while connected
    lanes: int = 0  # bulk lanes open
    lane_in_flight: int = 0  # chunks asked for on our fetching lane, not answered yet


@dataclass(eq=False)
class _Peer:
    config: PeerConfig
    since: float
    state: str = "disconnected"
    connection: Connection | None = None
    last_error: str | None = None
    next_attempt: float | None = None
    connected_at: float | None = None
    bytes_in: int = 0  # of the connections that have ended
    bytes_out: int = 0
    logged: str | None = None  # the last reason logged, not to repeat it at each retry
    changed: trio.Event = field(default_factory=trio.Event)
    dialer: trio.CancelScope = field(default_factory=trio.CancelScope)

    def set_state(self, state: str, now: float, error: str | None = None) -> None:
        if state != self.state:
            self.state, self.since = state, now
        if error is not None:
            self.last_error = error
        self.changed.set()
        self.changed = trio.Event()


class Household:
    """The connections of this peer to the others of *peers*."""

    def __init__(
        self,
        identity: Identity,
        hello: Hello,
        network: NetworkConfig,
        peers: Sequence[PeerConfig],
        handler: Handler,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        chunks: bulk.ChunkSource | None = None,
    ) -> None:
        self.identity = identity
        self.hello = hello
        self.network = network
        self.handler = handler
        self.clock = clock
        self.rng = rng or random.Random()
        self.timing = Timing(network.keepalive, network.timeout, network.handshake_timeout)
        self._acceptor = Acceptor(identity.private_key, frozenset(p.key for p in peers))
        self._client_context = tls.client_context(identity.private_key)
        self._peers: dict[str, _Peer] = {}
        self._initial = tuple(peers)
        self._nursery: trio.Nursery | None = None
        self._handshakes = trio.Semaphore(MAX_HANDSHAKES)
        self._events = Publisher()
        self._chunks = chunks  # what our lanes serve (any thread); None: no lanes

    # ------------------------------------------------------------ life

    async def listen(self, address: Address) -> list[trio.SocketListener]:
        """Open the listening sockets on *address* (before `run`, so errors come first)."""
        return await trio.open_tcp_listeners(address.port, host=address.host)

    async def run(
        self,
        listeners: Sequence[trio.SocketListener] = (),
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for listener in listeners:
                    nursery.start_soon(self._accept, listener)
                for peer in self._initial:
                    self._add(peer)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._events.end()  # after each connection's `Disconnected`

    def subscribe(self) -> Subscription:
        """Connections and disconnections from now on, after a `Connected` for each peer connected now."""
        live = [p.connection for p in self._peers.values() if p.connection is not None]
        return self._events.subscribe(Connected(conn.peer, conn) for conn in live)

    async def close(self, reason: str) -> None:
        """Say goodbye to every connected peer (before the caller cancels `run`)."""
        async with trio.open_nursery() as nursery:
            for peer in self._peers.values():
                if peer.connection is not None:
                    nursery.start_soon(peer.connection.close, reason)

    def update(self, peers: Sequence[PeerConfig]) -> None:
        """Apply a reloaded peer list: dial new peers, disconnect removed or changed ones."""
        wanted = {p.name: p for p in peers}
        self._acceptor.allow(frozenset(p.key for p in peers))
        for name, peer in list(self._peers.items()):
            if wanted.get(name) != peer.config:
                why = "removed from the household" if name not in wanted else "its configuration changed"
                log.info("peer %s: %s; disconnecting", name, why)
                self._remove(peer, why)
        for name, config in wanted.items():
            if name not in self._peers:
                self._add(config)

    def _add(self, config: PeerConfig) -> None:
        assert self._nursery is not None
        peer = _Peer(config, since=self.clock())
        self._peers[config.name] = peer
        if config.address is not None:
            self._nursery.start_soon(self._dial, peer)

    def _remove(self, peer: _Peer, why: str) -> None:
        assert self._nursery is not None
        del self._peers[peer.config.name]
        peer.dialer.cancel()
        if (conn := peer.connection) is not None:
            peer.connection = None  # so its end publishes nothing more: its `Disconnected` is now
            self._events.publish(Disconnected(conn.peer, conn, why))
            self._nursery.start_soon(conn.close, why)

    # ------------------------------------------------------------ status

    def status(self) -> list[PeerStatus]:
        result = []
        for peer in self._peers.values():
            conn = peer.connection
            transport = conn.transport if conn else None
            result.append(
                PeerStatus(
                    name=peer.config.name,
                    key=peer.config.key,
                    address=peer.config.address,
                    state=peer.state,
                    since=peer.since,
                    direction=None if transport is None else "outbound" if transport.dialed else "inbound",
                    rtt=conn.rtt if conn else None,
                    bytes_in=peer.bytes_in + (transport.bytes_in if transport else 0),
                    bytes_out=peer.bytes_out + (transport.bytes_out if transport else 0),
                    last_error=peer.last_error,
                    next_attempt=peer.next_attempt if peer.state != "connected" else None,
                    connected_at=peer.connected_at,
                    transfers=conn.transfers if conn else None,
                    lanes=len(conn.lanes) if conn else 0,
                    lane_in_flight=conn.lane.in_flight if conn and conn.lane else 0,
                )
            )
        return result

    def connection(self, name: str) -> Connection | None:
        """The live connection to the peer *name*, if any."""
        peer = self._peers.get(name)
        return peer.connection if peer else None

    # ------------------------------------------------------------ dialing

    async def _dial(self, peer: _Peer) -> None:
        address = peer.config.address
        assert address is not None
        attempt = 0
        with peer.dialer:
            while True:
                while peer.connection is not None:
                    await peer.changed.wait()
                peer.next_attempt = None
                peer.set_state("connecting", self.clock())
                try:
                    transport = await dial(
                        address,
                        self._client_context,
                        self.identity.public_key,
                        peer.config.key,
                        self.network.handshake_timeout,
                    )
                except Refused as exc:
                    self._refused(peer, f"dialing {address}", exc)
                except (OSError, trio.TooSlowError) as exc:
                    why = (
                        exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or "timed out"
                    )
                    self._unreachable(peer, f"cannot connect to {address}: {why}")
                else:
                    if await self._serve(peer, transport):
                        attempt = 0
                delay = backoff_delay(attempt, self.network.reconnect_max, self.rng)
                attempt += 1
                peer.next_attempt = self.clock() + delay
                await trio.sleep(delay)

    def _unreachable(self, peer: _Peer, why: str) -> None:
        peer.set_state("disconnected", self.clock(), why)
        if peer.logged != why:
            peer.logged = why
            log.info("peer %s: %s", peer.config.name, why)

    def _refused(self, peer: _Peer | None, where: str, exc: Refused, key: bytes | None = None) -> None:
        reason, offered = exc.reason, exc.offered or key
        if exc.cut:  # nothing was refused: the connection ended half-way
            line = f"{where}: {reason}"
            log.debug("%s %s", f"peer {peer.config.name}:" if peer else "a connection", line)
            if peer is not None and not peer.state.startswith("refused"):  # a refusal says more
                peer.set_state("disconnected", self.clock(), line)
            return
        if offered is not None:
            line = f"{where}: {reason} (key offered: {format_key(offered)})"
        elif where.startswith("from"):
            line = f"{where}: {reason} (no key offered)"
        else:  # refused by the peer we dialed, before it showed its key
            line = f"{where}: {reason}"
        if peer is not None:
            peer.set_state(f"refused: {reason}", self.clock(), line)
            if peer.logged == reason:  # the same refusal at each retry: logged once
                log.debug("refused peer %s again: %s", peer.config.name, line)
                return
            peer.logged = reason
        log.warning("refused %s %s", "peer " + peer.config.name + ":" if peer else "a connection:", line)

    # ------------------------------------------------------------ accepting

    async def _accept(self, listener: trio.SocketListener) -> None:
        assert self._nursery is not None
        await trio.serve_listeners(self._inbound, [listener], handler_nursery=self._nursery)

    async def _inbound(self, tcp: trio.SocketStream) -> None:
        address = _address(tcp)
        try:
            self._handshakes.acquire_nowait()
        except trio.WouldBlock:
            log.warning(
                "dropped a connection from %s: %d handshakes already running", address, MAX_HANDSHAKES
            )
            await trio.aclose_forcefully(tcp)
            return
        try:
            transport = await self._acceptor.accept(tcp, address, self.network.handshake_timeout)
        except Refused as exc:
            # Not attributed to the peer whose key it claimed: nothing proved it is that peer.
            self._refused(None, f"from {address}", exc)
            return
        finally:
            self._handshakes.release()
        peer = self._by_key(transport.peer_key)
        if peer is None:  # removed by a reload during the handshake
            await transport.aclose()
            return
        await self._serve(peer, transport)

    def _by_key(self, key: bytes | None) -> _Peer | None:
        return next((p for p in self._peers.values() if p.config.key == key), None)

    # ------------------------------------------------------------ a connection's life

    async def _serve(self, peer: _Peer, transport: Transport) -> bool:
        """Exchange hellos and serve the connection; whether it became the peer's connection."""
        name = peer.config.name
        conn = Connection(transport, name, self.hello, self.handler, self.timing)
        try:
            opening = await conn.open()
        except Refused as exc:
            await transport.aclose()
            where = f"{'dialing' if transport.dialed else 'from'} {transport.address}"
            self._refused(peer, where, exc, transport.peer_key)
            return False
        if opening is not None:
            await self._accept_lane(transport, opening)
            return False
        if self._peers.get(name) is not peer:
            await conn.close("removed from the household")
            await transport.aclose()
            return False
        existing = peer.connection
        if existing is not None:
            if not keep_new(self._dialer(existing.transport), self._dialer(transport)):
                log.info("peer %s: keeping the connection already open, closing a duplicate", name)
                await conn.close("duplicate connection")
                await transport.aclose()
                return False
            log.info("peer %s: a new connection replaces the one open", name)
        peer.connection = conn
        peer.logged = None
        peer.set_state("connected", self.clock())
        peer.connected_at = self.clock()
        if self._chunks is not None:
            if transport.dialed:
                assert self._nursery is not None
                self._nursery.start_soon(self._open_lanes, peer, conn)
            else:
                conn.bulk_token = secrets.token_bytes(bulk.TOKEN_BYTES)
        if existing is not None:
            assert self._nursery is not None
            self._events.publish(Disconnected(existing.peer, existing, "replaced by a newer connection"))
            self._nursery.start_soon(existing.close, "duplicate connection")
        self._events.publish(Connected(conn.peer, conn))
        log.info(
            "connected to peer %s (%s, %s)",
            name,
            transport.address,
            "outbound" if transport.dialed else "inbound",
        )
        try:
            await conn.run()
        finally:
            conn.bulk_token = None
            for lane in conn.lanes:
                lane.close()
            peer.bytes_in += transport.bytes_in
            peer.bytes_out += transport.bytes_out
            if peer.connection is conn:
                peer.connection = None
                reason = conn.closed_reason or "closed"
                peer.set_state("disconnected", self.clock(), reason)
                self._events.publish(Disconnected(conn.peer, conn, reason))
                log.info("disconnected from peer %s: %s", name, reason)
        return True

    # ------------------------------------------------------------ bulk lanes

    async def _open_lanes(self, peer: _Peer, conn: Connection) -> None:
        """Open the lanes of the control connection *conn*, which we dialed."""
        name, address = peer.config.name, peer.config.address
        assert address is not None and self._chunks is not None
        try:
            token = await conn.request(bulk.BULK_TOKEN)
        except RemoteError as exc:
            log.info("peer %s: no bulk lane (%s): chunks go on the control connection", name, exc.message)
            return
        except ConnectionLost:
            return
        if type(token) is not bytes or len(token) != bulk.TOKEN_BYTES:
            await conn.close("protocol error: a malformed bulk token")
            return
        for role in bulk.ROLES:
            try:
                reader = await trio.to_thread.run_sync(
                    bulk.dial_lane,
                    address,
                    self._client_context,
                    self.identity.public_key,
                    peer.config.key,
                    token,
                    role,
                    self.network.handshake_timeout,
                )
            except Refused as exc:
                if exc.cut:  # the connection ended half-way: a peer stopping, not a refusal
                    log.info("peer %s: cannot open a bulk lane: %s", name, exc.reason)
                else:
                    log.warning("peer %s: bulk lane refused: %s", name, exc.reason)
                return
            except (OSError, ConnectionLost) as exc:
                log.info("peer %s: cannot open a bulk lane: %s", name, exc)
                return
            if conn.closed_reason is not None or peer.connection is not conn:
                reader.stream.close()
                return
            self._start_lane(conn, reader, fetching=role == bulk.FETCH)

    def _start_lane(self, conn: Connection, reader: bulk.Reader, fetching: bool) -> None:
        lane: bulk.Fetcher | bulk.Server
        if fetching:
            lane = bulk.Fetcher(reader, conn.name, lambda: self._lane_ended(conn, lane), conn.transfers)
            conn.lane = lane
        else:
            assert self._chunks is not None
            lane = bulk.Server(
                reader, conn.name, lambda: self._lane_ended(conn, lane), self._chunks, conn.transfers
            )
        conn.lanes.append(lane)
        lane.start()
        log.info("peer %s: bulk lane open (%s)", conn.name, "fetching" if fetching else "serving")

    def _lane_ended(self, conn: Connection, lane: bulk.Fetcher | bulk.Server) -> None:
        if conn.lane is lane:
            conn.lane = None
        if lane in conn.lanes:
            conn.lanes.remove(lane)
        if conn.closed_reason is None:
            log.info("peer %s: %s closed: %s", conn.name, lane.kind, lane.closed_reason)

    async def _accept_lane(self, transport: Transport, request: Request) -> None:
        """A connection from *transport*'s peer whose first frame opens a lane: check it, hand it over."""
        args = bulk.lane_args(request)
        control = None
        if args is None:
            why = "a malformed request to open a bulk lane"
        elif self._chunks is None:
            why = "this peer opens no bulk lanes"
        else:
            token, role = args
            control = next(
                (
                    p.connection
                    for p in self._peers.values()
                    if p.connection is not None
                    and p.connection.bulk_token is not None
                    and hmac.compare_digest(p.connection.bulk_token, token)
                ),
                None,
            )
            fetching = role == bulk.SERVE  # the dialer serves: we fetch
            if control is None:
                why = "its token is that of no live control connection"
            elif control.transport.peer_key != transport.peer_key:
                why = "its key is not that of the control connection its token belongs to"
            elif any(isinstance(lane, bulk.Fetcher) == fetching for lane in control.lanes):
                why = f"a second bulk lane ({role})"
            else:
                try:
                    await transport.send(Response(request.id, None))
                    reader = bulk.Reader(transport.detach())
                except (ConnectionLost, ProtocolError) as exc:
                    log.warning("refused a bulk lane from %s: %s", transport.address, exc)
                    await transport.aclose()
                    return
                if control.closed_reason is not None:
                    reader.stream.close()
                    return
                self._start_lane(control, reader, fetching)
                return
        log.warning(
            "refused a bulk lane from %s: %s (key offered: %s)",
            transport.address,
            why,
            format_key(transport.peer_key),
        )
        with trio.move_on_after(1), contextlib.suppress(ConnectionLost):
            await transport.send(Goodbye(why[:MAX_TEXT]))
        await transport.aclose()

    def _dialer(self, transport: Transport) -> bytes:
        return self.identity.public_key if transport.dialed else transport.peer_key


def _why(exc: OSError | trio.TooSlowError) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return "timed out"


def _address(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "an unknown address"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
