"""Security tests of peer authentication: real TLS 1.3 over loopback against a listening node.

A listening node "a" knows one peer, "b". Every negative test asserts three things:

1. the connection is refused;
2. nothing from it reached the application: a's handler served nothing, a has no
   connection to any peer and no peer of a is "connected";
3. a logged the refusal exactly once at WARNING (logger ``realizefs.peers.household``),
   with the client's address and, where the client offered one, its key as the
   config spells it (`format_key`).

Each negative test then lets the genuine b in through the same listener, so that it
cannot pass because the listener is broken; `test_the_genuine_peer_gets_in` is the
positive control on its own. Hand-made clients use trio's sockets and `trio.SSLStream`
directly; every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from realizefs.config import format_key
from realizefs.errors import PeerRefused
from realizefs.peers import tls
from realizefs.peers.connection import Connection, Timing
from realizefs.peers.frames import FrameDecoder, encode_frame
from realizefs.peers.identity import Identity
from realizefs.peers.messages import Hello, decode, encode
from realizefs.peers.transport import Refused, TlsStream, Transport, dial
from tests.integration.support import (
    FAST,
    FreezableProxy,
    Node,
    Recorder,
    eventually,
    new_identity,
    run_trio,
    start_node,
)

HOUSEHOLD = "realizefs.peers.household"
IO_LIMIT = 20.0  # the bound on any hand-made client's I/O

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey

# Refusals are logged at WARNING: that is what these tests are about (point 3).
pytestmark = pytest.mark.expect_log(r"^refused ")


# ---------------------------------------------------------------- helpers


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every WARNING (or worse) the households logged so far."""
    return [r.getMessage() for r in caplog.records if r.name == HOUSEHOLD and r.levelno >= logging.WARNING]


def inbound_refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The refusals logged by the listening side: those of a connection *from* somewhere."""
    return [line for line in warnings(caplog) if line.startswith("refused") and ": from " in line]


def refusals_of(caplog: pytest.LogCaptureFixture, name: str, where: str) -> list[str]:
    """Every refusal of peer *name* on a connection *where* ("dialing" or "from"), repeats included.

    A repeat of the same refusal is logged at DEBUG only: one line per connection refused.
    """
    pattern = re.compile(f"refused peer {re.escape(name)}( again)?: {where} ")
    return [r.getMessage() for r in caplog.records if r.name == HOUSEHOLD and pattern.match(r.getMessage())]


async def settled() -> None:
    """Until every task of this process waits: whatever a finished connection was to cause has happened.

    Loopback delivers at once, so nothing still in flight can wake a task later.
    """
    await trio.testing.wait_all_tasks_blocked()


def raw_key(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def port_of(node: Node) -> int:
    assert node.address is not None
    return node.address.port


def nothing_reached(a: Node) -> None:
    """Point 2: nothing of the refused connection reached a's application."""
    assert a.handler.served == []
    statuses = a.household.status()
    assert statuses, "a has no peer at all: the check would be vacuous"
    for status in statuses:
        assert status.state != "connected", status
        assert status.direction is None, status
        assert a.household.connection(status.name) is None, status


