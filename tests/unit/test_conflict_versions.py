"""The pure parts of conflicts: how a kept version is named, which version a written value
names, and how ``user.realize.versions`` shows them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realizefs.errors import InvalidValue
from realizefs.real.conflicts import copy_name, copy_path
from realizefs.vfs.conflicts import CURRENT, Version, describe, pick

ORIGIN = bytes.fromhex("f4a1968a00112233")
HASH = bytes.fromhex("cf415f26163b" + "00" * 26)


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        (b"f.txt", b"f4a1968a-cf415f26163b.txt"),
        (b"archive.tar.gz", b"f4a1968a-cf415f26163b.gz"),
        (b"Makefile", b"f4a1968a-cf415f26163b"),
        (b".bashrc", b"f4a1968a-cf415f26163b"),  # a leading dot is no extension
        (b"x." + b"e" * 15, b"f4a1968a-cf415f26163b." + b"e" * 15),
        (b"x." + b"e" * 16, b"f4a1968a-cf415f26163b"),  # too long to be an extension
    ],
)
def test_a_kept_version_is_named_by_peer_and_short_hash_with_the_extension(name: bytes, kept: bytes) -> None:
    assert copy_name(name, ORIGIN, HASH) == kept
    assert copy_path((b"d", name), ORIGIN, HASH) == (b".realize-conflicts", b"d", name, kept)


def test_a_version_of_no_known_peer_says_so() -> None:
    assert copy_name(b"f", b"", HASH) == b"unknown-cf415f26163b"


def v(hex_hash: str, where: bytes = b"x.txt") -> Version:
    return Version(bytes.fromhex(hex_hash.ljust(64, "0")), 3, 1_600_000_000_123_456_789, "b", where)


FOUND = [v("aa11", CURRENT), v("aa22", b"b1.txt"), v("bb33", b"b2.txt")]


@pytest.mark.parametrize(
    ("value", "chosen"),
    [
        (b"aa1", 0),
        (b"AA2\n", 1),  # case and white space ignored
        (b" b", 2),
        (b"aa22" + b"0" * 60, 1),  # the whole hash
    ],
)
def test_a_hash_or_an_unambiguous_prefix_names_a_version(value: bytes, chosen: int) -> None:
    assert pick(FOUND, value) is FOUND[chosen]


@pytest.mark.parametrize("value", [b"aa", b"", b"  ", b"cc", b"aa1g", b"aa11" + b"0" * 61, "é".encode()])
def test_anything_else_is_invalid(value: bytes) -> None:
    with pytest.raises(InvalidValue):
        pick(FOUND, value)


def test_versions_saying_the_same_are_one_and_the_current_is_chosen() -> None:
    found = [v("cc", CURRENT), v("cc", b"copy.txt")]
    assert pick(found, b"c").current


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=6, unique=True), st.data())
def test_each_full_hash_names_its_version(hashes: list[bytes], data: st.DataObject) -> None:
    found = [Version(h, 1, 0, "", CURRENT if i == 0 else f"{i}".encode()) for i, h in enumerate(hashes)]
    i = data.draw(st.integers(0, len(found) - 1))
    assert pick(found, found[i].hash.hex().encode()) is found[i]


def test_the_versions_are_listed_one_a_line() -> None:
    assert describe([v("aa11", CURRENT), Version(b"\xbb" * 32, 12, 5, "", b"n.txt")]) == (
        b"aa11"
        + b"0" * 60
        + b" 3 2020-09-13T12:26:40.123456789Z b current\n"
        + b"bb" * 32
        + b" 12 1970-01-01T00:00:00.000000005Z - n.txt\n"
    )
