"""The messages of the wire and their msgpack encoding.

Each message is a msgpack array whose first element is its kind, followed by
its fields in a fixed order (the table `_FIELDS`). `decode` accepts only
exactly that shape, with each field of its type and within its bounds, and
refuses everything else with `ProtocolError`: unknown kinds, extension
types, maps keyed by anything but strings or bytes, and containers longer than the
limits below, which msgpack checks before it allocates (a "bomb" declaring
four billion elements costs nothing). A hello of another protocol version
is refused with `IncompatibleVersion`, which says which one. `encode` refuses
(`Unencodable`) a message carrying text or values that `decode` would refuse,
so what we send is never what our peers drop us for.

Directions: `Request`, `Cancel`, `Credit` name an id chosen by the side that
sent the request; `Data`, `Response`, `Error` answer it. Both sides send
requests. Pure: no sockets, no trio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

import msgpack

from realizefs.errors import ProtocolError
from realizefs.peers.frames import MAX_FRAME

PROTOCOL_VERSION = 1
MAGIC = "realizefs"
MAX_ID = (1 << 63) - 1
MAX_NAME = 64
MAX_TEXT = 4096
MAX_ARENAS = 1024
MAX_STORE_ID = 64
# Limits msgpack enforces while decoding, before allocating.
_MAX_CONTAINER = 1 << 16
_MAX_STR = 1 << 16

Value: TypeAlias = Any  # what msgpack carries: None, bool, int, float, str, bytes, lists, str-keyed maps


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message each side sends once the peer is authenticated."""

    name: str
    store_id: bytes
    arenas: tuple[str, ...]
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Goodbye:
    """Why the sender closes the connection; the last message it sends."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ping:
    token: int


@dataclass(frozen=True, slots=True)
class Pong:
    token: int


@dataclass(frozen=True, slots=True)
class Request:
    """Ask the peer to run *method*; it may stream up to *window* bytes of `Data` before credit."""

    id: int
    method: str
    args: Value
    window: int = 0


@dataclass(frozen=True, slots=True)
class Data:
    """A part of a streaming answer."""

    id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """The final answer to a request."""

    id: int
    value: Value


@dataclass(frozen=True, slots=True)
class Error:
    """A request failed: *code* for programs, *message* for people."""

    id: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """The requester no longer wants the answer."""

    id: int


@dataclass(frozen=True, slots=True)
class Credit:
    """The requester has consumed *amount* more bytes: the responder may send that much more."""

    id: int
    amount: int


Message: TypeAlias = Hello | Goodbye | Ping | Pong | Request | Data | Response | Error | Cancel | Credit


class Unencodable(ValueError):
    """A message we must not send: msgpack cannot carry it, or our own decoder would refuse it."""


class IncompatibleVersion(ProtocolError):
    def __init__(self, version: int) -> None:
        super().__init__(f"protocol version {version} is not supported (this peer speaks {PROTOCOL_VERSION})")
        self.version = version


# ---------------------------------------------------------------- field checks
# Each check returns the decoded value or raises ValueError saying what was expected.


def _int(limit: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if type(value) is not int or not 0 <= value <= limit:
            raise ValueError(f"expected an integer from 0 to {limit}, got {_kind(value)}")
        return value

    return check


def _str(limit: int) -> Callable[[object], str]:
    def check(value: object) -> str:
        if type(value) is not str or len(value) > limit:
            raise ValueError(f"expected a string of at most {limit} characters, got {_kind(value)}")
        return value

    return check


def _bytes(low: int, high: int) -> Callable[[object], bytes]:
    def check(value: object) -> bytes:
        if type(value) is not bytes or not low <= len(value) <= high:
            raise ValueError(f"expected {low} to {high} bytes, got {_kind(value)}")
        return value

    return check


def _names(value: object) -> tuple[str, ...]:
    name = _str(MAX_TEXT)
    if type(value) is not list or len(value) > MAX_ARENAS:
        raise ValueError(f"expected a list of at most {MAX_ARENAS} names, got {_kind(value)}")
    return tuple(name(v) for v in value)


def _any(value: object) -> Value:
    return value


def _kind(value: object) -> str:
    if isinstance(value, list | dict | str | bytes):
        return f"{type(value).__name__} of length {len(value)}"
    return repr(value) if isinstance(value, int | float | bool | None) else type(value).__name__


_ID = _int(MAX_ID)
_FIELDS: dict[int, tuple[type[Message], tuple[Callable[[object], Any], ...]]] = {
    1: (Hello, (_str(MAX_NAME), _bytes(1, MAX_STORE_ID), _names)),
    2: (Goodbye, (_str(MAX_TEXT),)),
    3: (Ping, (_ID,)),
    4: (Pong, (_ID,)),
    5: (Request, (_ID, _str(MAX_NAME), _any, _int(MAX_FRAME * 1024))),
    6: (Data, (_ID, _bytes(1, MAX_FRAME))),
    7: (Response, (_ID, _any)),
    8: (Error, (_ID, _str(MAX_NAME), _str(MAX_TEXT))),
    9: (Cancel, (_ID,)),
    10: (Credit, (_ID, _int(MAX_FRAME * 1024))),
}
_KINDS: dict[type[Message], int] = {cls: kind for kind, (cls, _) in _FIELDS.items()}
_NAMES: dict[type[Message], tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in _KINDS}
# Messages carrying text or values from the layer above: checked by decoding what was encoded.
_FREE_FORM = (Request, Response, Error, Goodbye)


def encode(message: Message) -> bytes:
    """The msgpack bytes of *message*; `Unencodable` if the peer could not take them."""
    if isinstance(message, Hello):
        fields: list[Value] = [
            MAGIC,
            message.version,
            message.name,
            message.store_id,
            list(message.arenas),
        ]
    else:
        fields = [getattr(message, name) for name in _NAMES[type(message)]]
    try:
        payload: bytes = msgpack.packb([_KINDS[type(message)], *fields], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise Unencodable(f"{type(message).__name__}: {exc}") from None
    if len(payload) > MAX_FRAME:
        raise Unencodable(f"{type(message).__name__}: {len(payload)} bytes, more than a frame holds")
    if isinstance(message, _FREE_FORM):
        try:
            decode(payload)
        except ProtocolError as exc:
            raise Unencodable(f"the peer would refuse it: {exc}") from None
    return payload


def _refuse_ext(code: int, data: bytes) -> object:
    raise ValueError(f"extension type {code}")


def decode(payload: bytes) -> Message:
    """The message in one frame's *payload*; `ProtocolError` if it is not exactly one."""
    try:
        raw = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_str_len=_MAX_STR,
            max_bin_len=MAX_FRAME,
            max_array_len=_MAX_CONTAINER,
            max_map_len=_MAX_CONTAINER,
            max_ext_len=0,
        )
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"not a msgpack message ({type(exc).__name__}: {exc})") from None
    if type(raw) is not list or not raw:
        raise ProtocolError(f"expected a message array, got {_kind(raw)}")
    kind, fields = raw[0], raw[1:]
    if type(kind) is not int or kind not in _FIELDS:
        raise ProtocolError(f"unknown message kind {_kind(kind)}")
    cls, checks = _FIELDS[kind]
    if cls is Hello:
        fields = _hello_fields(fields)
    if len(fields) != len(checks):
        raise ProtocolError(f"{cls.__name__}: expected {len(checks)} fields, got {len(fields)}")
    values = []
    for i, (check, value) in enumerate(zip(checks, fields, strict=True)):
        try:
            values.append(check(value))
        except ValueError as exc:
            raise ProtocolError(f"{cls.__name__} field {i + 1}: {exc}") from None
    return cls(*values)


def _hello_fields(fields: list[Value]) -> list[Value]:
    """The fields of a hello after its magic and version, which are checked first."""
    if len(fields) < 2 or fields[0] != MAGIC or type(fields[1]) is not int:
        raise ProtocolError("Hello: not a realizefs hello")
    if fields[1] != PROTOCOL_VERSION:
        raise IncompatibleVersion(fields[1])
    return fields[2:]
