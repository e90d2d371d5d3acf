"""Who gets in: real TLS on loopback against a listening household that knows one peer, "b".

Each refusal test checks three things: the connection is refused, nothing
from it reached the application (no request served, no peer connected), and
the listening side logged it once, with the client's address and the key it
offered.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from realizefs.config import format_key
from realizefs.errors import PeerRefused
from realizefs.peers import tls
from realizefs.peers.connection import Connection
from realizefs.peers.identity import Identity
from realizefs.peers.messages import Hello
from realizefs.peers.transport import dial
from tests.integration.support import FAST, Node, eventually, new_identity, run_trio, start_node

HOUSEHOLD_LOG = "realizefs.peers.household"


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == HOUSEHOLD_LOG and r.levelno == logging.WARNING and "refused" in r.getMessage()
    ]


def nothing_reached(a: Node) -> None:
    assert a.handler.served == []
    for status in a.household.status():
        assert status.state != "connected", status
        assert a.household.connection(status.name) is None


Scenario = Callable[[Node, Identity], Awaitable[None]]


def refused(caplog: pytest.LogCaptureFixture, scenario: Scenario) -> str:
    """Run *scenario* against a node "a" that knows only peer b; a's one refusal line."""
    b = new_identity()

    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        a.household.update([Node.entry("b", b)])
        await scenario(a, b)
        await eventually(lambda: refusals(caplog), what="the refusal to be logged")
        await trio.sleep(0.2)  # nothing more arrives
        nothing_reached(a)

    with caplog.at_level(logging.INFO, logger="realizefs.peers"):
        run_trio(test)
    lines = [line for line in refusals(caplog) if ": from 127.0.0.1:" in line]  # a's, not the client's
    assert len(lines) == 1, refusals(caplog)
    return lines[0]


def port(a: Node) -> int:
    assert a.address is not None
    return a.address.port


async def tls_client(a: Node, context: ssl.SSLContext, claim: str | None) -> str:
    """Handshake with *a* and try to read; how it ended, for the client."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port(a))
    stream = trio.SSLStream(tcp, context, server_hostname=claim)
    try:
        with trio.fail_after(5):
            await stream.do_handshake()
            data = await stream.receive_some(65536)
        return f"read {data!r}"
    except trio.BrokenResourceError as exc:
        return f"broken: {exc.__cause__!r}"
    finally:
        await trio.aclose_forcefully(stream)


async def raw_client(a: Node, data: bytes) -> bytes:
    """Send *data* on plain TCP and read until the listener closes (or 5 s pass)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port(a))
    received = b""
    with trio.move_on_after(5):
        try:
            if data:
                await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass
    await stream.aclose()
    return received


def client_context(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> ssl.SSLContext:
    """A TLS 1.3 client presenting *cert* with *key* (written to a temporary file for OpenSSL)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        f.write(pem)
        f.flush()
        context.load_cert_chain(f.name)
    return context


def minted_by(signer: Ed25519PrivateKey, holder: CertificateIssuerPrivateKeyTypes) -> x509.Certificate:
    """A leaf holding *holder*'s public key, signed by *signer* and issued by its anchor name."""
    signer_key = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minted")]))
        .issuer_name(tls.anchor_name(signer_key))
        .public_key(holder.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(tls.leaf_certificate(signer).not_valid_before_utc)
        .not_valid_after(tls.leaf_certificate(signer).not_valid_after_utc)
        .sign(signer, None)
    )


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ---------------------------------------------------------------- refusals


def test_an_unknown_client_key(caplog: pytest.LogCaptureFixture) -> None:
    c = new_identity()
    seen: list[str] = []

    async def scenario(a: Node, b: Identity) -> None:
        async with trio.open_nursery() as nursery:
            client = await start_node(nursery, "c", [a.peer()], listen=False, identity=c)
            await eventually(lambda: client.state("a").startswith("refused"))
            seen.append(client.state("a"))
            client.stop()

    line = refused(caplog, scenario)
    assert "its key is not a configured peer" in line and format_key(c.public_key) in line
    assert "does not accept our key" in seen[0]


def test_an_unknown_server_key(caplog: pytest.LogCaptureFixture) -> None:
    impostor_key: list[bytes] = []

    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b", listen=False)
        a.household.update([b.peer(address=False)])
        expected = new_identity().public_key  # b's config holds another key for "a"
        assert a.address is not None
        b.household.update([Node.entry("a", Identity(b.identity.private_key, expected), a.address)])
        await eventually(lambda: b.state("a").startswith("refused"))
        assert "the server presented a certificate for another key" in b.state("a")
        impostor_key.append(a.identity.public_key)
        await trio.sleep(0.2)
        assert a.handler.served == [] and b.handler.served == []
        assert b.household.connection("a") is None

    with caplog.at_level(logging.INFO, logger="realizefs.peers"):
        run_trio(test)
    lines = [line for line in refusals(caplog) if line.startswith("refused peer a")]
    assert len(lines) == 1 and format_key(impostor_key[0]) in lines[0], lines


def test_a_known_name_with_another_key(caplog: pytest.LogCaptureFixture) -> None:
    """A client claiming b's key but holding only its own."""
    results: list[str] = []

    async def scenario(a: Node, b: Identity) -> None:
        intruder = new_identity()
        results.append(
            await tls_client(a, tls.client_context(intruder.private_key), tls.claim_name(b.public_key))
        )

    line = refused(caplog, scenario)
    assert "not signed by the key it claims" in line and "key offered: ed25519:" in line
    assert results[0].startswith("broken") or results[0] == "read b''", results


def test_a_configured_peer_cannot_mint_a_certificate_for_another_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """b signs a leaf for a key of its making: the chain verifies, the key check refuses it."""
    other = Ed25519PrivateKey.generate()
    results: list[str] = []

    async def scenario(a: Node, b: Identity) -> None:
        context = client_context(minted_by(b.private_key, other), other)
        results.append(await tls_client(a, context, tls.claim_name(b.public_key)))

    line = refused(caplog, scenario)
    assert "for another key than the one it claimed" in line and format_key(raw(other)) in line
    assert "read b'" not in results[0] or results[0] == "read b''", results


def test_a_minted_certificate_claiming_its_own_key(caplog: pytest.LogCaptureFixture) -> None:
    other = Ed25519PrivateKey.generate()

    async def scenario(a: Node, b: Identity) -> None:
        context = client_context(minted_by(b.private_key, other), other)
        await tls_client(a, context, tls.claim_name(raw(other)))

    line = refused(caplog, scenario)
    assert "not a configured peer" in line and format_key(raw(other)) in line


def test_a_key_that_is_not_ed25519(caplog: pytest.LogCaptureFixture) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())

    async def scenario(a: Node, b: Identity) -> None:
        await tls_client(
            a, client_context(minted_by(b.private_key, ec_key), ec_key), tls.claim_name(b.public_key)
        )

    line = refused(caplog, scenario)
    assert "a certificate for an EC secp256r1 key, not Ed25519" in line, line


