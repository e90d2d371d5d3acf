"""TLS 1.3 contexts in which a peer's Ed25519 public key alone is its identity.

Python's `ssl` has neither raw public keys (RFC 7250) nor a verification
callback, so certificates are wrappers around keys, and the key check is
done by us, after the handshake, before any protocol byte is sent:

- **Our certificate** is a leaf holding our key, *issued by* a name derived
  from that key (``anchor_name``) and signed by the key itself. Its issuer
  differs from its subject, so OpenSSL does not treat it as self-signed.
- **The server** must request and verify a client certificate (``CERT_NONE``
  never requests one; ``CERT_OPTIONAL`` verifies anyway), so it trusts one
  *anchor* per configured peer: a CA certificate with the name
  ``anchor_name(key)`` and that key, built locally from the raw key.
  OpenSSL never checks an anchor's own signature, only that the leaf is
  signed by the anchor's key; anchors are signed with our own key because
  something must sign them. A client whose key is not configured has no
  anchor and fails the handshake.
- Verification alone is not enough: a configured peer could sign, with its
  own key, a leaf holding *another* key. So after the handshake the leaf's
  key must be Ed25519 and the one the client claimed in its SNI (below),
  which is configured, or the handshake would have stopped at the claim.
  TLS 1.3's CertificateVerify has proved that the client holds the private
  key of that leaf, so the client is the peer with that key.
- **The client** verifies no chain (``CERT_NONE``): the server's leaf is
  still sent and its CertificateVerify still checked by OpenSSL, so after
  the handshake the leaf's key is compared with the key configured for the
  peer dialed, which is all the authentication needed, and the offered key
  can be logged when it is wrong.
- **SNI** carries the key the client claims (``claim_name``), so that the
  server refuses an unknown key before any certificate is exchanged and can
  log the key offered when verification fails.

In TLS 1.3 the client finishes its handshake before the server has judged
the client's certificate; the client therefore counts the peer as
authenticated only when the server's first protocol message (the hello)
arrives, which the server sends only after its own checks.

Only TLS 1.3 is enabled, on both sides. Pure: no sockets, no trio.
"""

from __future__ import annotations

import base64
import datetime
import os
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

KEY_BYTES = 32
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_SNI_SUFFIX = ".key.realize"


class KeyMismatch(Exception):
    """The peer's certificate does not hold the key it must hold; *offered* is the key it holds."""

    def __init__(self, reason: str, offered: bytes | None = None) -> None:
        super().__init__(reason)
        self.offered = offered


def key_label(key: bytes) -> str:
    """A DNS-label spelling of a raw key: 52 lowercase base32 characters."""
    return base64.b32encode(key).decode("ascii").rstrip("=").lower()


def label_key(label: str) -> bytes | None:
    """The raw key spelled by `key_label`, or None if *label* is not one."""
    if len(label) != 52:
        return None
    try:
        key = base64.b32decode(label.upper() + "====")
    except ValueError:
        return None
    return key if len(key) == KEY_BYTES and key_label(key) == label else None


def claim_name(key: bytes) -> str:
    """The SNI server name by which a client claims *key*."""
    return key_label(key) + _SNI_SUFFIX


def claimed_key(server_name: str | None) -> bytes | None:
    """The key claimed by an SNI *server_name*, or None if it claims none."""
    if server_name is None or not server_name.endswith(_SNI_SUFFIX):
        return None
    return label_key(server_name[: -len(_SNI_SUFFIX)])


def anchor_name(key: bytes) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"key {key_label(key)}")])


def _raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _builder(subject: x509.Name, issuer: x509.Name, key: Ed25519PublicKey) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
    )


def leaf_certificate(private_key: Ed25519PrivateKey) -> x509.Certificate:
    """Our certificate: our key, issued by `anchor_name` of our key, signed by it."""
    key = _raw(private_key)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"peer {key_label(key)}")])
    return (
        _builder(subject, anchor_name(key), private_key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key, None)
    )


_CERT_SIGN_ONLY = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def anchor_certificate(key: bytes, signer: Ed25519PrivateKey) -> x509.Certificate:
    """A trust anchor for the peer with raw *key*, built locally (signed by *signer*)."""
    name = anchor_name(key)
    return (
        _builder(name, name, Ed25519PublicKey.from_public_bytes(key))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CERT_SIGN_ONLY, critical=True)
        .sign(signer, None)
    )


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _load_own(context: ssl.SSLContext, private_key: Ed25519PrivateKey) -> None:
    """Give *context* our certificate and key without writing them to disk."""
    key_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.memfd_create("realizefs-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, _pem(leaf_certificate(private_key)).encode() + key_pem)
        context.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def _base_context(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.options |= ssl.OP_NO_TICKET  # no resumption: every connection proves its key
    if purpose == ssl.PROTOCOL_TLS_SERVER:
        context.num_tickets = 0
    return context


def client_context(private_key: Ed25519PrivateKey) -> ssl.SSLContext:
    """The context for dialing: presents our certificate, checks no chain (see above)."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_NONE
    _load_own(context, private_key)
    return context


@dataclass
class ServerContext:
    """The listening side's context and the keys it accepts.

    *on_claim* is called during each handshake with the SSL object and the key
    its client claims (None if it claims none); a claimed key that is not
    allowed aborts the handshake before any certificate is exchanged.
    """

    context: ssl.SSLContext
    allowed: frozenset[bytes]


def server_context(
    private_key: Ed25519PrivateKey,
    allowed: Iterable[bytes],
    on_claim: Callable[[ssl.SSLObject, bytes | None], None],
) -> ServerContext:
    """The context for accepting clients whose key is in *allowed*."""
    keys = frozenset(allowed)
    context = _base_context(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    _load_own(context, private_key)
    if keys:
        context.load_verify_locations(cadata="".join(_pem(anchor_certificate(k, private_key)) for k in keys))

    def sni(
        ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> int | None:
        assert isinstance(ssl_object, ssl.SSLObject)
        key = claimed_key(server_name)
        on_claim(ssl_object, key)
        if key is None or key not in keys:
            return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
        return None

    context.sni_callback = sni
    return ServerContext(context, keys)


def peer_key(ssl_object: ssl.SSLObject, expected: bytes | None, whose: str) -> bytes:
    """The Ed25519 key of the peer's leaf certificate, if it is the *expected* one.

    Raises `KeyMismatch` otherwise, saying what the certificate holds; *whose*
    names the expected key in that message ("the one it claimed"). Call only
    after the handshake.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise KeyMismatch("no certificate")
    try:
        public = x509.load_der_x509_certificate(der).public_key()
    except ValueError as exc:
        raise KeyMismatch(f"an unreadable certificate ({exc})") from None
    if not isinstance(public, Ed25519PublicKey):
        raise KeyMismatch(f"a certificate for {_kind(public)} key, not Ed25519")
    key = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if key != expected:
        raise KeyMismatch(f"a certificate for another key than {whose}", key)
    return key


def _kind(public: object) -> str:
    if isinstance(public, ec.EllipticCurvePublicKey):
        return f"an EC {public.curve.name}"
    if isinstance(public, rsa.RSAPublicKey):
        return f"an RSA-{public.key_size}"
    return f"a {type(public).__name__}"
