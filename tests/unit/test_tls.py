"""The pure parts of realizefs.peers.tls: key spellings, SNI claims, the certificates, and `peer_key`.

No handshake here (the integration tests make real ones): the certificates
are built and inspected, and `peer_key` is given the DER a TLS object would
hand it.
"""

from __future__ import annotations

import datetime
import ssl
from typing import cast

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.peers import tls
from tests.support import examples

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


RAW = raw(KEY)
OTHER_RAW = raw(OTHER)
BASE32 = set("abcdefghijklmnopqrstuvwxyz234567")


def ed25519_of(cert: x509.Certificate) -> Ed25519PublicKey:
    public = cert.public_key()
    assert isinstance(public, Ed25519PublicKey)
    return public


def common_name(name: x509.Name) -> str:
    (attribute,) = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert isinstance(attribute.value, str)
    return attribute.value


# ---------------------------------------------------------------- key labels

LABELS: list[tuple[bytes, str]] = [
    (bytes(32), "a" * 52),
    (b"\xff" * 32, "7" * 51 + "q"),  # 256 one bits, then the label's 4 padding bits
    (b"\x08" + bytes(31), "ba" + "a" * 50),
]


@pytest.mark.parametrize(("key", "label"), LABELS)
def test_key_label_known_answers(key: bytes, label: str) -> None:
    assert tls.key_label(key) == label
    assert tls.label_key(label) == key


@settings(max_examples=examples(200))
@given(st.binary(min_size=32, max_size=32))
def test_every_key_has_a_dns_label_that_spells_it_back(key: bytes) -> None:
    label = tls.key_label(key)
    assert len(label) == 52  # one DNS label, which holds at most 63
    assert set(label) <= BASE32
    assert tls.label_key(label) == key


@settings(max_examples=examples(200))
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567ABZ019=-\u0131\u017f", min_size=50, max_size=54))
def test_a_label_is_accepted_only_in_its_one_spelling(label: str) -> None:
    key = tls.label_key(label)
    assert key is None or (len(key) == 32 and tls.key_label(key) == label)


BAD_LABELS: dict[str, str] = {
    "empty": "",
    "one character short": tls.key_label(RAW)[:-1],
    "one character long": tls.key_label(RAW) + "a",
    "with base32 padding": tls.key_label(RAW) + "====",
    "the label of a 31-byte key": tls.key_label(RAW[:31]),
    "the label of a 33-byte key": tls.key_label(RAW + b"\x00"),
    "upper case": tls.key_label(RAW).upper(),
    "one upper-case letter": "A" + "a" * 51,
    "a digit 0": "0" + "a" * 51,
    "a digit 1": "1" + "a" * 51,
    "a digit 8": "8" + "a" * 51,
    "a digit 9": "a" * 51 + "9",
    "a hyphen": "-" + "a" * 51,
    "an equals sign inside": "a" * 25 + "=" + "a" * 26,
    "a space": " " + "a" * 51,
    "a dot": "a" * 26 + "." + "a" * 25,
    "a non-ascii letter": "é" + "a" * 51,
    "dotless i, upper-cased to I": "\u0131" + "a" * 51,
    "long s, upper-cased to S": "\u017f" + "a" * 51,
    "sharp s, upper-cased to SS": "ß" + "a" * 51,
    "padding bits set": "a" * 51 + "b",
    "padding bits set, all ones": "7" * 52,
}


@pytest.mark.parametrize("label", BAD_LABELS.values(), ids=BAD_LABELS.keys())
def test_what_is_not_a_key_label(label: str) -> None:
    assert tls.label_key(label) is None


def test_the_bad_labels_are_bad_only_where_they_say() -> None:
    """Their accepted neighbours: the flaw, not the letters around it, is what is refused."""
    assert tls.label_key("a" * 52) == bytes(32)
    assert tls.label_key("a" * 51 + "q") == bytes(31) + b"\x01"  # the last character's top bit only
    assert tls.label_key("7" * 51 + "q") == b"\xff" * 32
    for letter in "b27":  # where the refused spellings have 0, 1, 8, 9, A, -, é, ...
        assert tls.label_key(letter + "a" * 51) is not None, letter


# ---------------------------------------------------------------- SNI claims


