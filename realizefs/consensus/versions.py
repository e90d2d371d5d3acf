"""Version vectors: how two versions of a path relate, and how a change moves them.

A version vector maps a peer id (bytes) to the number of changes that peer made
to the path; a missing peer counts 0, so ``{}`` is the vector of nothing and
``{p: 0}`` equals it. Vectors are partially ordered: *a* dominates *b* when it
counts at least as much for every peer and more for one. Two vectors neither
equal nor ordered are concurrent: neither change knew of the other.

Pure functions over plain dicts, never changing their arguments; no I/O, no
state, safe from any thread.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

Vector = Mapping[bytes, int]


class Order(enum.Enum):
    """How version *a* relates to version *b* (`compare`)."""

    EQUAL = "equal"
    DOMINATES = "dominates"  # a is newer: it knew of b
    DOMINATED = "dominated"  # a is older: b knew of it
    CONCURRENT = "concurrent"  # neither knew of the other


def compare(a: Vector, b: Vector) -> Order:
    """How *a* relates to *b*."""
    greater = less = False
    for peer in a.keys() | b.keys():
        x, y = a.get(peer, 0), b.get(peer, 0)
        if x > y:
            greater = True
        elif x < y:
            less = True
        if greater and less:
            return Order.CONCURRENT
    if greater:
        return Order.DOMINATES
    return Order.DOMINATED if less else Order.EQUAL


def merge(*vectors: Vector) -> dict[bytes, int]:
    """The least vector dominating-or-equal to each of *vectors* (the per-peer maximum)."""
    out: dict[bytes, int] = {}
    for vector in vectors:
        for peer, count in vector.items():
            if count > out.get(peer, 0):
                out[peer] = count
    return out


def increment(vector: Vector, peer: bytes) -> dict[bytes, int]:
    """*vector* with one more change by *peer*: a version that dominates it."""
    out = normal(vector)
    out[peer] = out.get(peer, 0) + 1
    return out


def normal(vector: Vector) -> dict[bytes, int]:
    """*vector* as a new dict without its zero counts (equal vectors compare equal as dicts)."""
    return {peer: count for peer, count in vector.items() if count}


def newest(vectors: Iterable[Vector]) -> dict[bytes, int] | None:
    """The one of *vectors* dominating-or-equal to all others; None if there is none (or no vector)."""
    given = [normal(v) for v in vectors]
    top = merge(*given)
    return top if top in given else None
