"""File lists on the wire: batches of a peer's records, as msgpack, checked field by field.

A batch is one streamed part of a ``follow`` answer: a msgpack array of
records, each the array ``[seq, path, kind, size, mtime_ns, mode, hash,
target, vv, real, origin]`` (see `realizefs.store.index` for what each
means; *path* is the names joined by ``/``). `encode` packs records into
parts of at most `MAX_PART` bytes; `decode` returns the records of one part
or raises `BadBatch` saying which field of which record was wrong: a path
that is not a relative path of valid names (or that names what the daemon
keeps in an arena's root: its marker and staging directory), a kind, a hash
that is not 32 bytes, sequence numbers that do not grow. A peer that sends one is broken or
hostile, and its connection is closed (`realizefs.sync.lists`).

Pure: no trio, no sockets, no store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgpack

from realizefs.peers.connection import MAX_DATA
from realizefs.peers.schema import MAX_INT, BadArguments, Bool, Bytes, Int, MapOf, Optional, Schema
from realizefs.real.marker import MARKER
from realizefs.real.staging import STAGING
from realizefs.store.index import KIND_DELETED, KIND_FILE, Record, Told, valid_name

MAX_PART = MAX_DATA
MAX_PATH = 256 << 10  # bytes of one path: far deeper than any tree, well within a part
MAX_TARGET = 64 << 10
MAX_VECTOR = 4096  # peers in one version vector
PEER_ID = Bytes(32, low=1)
OWN = (MARKER, STAGING)  # the daemon's in each arena's root, never a peer's

_FIELDS: tuple[tuple[str, Schema[Any]], ...] = (
    ("seq", Int(1)),
    ("path", Bytes(MAX_PATH, low=1)),
    ("kind", Int(KIND_FILE, KIND_DELETED)),
    ("size", Int(0)),
    ("mtime_ns", Int(-MAX_INT, MAX_INT)),
    ("mode", Int(0, 0o7777)),
    ("hash", Optional(Bytes(32, low=32))),
    ("target", Optional(Bytes(MAX_TARGET, low=1))),
    ("vv", MapOf(PEER_ID, Int(1), MAX_VECTOR)),
    ("real", Bool()),
    ("origin", Bytes(32)),
)


class BadBatch(ValueError):
    """A batch that is not a list of valid records: what was wrong, and where."""


def _fields(told: Told) -> list[Any]:
    r = told.record
    return [
        told.seq,
        b"/".join(told.path),
        r.kind,
        r.size,
        r.mtime_ns,
        r.mode,
        r.hash,
        r.target,
        r.vv,
        r.real,
        r.origin,
    ]


def encode(records: Iterable[Told]) -> Iterator[bytes]:
    """*records* as parts of at most `MAX_PART` bytes each (a record never spans two)."""
    packer = msgpack.Packer()
    items: list[bytes] = []
    size = 0
    for told in records:
        item = packer.pack(_fields(told))
        if items and size + len(item) + 5 > MAX_PART:
            yield packer.pack_array_header(len(items)) + b"".join(items)
            items, size = [], 0
        items.append(item)
        size += len(item)
    if items:
        yield packer.pack_array_header(len(items)) + b"".join(items)


def decode(part: bytes, after: int) -> list[Told]:
    """The records of one part, each numbered after the one before (the first after *after*)."""
    try:
        raw = msgpack.unpackb(part, strict_map_key=False, use_list=True, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise BadBatch(f"not msgpack: {exc}") from None
    if type(raw) is not list or not raw:
        raise BadBatch("a batch is a non-empty list of records")
    out = []
    for i, item in enumerate(raw):
        where = f"record {i}"
        if type(item) is not list or len(item) != len(_FIELDS):
            raise BadBatch(f"{where}: expected a list of {len(_FIELDS)} fields")
        try:
            values = {
                name: schema.check(v, f"{where}.{name}")
                for (name, schema), v in zip(_FIELDS, item, strict=True)
            }
        except BadArguments as exc:
            raise BadBatch(str(exc)) from None
        if values["seq"] <= after:
            raise BadBatch(f"{where}: sequence number {values['seq']} does not follow {after}")
        after = values["seq"]
        names = values["path"].split(b"/")
        if not all(valid_name(n) for n in names):
            raise BadBatch(f"{where}.path: not a relative path of valid names: {values['path'][:200]!r}")
        if names[0] in OWN:
            raise BadBatch(f"{where}.path: a name the daemon keeps in an arena's root: {names[0]!r}")
        if values["kind"] == KIND_FILE and values["hash"] is None:
            raise BadBatch(f"{where}: a file without its content hash")
        if not values["vv"]:
            raise BadBatch(f"{where}.vv: an empty version vector")
        record = Record(
            values["kind"],
            values["size"],
            values["mtime_ns"],
            values["mode"],
            values["hash"],
            values["target"],
            vv=values["vv"],
            real=values["real"],
            origin=values["origin"],
        )
        out.append(Told(values["seq"], tuple(names), record))
    return out
