"""Validators for the arguments of requests: msgpack values in, typed values out.

A request's ``args`` arrive as whatever msgpack carried (`messages.decode`
bounds their size, not their shape). Each method declares a `Schema` built
from the small validators here; `Schema.check` returns the typed value or
raises `BadArguments` naming the field (``args.paths[3]``) and why, so the
peer is told exactly what it got wrong. Validators are strict: an integer
is never a bool, bytes are never text, a record refuses keys it does not
know (a change of shape is a change of protocol version, stated in the
hello). Containers are bounded by the schema, not only by the frame.

Pure: no trio, no sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
K = TypeVar("K")
V = TypeVar("V")

MAX_INT = (1 << 63) - 1


class BadArguments(ValueError):
    """Arguments that do not fit their schema: *where* the field, *why* what was wrong."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where
        self.why = why


class Schema(Protocol[T_co]):
    def check(self, value: object, where: str = "args") -> T_co:
        """*value* as this schema's type; `BadArguments` naming *where* otherwise."""
        ...


def _field(where: str, key: object) -> str:
    """The name of the field *key* of *where*, kept short whatever the key."""
    if isinstance(key, str) and len(key) <= 64 and key.isprintable():
        return f"{where}.{key}"
    return f"{where}[{describe(key)}]"


def describe(value: object) -> str:
    """A short description of *value* for an error message (never the value of a long one)."""
    if isinstance(value, list | dict | str | bytes):
        return f"{type(value).__name__} of length {len(value)}"
    if isinstance(value, bool | int | float) or value is None:
        text = repr(value)
        return text if len(text) <= 40 else f"{type(value).__name__} of {len(text)} digits"
    return type(value).__name__


@dataclass(frozen=True)
class Nil:
    """No arguments: None."""

    def check(self, value: object, where: str = "args") -> None:
        if value is not None:
            raise BadArguments(where, f"expected nothing, got {describe(value)}")


@dataclass(frozen=True)
class Bool:
    def check(self, value: object, where: str = "args") -> bool:
        if type(value) is not bool:
            raise BadArguments(where, f"expected true or false, got {describe(value)}")
        return value


@dataclass(frozen=True)
class Int:
    """An integer from *low* to *high*, inclusive."""

    low: int = 0
    high: int = MAX_INT

    def check(self, value: object, where: str = "args") -> int:
        if type(value) is not int:
            raise BadArguments(where, f"expected an integer, got {describe(value)}")
        if not self.low <= value <= self.high:
            raise BadArguments(
                where, f"expected an integer from {self.low} to {self.high}, got {describe(value)}"
            )
        return value


@dataclass(frozen=True)
class Bytes:
    """Bytes, *low* to *high* of them."""

    high: int
    low: int = 0

    def check(self, value: object, where: str = "args") -> bytes:
        if type(value) is not bytes:
            raise BadArguments(where, f"expected bytes, got {describe(value)}")
        if not self.low <= len(value) <= self.high:
            raise BadArguments(where, f"expected {self.low} to {self.high} bytes, got {len(value)}")
        return value


@dataclass(frozen=True)
class Str:
    """Text, *low* to *high* characters."""

    high: int
    low: int = 0

    def check(self, value: object, where: str = "args") -> str:
        if type(value) is not str:
            raise BadArguments(where, f"expected text, got {describe(value)}")
        if not self.low <= len(value) <= self.high:
            raise BadArguments(where, f"expected {self.low} to {self.high} characters, got {len(value)}")
        return value


@dataclass(frozen=True)
class Optional(Generic[T]):
    """None, or what *schema* accepts."""

    schema: Schema[T]

    def check(self, value: object, where: str = "args") -> T | None:
        return None if value is None else self.schema.check(value, where)


@dataclass(frozen=True)
class ListOf(Generic[T]):
    """A list of at most *high* items, each checked by *item*; a tuple."""

    item: Schema[T]
    high: int

    def check(self, value: object, where: str = "args") -> tuple[T, ...]:
        if type(value) is not list:
            raise BadArguments(where, f"expected a list, got {describe(value)}")
        if len(value) > self.high:
            raise BadArguments(where, f"expected at most {self.high} items, got {len(value)}")
        return tuple(self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class MapOf(Generic[K, V]):
    """A map of at most *high* entries, keys checked by *key* and values by *value*."""

    key: Schema[K]
    value: Schema[V]
    high: int

    def check(self, value: object, where: str = "args") -> dict[K, V]:
        if type(value) is not dict:
            raise BadArguments(where, f"expected a map, got {describe(value)}")
        if len(value) > self.high:
            raise BadArguments(where, f"expected at most {self.high} entries, got {len(value)}")
        result: dict[K, V] = {}
        for k, v in value.items():
            result[self.key.check(k, f"{where} (a key)")] = self.value.check(v, _field(where, k))
        return result


@dataclass(frozen=True)
class Default(Generic[T]):
    """A record field that may be absent, standing for *default*."""

    schema: Schema[T]
    default: T


@dataclass(frozen=True)
class Record(Generic[T]):
    """A map with known text keys, made into *cls* (a dataclass) field by field.

    *schemas* has one entry per field of *cls*; a `Default` entry makes the key
    optional. Unknown keys are refused.
    """

    cls: type[T]
    schemas: Mapping[str, Schema[Any] | Default[Any]]

    def __post_init__(self) -> None:
        names = {f.name for f in fields(self.cls)}  # type: ignore[arg-type]
        if names != set(self.schemas):
            raise TypeError(
                f"{self.cls.__name__}: fields {sorted(names)}, schemas for {sorted(self.schemas)}"
            )

    def check(self, value: object, where: str = "args") -> T:
        if type(value) is not dict:
            raise BadArguments(where, f"expected a map, got {describe(value)}")
        unknown = [k for k in value if k not in self.schemas]
        if unknown:
            raise BadArguments(_field(where, unknown[0]), "unknown key")
        values: dict[str, Any] = {}
        for name, schema in self.schemas.items():
            if isinstance(schema, Default):
                values[name] = (
                    schema.schema.check(value[name], f"{where}.{name}") if name in value else schema.default
                )
            elif name not in value:
                raise BadArguments(f"{where}.{name}", "missing")
            else:
                values[name] = schema.check(value[name], f"{where}.{name}")
        return self.cls(**values)