def test_claim_name_known_answer() -> None:
    assert tls.claim_name(bytes(32)) == "a" * 52 + ".key.realize"
    assert tls.claimed_key("a" * 52 + ".key.realize") == bytes(32)


@settings(max_examples=examples(100))
@given(st.binary(min_size=32, max_size=32))
def test_a_claim_names_its_key(key: bytes) -> None:
    name = tls.claim_name(key)
    assert name == tls.key_label(key) + ".key.realize"
    assert len(name) <= 253 and all(0 < len(part) <= 63 for part in name.split("."))
    assert tls.claimed_key(name) == key


FOREIGN_NAMES: dict[str, str | None] = {
    "no name": None,
    "empty": "",
    "a web site": "example.com",
    "the suffix alone": ".key.realize",
    "the suffix without its dot": "key.realize",
    "a bare label": tls.key_label(RAW),
    "a trailing dot": tls.claim_name(RAW) + ".",
    "a further domain": tls.claim_name(RAW) + ".evil.example",
    "a subdomain of a claim": "x." + tls.claim_name(RAW),
    "a character prepended": "x" + tls.claim_name(RAW),
    "a character dropped": tls.claim_name(RAW)[1:],
    "upper case": tls.claim_name(RAW).upper(),
    "the suffix in upper case": tls.key_label(RAW) + ".KEY.REALIZE",
    "another suffix": tls.key_label(RAW) + ".key.realise",
    "a 31-byte key": tls.claim_name(RAW[:31]),
    "a 33-byte key": tls.claim_name(RAW + b"\x01"),
    "a non-canonical label": "a" * 51 + "b" + ".key.realize",
}


@pytest.mark.parametrize("name", FOREIGN_NAMES.values(), ids=FOREIGN_NAMES.keys())
def test_a_foreign_name_claims_no_key(name: str | None) -> None:
    assert tls.claimed_key(name) is None


# ---------------------------------------------------------------- our leaf


def test_the_leaf_is_issued_by_the_anchor_name_of_its_own_key() -> None:
    leaf = tls.leaf_certificate(KEY)
    assert leaf.issuer == tls.anchor_name(RAW)
    assert leaf.issuer != leaf.subject  # so OpenSSL does not take it for self-signed
    assert common_name(leaf.subject) == f"peer {tls.key_label(RAW)}"
    assert common_name(leaf.issuer) == f"key {tls.key_label(RAW)}"
    assert leaf.version == x509.Version.v3


def test_the_leaf_holds_the_key_and_is_signed_by_it() -> None:
    leaf = tls.leaf_certificate(KEY)
    assert raw(ed25519_of(leaf)) == RAW
    assert leaf.signature_algorithm_oid == SignatureAlgorithmOID.ED25519
    KEY.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes)
    with pytest.raises(InvalidSignature):
        OTHER.public_key().verify(leaf.signature, leaf.tbs_certificate_bytes)


def test_the_leaf_is_not_a_ca_and_never_expires_in_practice() -> None:
    leaf = tls.leaf_certificate(KEY)
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca is False
    assert leaf.not_valid_before_utc == datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    assert leaf.not_valid_after_utc == datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def test_each_leaf_has_its_own_serial_number() -> None:
    assert tls.leaf_certificate(KEY).serial_number != tls.leaf_certificate(KEY).serial_number


def test_the_leaf_survives_der() -> None:
    leaf = tls.leaf_certificate(KEY)
    again = x509.load_der_x509_certificate(leaf.public_bytes(serialization.Encoding.DER))
    assert again == leaf and raw(ed25519_of(again)) == RAW


# ---------------------------------------------------------------- anchors


def test_an_anchor_is_named_for_its_key_and_holds_it() -> None:
    anchor = tls.anchor_certificate(RAW, signer=OTHER)
    assert anchor.subject == anchor.issuer == tls.anchor_name(RAW)
    assert raw(ed25519_of(anchor)) == RAW
    assert tls.anchor_name(RAW) != tls.anchor_name(OTHER_RAW)


def test_an_anchor_is_a_ca_that_may_only_sign_certificates() -> None:
    anchor = tls.anchor_certificate(RAW, signer=OTHER)
    constraints = anchor.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is True and constraints.value.path_length == 0
    usage = anchor.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign is True
    assert not any(
        (
            usage.value.digital_signature,
            usage.value.content_commitment,
            usage.value.key_encipherment,
            usage.value.data_encipherment,
            usage.value.key_agreement,
            usage.value.crl_sign,
        )
    )