def test_tls_1_2(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(a: Node, b: Identity) -> None:
        context = tls.client_context(b.private_key)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        result = await tls_client(a, context, tls.claim_name(b.public_key))
        assert result.startswith("broken"), result

    line = refused(caplog, scenario)
    assert "not a TLS 1.3 handshake" in line or "TLS handshake failed" in line, line


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096), b"\x16\x03\x01\x00\x05hello"],
    ids=["plain-text", "garbage", "a-truncated-tls-record"],
)
def test_not_tls(caplog: pytest.LogCaptureFixture, data: bytes) -> None:
    async def scenario(a: Node, b: Identity) -> None:
        answer = await raw_client(a, data)
        assert b"realizefs" not in answer  # no hello, nothing of the protocol

    line = refused(caplog, scenario)
    assert "(no key offered)" in line


def test_a_client_that_never_speaks_is_dropped_after_the_handshake_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    waited: list[float] = []

    async def scenario(a: Node, b: Identity) -> None:
        started = trio.current_time()
        assert await raw_client(a, b"") == b""
        waited.append(trio.current_time() - started)

    line = refused(caplog, scenario)
    assert f"no TLS handshake within {FAST.handshake_timeout:g}s" in line
    assert FAST.handshake_timeout * 0.9 <= waited[0] < FAST.handshake_timeout + 2, waited


def test_a_client_is_not_authenticated_until_the_listener_says_hello(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In TLS 1.3 the client's handshake ends before the server judged its certificate."""
    outcome: list[str] = []

    async def scenario(a: Node, b: Identity) -> None:
        intruder = new_identity()  # claims b, holds its own key: the server refuses after its handshake
        assert a.address is not None
        context = tls.client_context(intruder.private_key)
        try:
            transport = await dial(a.address, context, b.public_key, a.identity.public_key, 5)
        except PeerRefused as exc:  # the refusal reached us during the handshake: just as good
            outcome.append(f"refused in the handshake: {exc}")
            return
        conn = Connection(transport, "a", Hello("b", b"\0" * 16, ()), a.handler, a.household.timing)
        with pytest.raises(PeerRefused):
            await conn.open()
        assert conn.peer_hello is None
        outcome.append("refused before the hello")
        await transport.aclose()

    line = refused(caplog, scenario)
    assert outcome and "not signed by the key it claims" in line


def test_the_right_key_gets_in(caplog: pytest.LogCaptureFixture) -> None:
    """The control: with the right key and claim, the same listener accepts."""

    async def test(nursery: trio.Nursery) -> None:
        a = await start_node(nursery, "a")
        b = await start_node(nursery, "b", [a.peer()], listen=False)
        a.household.update([b.peer(address=False)])
        await eventually(lambda: a.state("b") == "connected" and b.state("a") == "connected")

    with caplog.at_level(logging.INFO, logger="realizefs.peers"):
        run_trio(test)
    assert refusals(caplog) == []
