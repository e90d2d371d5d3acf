"""The validators of request arguments: what each accepts, what it refuses and how it says so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from realizefs.peers.schema import (
    BadArguments,
    Bool,
    Bytes,
    Default,
    Int,
    ListOf,
    MapOf,
    Nil,
    Optional,
    Record,
    Schema,
    Str,
)


@dataclass(frozen=True)
class Read:
    hash: bytes
    offset: int
    length: int


READ = Record(Read, {"hash": Bytes(32, low=32), "offset": Int(), "length": Default(Int(1, 1 << 20), 65536)})

ACCEPTED: list[tuple[Schema[Any], object, object]] = [
    (Nil(), None, None),
    (Bool(), True, True),
    (Int(0, 10), 0, 0),
    (Int(0, 10), 10, 10),
    (Int(-5, 5), -5, -5),
    (Bytes(4), b"", b""),
    (Bytes(4, low=4), b"abcd", b"abcd"),
    (Str(3), "abc", "abc"),
    (Optional(Int()), None, None),
    (Optional(Int()), 3, 3),
    (ListOf(Int(), 2), [], ()),
    (ListOf(Int(), 2), [1, 2], (1, 2)),
    (MapOf(Bytes(8, low=8), Int(), 2), {b"p" * 8: 3}, {b"p" * 8: 3}),
    (READ, {"hash": b"h" * 32, "offset": 5}, Read(b"h" * 32, 5, 65536)),
    (READ, {"hash": b"h" * 32, "offset": 5, "length": 7}, Read(b"h" * 32, 5, 7)),
]

REFUSED: list[tuple[Schema[Any], object, str, str]] = [
    (Nil(), 0, "args", "expected nothing, got 0"),
    (Bool(), 1, "args", "expected true or false, got 1"),
    (Int(), True, "args", "expected an integer, got True"),
    (Int(), 1.0, "args", "expected an integer, got 1.0"),
    (Int(0, 10), 11, "args", "expected an integer from 0 to 10, got 11"),
    (Int(0, 10), -1, "args", "expected an integer from 0 to 10, got -1"),
    (Int(), 10**100, "args", "got int of 101 digits"),
    (Bytes(4), "abcd", "args", "expected bytes, got str of length 4"),
    (Bytes(4), b"abcde", "args", "expected 0 to 4 bytes, got 5"),
    (Bytes(4, low=4), b"abc", "args", "expected 4 to 4 bytes, got 3"),
    (Str(3), b"abc", "args", "expected text, got bytes of length 3"),
    (Str(3), "abcd", "args", "expected 0 to 3 characters, got 4"),
    (Optional(Int()), "x", "args", "expected an integer"),
    (ListOf(Int(), 2), (1,), "args", "expected a list, got tuple"),
    (ListOf(Int(), 2), [1, 2, 3], "args", "expected at most 2 items, got 3"),
    (ListOf(Int(0, 9), 2), [1, 10], "args[1]", "expected an integer from 0 to 9, got 10"),
    (MapOf(Bytes(8), Int(), 1), {b"a": 1, b"b": 2}, "args", "expected at most 1 entries, got 2"),
    (MapOf(Bytes(8), Int(), 2), {"a": 1}, "args (a key)", "expected bytes, got str of length 1"),
    (MapOf(Str(8), Int(0, 1), 2), {"a": 2}, "args.a", "expected an integer from 0 to 1, got 2"),
    (READ, [], "args", "expected a map, got list of length 0"),
    (READ, {"offset": 5}, "args.hash", "missing"),
    (READ, {"hash": b"h" * 32, "offset": 5, "extra": 1}, "args.extra", "unknown key"),
    (READ, {"hash": b"h" * 32, "offset": 5, b"raw": 1}, "args[bytes of length 3]", "unknown key"),
    (READ, {"hash": b"h" * 32, "offset": 5, "x" * 100: 1}, "args[str of length 100]", "unknown key"),
    (READ, {"hash": b"h" * 31, "offset": 5}, "args.hash", "expected 32 to 32 bytes, got 31"),
    (READ, {"hash": b"h" * 32, "offset": 5, "length": 0}, "args.length", "from 1 to 1048576, got 0"),
    (READ, {"hash": b"h" * 32, "offset": None}, "args.offset", "expected an integer, got None"),
]


@pytest.mark.parametrize(("schema", "value", "result"), ACCEPTED)
def test_accepted(schema: Schema[Any], value: object, result: object) -> None:
    checked = schema.check(value)
    assert checked == result and type(checked) is type(result)


@pytest.mark.parametrize(("schema", "value", "where", "why"), REFUSED)
def test_refused_naming_the_field_and_why(schema: Schema[Any], value: object, where: str, why: str) -> None:
    with pytest.raises(BadArguments) as info:
        schema.check(value)
    assert info.value.where == where
    assert why in info.value.why, info.value.why
    assert str(info.value) == f"{where}: {info.value.why}"


def test_nested_fields_are_named_by_their_path() -> None:
    schema = ListOf(READ, 4)
    with pytest.raises(BadArguments) as info:
        schema.check([{"hash": b"h" * 32, "offset": 1}, {"hash": b"h" * 32, "offset": -1}])
    assert info.value.where == "args[1].offset"


def test_a_record_must_declare_every_field_of_its_class() -> None:
    with pytest.raises(TypeError, match="fields"):
        Record(Read, {"hash": Bytes(32), "offset": Int()})
