"""The certificates and names by which a key is its own identity (realizefs.peers.tls, pure parts)."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from realizefs.peers import tls

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
RAW = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_a_key_spelled_as_a_dns_label() -> None:
    label = tls.key_label(RAW)
    assert len(label) == 52 and label == label.lower() and label.isalnum()
    assert tls.label_key(label) == RAW
    for bad in (label[:-1], label + "a", label.upper(), label[:-1] + "1", "", "-" * 52):
        assert tls.label_key(bad) is None, bad


def test_the_claim_carried_in_sni() -> None:
    name = tls.claim_name(RAW)
    assert len(name) < 254 and all(len(part) <= 63 for part in name.split("."))
    assert tls.claimed_key(name) == RAW
    for other in (None, "example.com", tls.key_label(RAW), name + ".evil", "x" + name):
        assert tls.claimed_key(other) is None, other


def test_our_leaf_is_issued_by_the_name_of_its_key_and_signed_by_it() -> None:
    leaf = tls.leaf_certificate(KEY)
    assert leaf.issuer == tls.anchor_name(RAW) != leaf.subject  # not self-issued
    public = leaf.public_key()
    assert isinstance(public, Ed25519PublicKey)
    assert public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == RAW
    public.verify(leaf.signature, leaf.tbs_certificate_bytes)  # raises if not signed by the key
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_an_anchor_is_a_ca_for_exactly_that_key() -> None:
    other = Ed25519PrivateKey.generate()
    anchor = tls.anchor_certificate(RAW, signer=other)
    assert anchor.subject == anchor.issuer == tls.anchor_name(RAW)
    public = anchor.public_key()
    assert isinstance(public, Ed25519PublicKey)
    assert public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == RAW
    assert anchor.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert anchor.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
    assert tls.anchor_name(RAW) != tls.anchor_name(bytes(32))


@pytest.mark.parametrize(
    "make", [tls.client_context, lambda k: tls.server_context(k, [RAW], lambda *_: None).context]
)
def test_contexts_speak_tls_1_3_only(make: object) -> None:
    assert callable(make)
    context = make(KEY)
    assert isinstance(context, ssl.SSLContext)
    assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.check_hostname is False


def test_the_server_requires_a_certificate_and_the_client_checks_the_key_itself() -> None:
    assert tls.server_context(KEY, [RAW], lambda *_: None).context.verify_mode == ssl.CERT_REQUIRED
    assert tls.client_context(KEY).verify_mode == ssl.CERT_NONE  # the key check after the handshake