async def refused_once(
    caplog: pytest.LogCaptureFixture, a: Node, address: str | None, offered: bytes | None
) -> str:
    """Points 2 and 3, once the client is done: the one line a logged, returned for the reason.

    *address* is the client's ``host:port``, or None for "127.0.0.1, any port".
    """
    await eventually(lambda: inbound_refusals(caplog), timeout=IO_LIMIT, what="a to log the refusal")
    await settled()  # nothing more comes: no second line, no late connection
    nothing_reached(a)
    lines = inbound_refusals(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    pattern = re.escape(address) if address is not None else r"127\.0\.0\.1:\d+"
    assert re.search(f": from {pattern}: ", line), line
    if offered is None:
        assert line.endswith("(no key offered)"), line
    else:
        assert line.endswith(f"(key offered: {format_key(offered)})"), line
    return line


async def genuine_b_gets_in(nursery: trio.Nursery, a: Node, b: Identity) -> None:
    """The same listener still lets the genuine b in, and a's handler then serves it."""
    node = await start_node(nursery, "b", [a.peer()], listen=False, identity=b)
    await eventually(lambda: a.state("b") == "connected" and node.state("a") == "connected")
    to_a = node.household.connection("a")
    assert to_a is not None
    assert await to_a.request("echo", "hi") == "hi"
    assert a.handler.served == [("b", "echo")]
    node.stop()


Scenario = Callable[[trio.Nursery, Node, Identity], Awaitable[None]]


def against_a(caplog: pytest.LogCaptureFixture, scenario: Scenario, *, control: bool = True) -> None:
    """Run *scenario* against a listening "a" that knows only "b", then (if *control*) b itself."""

    async def test(nursery: trio.Nursery) -> None:
        b = new_identity()
        a = await start_node(nursery, "a")
        a.household.update([Node.entry("b", b)])
        await scenario(nursery, a, b)
        if control:
            await genuine_b_gets_in(nursery, a, b)

    with caplog.at_level(logging.DEBUG, logger=HOUSEHOLD):  # DEBUG: each repeated refusal
        run_trio(test)


@dataclass
class Outcome:
    """What a hand-made client saw: its address, whether its handshake ended, the plaintext it read."""

    address: str
    handshake_done: bool
    received: bytes
    error: BaseException | None


async def tls_client(a: Node, context: ssl.SSLContext, claim: str | None) -> Outcome:
    """Open TCP to *a*, handshake with *claim* as SNI, then read until the server gives up on us."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port_of(a))
    host, port = tcp.socket.getsockname()[:2]
    stream = trio.SSLStream(tcp, context, server_hostname=claim)
    done = False
    received = b""
    error: BaseException | None = None
    try:
        with trio.fail_after(IO_LIMIT):
            await stream.do_handshake()
            done = True
            while data := await stream.receive_some(65536):
                received += data
    except trio.BrokenResourceError as exc:
        error = exc.__cause__ or exc
    finally:
        await trio.aclose_forcefully(stream)
    return Outcome(f"{host}:{port}", done, received, error)


async def raw_client(a: Node, data: bytes) -> tuple[str, bytes, float]:
    """Send *data* (if any) on plain TCP and read to EOF; address, bytes read, seconds to EOF."""
    started = trio.current_time()  # before a can have accepted it
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(a))
    host, port = stream.socket.getsockname()[:2]
    received = b""
    try:
        with trio.fail_after(IO_LIMIT):
            if data:
                await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                received += chunk
    except trio.BrokenResourceError:
        pass  # a reset: the server closed with our bytes unread
    finally:
        await trio.aclose_forcefully(stream)
    return f"{host}:{port}", received, trio.current_time() - started


def minted(signer: Ed25519PrivateKey, holder: PrivateKey) -> x509.Certificate:
    """A leaf for *holder*'s public key, issued by the anchor name of *signer*'s key and signed by it.

    a holds an anchor for b's key, so a leaf b mints this way passes chain verification.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minted by b")]))
        .issuer_name(tls.anchor_name(raw_key(signer)))
        .public_key(holder.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(tls.leaf_certificate(signer).not_valid_before_utc)
        .not_valid_after(tls.leaf_certificate(signer).not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(signer, None)
    )


def context_presenting(cert: x509.Certificate, key: PrivateKey, directory: Path) -> ssl.SSLContext:
    """A TLS 1.3 client context presenting *cert*, loaded from a file in *directory*."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    path = directory / f"minted-{os.urandom(4).hex()}.pem"
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context.load_cert_chain(path)
    return context


def assert_refused(outcome: Outcome) -> None:
    """Point 1 from the client's side: no plaintext at all came back, and the stream ended."""
    assert outcome.received == b"", outcome


# ---------------------------------------------------------------- 1, 2: keys not configured


def test_an_unknown_client_key_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    c = new_identity()

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        assert a.address is not None
        proxy = FreezableProxy(a.address, once=True)  # c's redials never reach a: one line at a
        to_a = replace(a.peer(), address=await nursery.start(proxy.run))
        client = await start_node(nursery, "c", [to_a], listen=False, identity=c)
        await eventually(lambda: refusals_of(caplog, "a", "dialing"), what="c to be refused")
        client.stop()
        refused = refusals_of(caplog, "a", "dialing")[0]
        assert "the peer does not accept our key" in refused, refused
        assert client.household.connection("a") is None
        line = await refused_once(caplog, a, None, c.public_key)
        assert re.search(r": from 127\.0\.0\.1:\d+: its key is not a configured peer \(", line), line
        assert client.handler.served == []

    against_a(caplog, scenario)


def test_an_unknown_server_key_is_refused_by_the_dialer(caplog: pytest.LogCaptureFixture) -> None:
    """b knows a's name and address but another key: b refuses a, and a gets nothing from b."""

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        wrong = Node.entry("a", new_identity(), a.address)
        client = await start_node(nursery, "b", [wrong], listen=False, identity=b)
        await eventually(lambda: client.state("a").startswith("refused: "), what="b to refuse a")
        state = client.state("a")
        assert "the server presented a certificate for another key" in state, state
        await eventually(lambda: len(refusals_of(caplog, "a", "dialing")) >= 3, what="b to dial three times")
        outbound = [line for line in warnings(caplog) if line.startswith("refused peer a: dialing ")]
        assert len(outbound) == 1, outbound
        assert f"dialing {a.address}: " in outbound[0], outbound
        assert outbound[0].endswith(f"(key offered: {format_key(a.identity.public_key)})"), outbound
        assert client.household.connection("a") is None and client.handler.served == []
        client.stop()
        await settled()
        nothing_reached(a)
        # a, whose TLS handshake with b succeeded (b's key is configured), saw b hang up
        # before any hello: no request of b's was ever read.
        for line in inbound_refusals(caplog):
            assert line.startswith("refused peer b: from 127.0.0.1:"), line
            assert "closed the connection before its hello" in line, line

    against_a(caplog, scenario)


# ---------------------------------------------------------------- 3, 4, 5: forged identities


def test_a_known_peers_name_with_another_key_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Claims b's key in SNI, holds its own key and certificate: the chain does not verify."""

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        intruder = new_identity()
        context = tls.client_context(intruder.private_key)
        outcome = await tls_client(a, context, tls.claim_name(b.public_key))
        assert_refused(outcome)
        line = await refused_once(caplog, a, outcome.address, b.public_key)
        assert "its certificate is not signed by the key it claims" in line, line
        assert format_key(intruder.public_key) not in line

    against_a(caplog, scenario)


@pytest.mark.parametrize("claims", ["b's key", "the minted key"])
def test_a_configured_peer_cannot_mint_a_certificate_for_another_key(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, claims: str
) -> None:
    """b signs, with its own key, a leaf for K2: the chain verifies at a, the key check refuses."""
    k2 = Ed25519PrivateKey.generate()

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        cert = minted(b.private_key, k2)
        # The forgery is sound as far as X.509 goes: it verifies against a's anchor for b.
        cert.verify_directly_issued_by(tls.anchor_certificate(b.public_key, a.identity.private_key))
        claim = b.public_key if claims == "b's key" else raw_key(k2)
        outcome = await tls_client(a, context_presenting(cert, k2, tmp_path), tls.claim_name(claim))
        assert_refused(outcome)
        line = await refused_once(caplog, a, outcome.address, raw_key(k2))
        if claims == "b's key":  # passed the SNI and the chain: stopped by the post-handshake check
            assert outcome.handshake_done  # TLS 1.3: the client finished before a judged it
            assert "it presented a certificate for another key than the one it claimed" in line, line
        else:  # K2 is not configured: stopped at the claim, before any certificate
            assert "its key is not a configured peer" in line, line

    against_a(caplog, scenario)


def test_a_key_that_is_not_ed25519_is_refused(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """b signs a leaf for an EC P-256 key and claims its own key with it."""
    p256 = ec.generate_private_key(ec.SECP256R1())

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        context = context_presenting(minted(b.private_key, p256), p256, tmp_path)
        outcome = await tls_client(a, context, tls.claim_name(b.public_key))
        assert_refused(outcome)
        assert outcome.handshake_done  # the chain verified: only the key check stands in the way
        line = await refused_once(caplog, a, outcome.address, b.public_key)  # the key claimed
        assert "a certificate for an EC secp256r1 key, not Ed25519" in line, line

    against_a(caplog, scenario)


# ---------------------------------------------------------------- 6-9: not our protocol


def test_tls_1_2_is_refused_even_with_the_right_key(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        context = tls.client_context(b.private_key)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        outcome = await tls_client(a, context, tls.claim_name(b.public_key))
        assert_refused(outcome)
        assert not outcome.handshake_done, outcome
        assert isinstance(outcome.error, ssl.SSLError) and "PROTOCOL_VERSION" in str(outcome.error)
        # The version is rejected before the SNI callback runs: no key was read from the claim.
        line = await refused_once(caplog, a, outcome.address, None)
        assert "not a TLS 1.3 handshake" in line, line

    against_a(caplog, scenario)


@pytest.mark.parametrize(
    "data",
    [b"HELLO realizefs, it is b\n", os.urandom(4096)],
    ids=["a-line-of-text", "random-bytes"],
)
def test_a_client_that_does_not_speak_tls_is_refused(caplog: pytest.LogCaptureFixture, data: bytes) -> None:
    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        address, received, _ = await raw_client(a, data)
        assert b"realizefs" not in received.lower() and b"hello" not in received.lower()
        line = await refused_once(caplog, a, address, None)
        assert "TLS" in line, line

    against_a(caplog, scenario)


def test_a_silent_client_is_dropped_after_the_handshake_timeout(caplog: pytest.LogCaptureFixture) -> None:
    timeout = FAST.handshake_timeout

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        address, received, waited = await raw_client(a, b"")  # connects, never speaks, reads EOF
        assert received == b""
        assert waited >= timeout, waited
        line = await refused_once(caplog, a, address, None)
        assert f"no TLS handshake within {timeout:g}s" in line, line

    against_a(caplog, scenario)


# ---------------------------------------------------------------- 10: who counts as authenticated


def test_the_dialer_is_not_authenticated_until_the_listeners_hello(caplog: pytest.LogCaptureFixture) -> None:
    """An impostor of b (its own key, b's claim) dials a with realizefs' own `dial`.

    In TLS 1.3 its handshake completes, and it has even checked a's key, before a has
    judged its certificate; the hello exchange is what must fail.
    """

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        intruder = new_identity()
        assert a.address is not None
        context = tls.client_context(intruder.private_key)
        with trio.fail_after(IO_LIMIT):
            transport = await dial(a.address, context, b.public_key, a.identity.public_key, IO_LIMIT)
        assert isinstance(transport, Transport) and transport.dialed
        assert transport.peer_key == a.identity.public_key  # the impostor did authenticate a
        assert isinstance(transport.stream, TlsStream)
        host, port = transport.stream.tcp.socket.getsockname()[:2]
        ours = Recorder()
        timing = Timing(FAST.keepalive, FAST.timeout, FAST.handshake_timeout)
        conn = Connection(transport, "a", Hello("b", b"\0" * 16, ("a",)), ours, timing)
        with trio.fail_after(IO_LIMIT), pytest.raises(Refused) as refusal:
            await conn.open()
        assert isinstance(refusal.value, PeerRefused)
        assert "before its hello" in refusal.value.reason, refusal.value.reason  # not a timeout
        assert conn.peer_hello is None and transport.bytes_in == 0
        assert ours.served == []
        await transport.aclose()
        line = await refused_once(caplog, a, f"{host}:{port}", b.public_key)
        assert "its certificate is not signed by the key it claims" in line, line

    against_a(caplog, scenario)


# ---------------------------------------------------------------- 11: the positive control


def test_the_genuine_peer_gets_in(caplog: pytest.LogCaptureFixture) -> None:
    """The same listener, clients and checks with b's own key: a's hello, connected, served."""

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        # The hand-made client of the tests above, with b's key and claim: a says hello first.
        tcp = await trio.open_tcp_stream("127.0.0.1", port_of(a))
        stream = trio.SSLStream(
            tcp, tls.client_context(b.private_key), server_hostname=tls.claim_name(b.public_key)
        )
        decoder = FrameDecoder()
        frames: list[bytes] = []
        with trio.fail_after(IO_LIMIT):
            await stream.do_handshake()
            while not frames:
                data = await stream.receive_some(65536)
                assert data, "a closed the genuine b's connection"
                frames = decoder.feed(data)
            hello = decode(frames[0])
            assert isinstance(hello, Hello) and hello.name == "a", hello
            await stream.send_all(encode_frame(encode(Hello("b", b"\0" * 16, ("a",)))))
            await eventually(lambda: a.state("b") == "connected", timeout=IO_LIMIT)
            assert a.household.connection("b") is not None
            await stream.aclose()
        await eventually(lambda: a.state("b") != "connected", timeout=IO_LIMIT, what="the hang-up")
        # And b as a node: connected, and a's handler serves its request.
        await genuine_b_gets_in(nursery, a, b)
        status = {s.name: s for s in a.household.status()}["b"]
        assert status.direction == "inbound" and status.bytes_in > 0
        assert warnings(caplog) == []

    against_a(caplog, scenario, control=False)


# ---------------------------------------------------------------- bugs found by these tests, fixed


def test_an_impostor_does_not_change_a_connected_peers_state(caplog: pytest.LogCaptureFixture) -> None:
    """A client that only *claims* b's key (SNI) and fails verification is not b.

    Its refusal must not overwrite the status of the genuine b, connected at the time.
    """

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        genuine = await start_node(nursery, "b", [a.peer()], listen=False, identity=b)
        await eventually(lambda: a.state("b") == "connected" and genuine.state("a") == "connected")
        live = a.household.connection("b")
        intruder = new_identity()
        outcome = await tls_client(a, tls.client_context(intruder.private_key), tls.claim_name(b.public_key))
        assert_refused(outcome)
        await eventually(lambda: inbound_refusals(caplog), timeout=IO_LIMIT, what="a to log the refusal")
        assert a.household.connection("b") is live  # the genuine connection is untouched...
        assert a.state("b") == "connected", a.state("b")  # ...and so is its status

    against_a(caplog, scenario, control=False)


def test_a_redialing_peer_that_hangs_up_is_logged_once_by_the_listener(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """b (misconfigured: another key for a) redials and hangs up before its hello each time:
    a refused nothing, so it warns of nothing; its status for b says what happens."""

    async def scenario(nursery: trio.Nursery, a: Node, b: Identity) -> None:
        wrong = Node.entry("a", new_identity(), a.address)
        client = await start_node(nursery, "b", [wrong], listen=False, identity=b)
        await eventually(lambda: len(refusals_of(caplog, "a", "dialing")) >= 3, what="b to dial three times")
        client.stop()
        await settled()
        assert inbound_refusals(caplog) == []  # (b itself warns that a refused its key)
        [b_seen_by_a] = a.household.status()
        assert b_seen_by_a.state == "disconnected"
        assert "closed the connection before its hello" in (b_seen_by_a.last_error or "")

    against_a(caplog, scenario, control=False)