def test_an_anchor_is_signed_by_its_signer() -> None:
    anchor = tls.anchor_certificate(RAW, signer=OTHER)
    OTHER.public_key().verify(anchor.signature, anchor.tbs_certificate_bytes)
    with pytest.raises(InvalidSignature):
        KEY.public_key().verify(anchor.signature, anchor.tbs_certificate_bytes)


def test_a_leaf_is_directly_issued_by_the_anchor_of_its_key_only() -> None:
    leaf = tls.leaf_certificate(KEY)
    leaf.verify_directly_issued_by(tls.anchor_certificate(RAW, signer=OTHER))
    with pytest.raises(ValueError):  # the anchor of another key has another name
        leaf.verify_directly_issued_by(tls.anchor_certificate(OTHER_RAW, signer=KEY))
    impostor = tls.leaf_certificate(OTHER)
    with pytest.raises((ValueError, InvalidSignature)):
        impostor.verify_directly_issued_by(tls.anchor_certificate(RAW, signer=OTHER))


# ---------------------------------------------------------------- peer_key


class FakeTls:
    """What `peer_key` reads of an `ssl.SSLObject`: the peer's certificate, in DER."""

    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        assert binary_form
        return self.der


def peer_key_of(der: bytes | None, expected: bytes | None) -> bytes:
    return tls.peer_key(cast(ssl.SSLObject, FakeTls(der)), expected, "the expected one")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def foreign_certificate(private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private_key, hashes.SHA256())
    )
    return der(cert)


def test_peer_key_is_the_key_of_the_leaf_when_expected() -> None:
    assert peer_key_of(der(tls.leaf_certificate(KEY)), RAW) == RAW
    assert peer_key_of(der(tls.anchor_certificate(OTHER_RAW, signer=KEY)), OTHER_RAW) == OTHER_RAW


@pytest.mark.parametrize(
    "expected", [OTHER_RAW, None, RAW[:31], b""], ids=["other", "none", "short", "empty"]
)
def test_peer_key_refuses_another_key_and_says_which_it_was(expected: bytes | None) -> None:
    with pytest.raises(tls.KeyMismatch) as info:
        peer_key_of(der(tls.leaf_certificate(KEY)), expected)
    assert str(info.value) == "a certificate for another key than the expected one"
    assert info.value.offered == RAW


def test_peer_key_refuses_no_certificate() -> None:
    with pytest.raises(tls.KeyMismatch) as info:
        peer_key_of(None, RAW)
    assert str(info.value) == "no certificate" and info.value.offered is None


@pytest.mark.parametrize("data", [b"", b"\x30\x03\x02\x01\x01", b"not a certificate"], ids=repr)
def test_peer_key_refuses_an_unreadable_certificate(data: bytes) -> None:
    with pytest.raises(tls.KeyMismatch) as info:
        peer_key_of(data, RAW)
    assert str(info.value).startswith("an unreadable certificate (") and info.value.offered is None


def test_peer_key_refuses_keys_that_are_not_ed25519() -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(tls.KeyMismatch) as info:
        peer_key_of(foreign_certificate(ec_key), RAW)
    assert str(info.value) == "a certificate for an EC secp256r1 key, not Ed25519"
    assert info.value.offered is None
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(tls.KeyMismatch) as info:
        peer_key_of(foreign_certificate(rsa_key), RAW)
    assert str(info.value) == "a certificate for an RSA-1024 key, not Ed25519"


# ---------------------------------------------------------------- contexts


def test_both_contexts_speak_tls_1_3_only() -> None:
    for context in (tls.client_context(KEY), tls.server_context(KEY, [RAW], lambda *_: None).context):
        assert context.minimum_version == context.maximum_version == ssl.TLSVersion.TLSv1_3
        assert context.check_hostname is False


def test_the_server_requires_a_certificate_and_the_client_checks_the_key_itself() -> None:
    assert tls.server_context(KEY, [RAW], lambda *_: None).context.verify_mode == ssl.CERT_REQUIRED
    assert tls.client_context(KEY).verify_mode == ssl.CERT_NONE  # peer_key after the handshake
