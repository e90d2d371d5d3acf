"""File lists on the wire: batches encode and decode, and every malformed part is refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from realizefs.store.index import KIND_DELETED, KIND_DIR, KIND_FILE, KIND_LINK, Record, Told
from realizefs.sync import wire
from realizefs.sync.content import check_manifest

H = bytes(range(32))


def told(seq: int, path: bytes, record: Record) -> Told:
    return Told(seq, tuple(path.split(b"/")), record)


def test_records_round_trip_in_parts_of_bounded_size() -> None:
    records = [
        told(1, b"d", Record(KIND_DIR, 0, 5, 0o755, vv={b"a": 1}, real=True, origin=b"a")),
        told(2, b"d/f", Record(KIND_FILE, 9, -3, 0o644, H, vv={b"a": 2, b"b": 1}, real=False, origin=b"b")),
        told(3, b"d/l", Record(KIND_LINK, 0, 1, 0, target=b"../x", vv={b"a": 1}, origin=b"a")),
        told(7, b"gone", Record(KIND_DELETED, vv={b"c": 4}, real=False)),
    ]
    parts = list(wire.encode(records))
    assert len(parts) == 1
    back = wire.decode(parts[0], 0)
    assert [(t.seq, t.path, t.record, t.record.vv, t.record.origin) for t in back] == [
        (t.seq, t.path, t.record, t.record.vv, t.record.origin) for t in records
    ]
    many = [told(i + 1, b"x" * 200 + str(i).encode(), records[1].record) for i in range(20_000)]
    parts = list(wire.encode(many))
    assert len(parts) > 1 and all(len(p) <= wire.MAX_PART for p in parts)
    after, seen = 0, 0
    for part in parts:
        got = wire.decode(part, after)
        after, seen = got[-1].seq, seen + len(got)
    assert seen == len(many)


def item(**changes: Any) -> list[Any]:
    fields = dict(seq=1, path=b"f", kind=KIND_FILE, size=1, mtime=1, mode=0o644, hash=H, target=None)
    fields |= dict(vv={b"a": 1}, real=True, origin=b"a")
    fields |= changes
    return list(fields.values())


@pytest.mark.parametrize(
    ("part", "why"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([]), "non-empty list"),
        (msgpack.packb({"a": 1}), "non-empty list"),
        (msgpack.packb([item()[:-1]]), "list of 11 fields"),
        (msgpack.packb([item(seq=0)]), "record 0.seq"),
        (msgpack.packb([item(seq=True)]), "record 0.seq"),
        (msgpack.packb([item(path=b"")]), "record 0.path"),
        (msgpack.packb([item(path="f")]), "record 0.path"),
        (msgpack.packb([item(path=b"../etc/passwd")]), "not a relative path"),
        (msgpack.packb([item(path=b"/abs")]), "not a relative path"),
        (msgpack.packb([item(path=b"a//b")]), "not a relative path"),
        (msgpack.packb([item(path=b"a/\0")]), "not a relative path"),
        (msgpack.packb([item(path=b"x" * 256)]), "not a relative path"),
        (msgpack.packb([item(path=b".")]), "not a relative path"),
        (msgpack.packb([item(path=b"a/./b")]), "not a relative path"),
        (msgpack.packb([item(path=b"a/")]), "not a relative path"),
        (msgpack.packb([item(path=b".realize-tmp")]), "a name the daemon keeps"),
        (msgpack.packb([item(path=b".realize-tmp/0123456789abcdef")]), "a name the daemon keeps"),
        (msgpack.packb([item(path=b".realize-arena")]), "a name the daemon keeps"),
        (msgpack.packb([item(path=b".realize-arena/x")]), "a name the daemon keeps"),
        (msgpack.packb([item(kind=9)]), "record 0.kind"),
        (msgpack.packb([item(size=-1)]), "record 0.size"),
        (msgpack.packb([item(mode=0o10000)]), "record 0.mode"),
        (msgpack.packb([item(hash=b"short")]), "record 0.hash"),
        (msgpack.packb([item(hash=None)]), "a file without its content hash"),
        (msgpack.packb([item(vv={})]), "an empty version vector"),
        (msgpack.packb([item(vv={b"a": 0})]), "record 0.vv"),
        (msgpack.packb([item(vv={"a": 1})]), "record 0.vv"),
        (msgpack.packb([item(real=1)]), "record 0.real"),
        (msgpack.packb([item(seq=2), item(seq=2)]), "does not follow 2"),
    ],
)
def test_a_malformed_part_is_refused_saying_why(part: bytes, why: str) -> None:
    with pytest.raises(wire.BadBatch, match=why):
        wire.decode(part, 0)


def test_the_daemons_names_are_a_peers_below_the_root() -> None:
    for path in (b"d/.realize-tmp", b"d/.realize-arena/x", b".realize", b".realize-tmpx"):
        assert wire.decode(msgpack.packb([item(path=path)]), 0)[0].path == tuple(path.split(b"/"))


def test_a_part_must_follow_what_was_taken() -> None:
    with pytest.raises(wire.BadBatch, match="does not follow 5"):
        wire.decode(msgpack.packb([item(seq=5)]), 5)


@pytest.mark.parametrize(
    ("flat", "size", "why"),
    [
        ([0, 10, H, 10, 5, H], 15, None),
        ([], 0, None),
        ([0, 10, H], 11, "covers 10 bytes"),
        ([1, 10, H], 11, "not contiguous"),
        ([0, 10, H, 11, 5, H], 16, "not contiguous"),
        ([0, 10, H, 9, 5, H], 14, "not contiguous"),
        ([0, 0, H], 0, "bad length"),
        ([0, (1 << 20) + 1, H], (1 << 20) + 1, "bad length"),
        ([0, 10, b"x"], 10, "malformed chunk hash"),
        ([0, True, H], 1, "wrong type"),
        ([0, 10, "h" * 32], 10, "wrong type"),
        ([0.0, 10, H], 10, "wrong type"),
        ([0, 10], 10, "not a manifest"),
        ({"a": 1}, 10, "not a manifest"),
    ],
)
def test_a_peers_manifest_is_checked(flat: object, size: int, why: str | None) -> None:
    if why is None:
        assert sum(length for _, length, _ in check_manifest(flat, size)) == size
    else:
        with pytest.raises(ValueError, match=why):
            check_manifest(flat, size)
