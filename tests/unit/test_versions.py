"""Version vectors (`realizefs.consensus.versions`): the table, and the partial order's laws."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realizefs.consensus.versions import Order, compare, increment, merge, newest, normal

A, B, C = b"a", b"b", b"c"


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ({}, {}, Order.EQUAL),
        ({A: 0}, {}, Order.EQUAL),  # a missing peer counts 0
        ({A: 1}, {}, Order.DOMINATES),
        ({}, {A: 1}, Order.DOMINATED),
        ({A: 2, B: 1}, {A: 1, B: 1}, Order.DOMINATES),
        ({A: 1, B: 1}, {A: 2}, Order.CONCURRENT),
        ({A: 1}, {B: 1}, Order.CONCURRENT),
        ({A: 3, B: 2, C: 1}, {A: 3, B: 2, C: 1}, Order.EQUAL),
        ({A: 3, B: 2}, {A: 3, B: 2, C: 1}, Order.DOMINATED),
        # a peer that missed intermediate versions is behind, not in conflict
        ({A: 3}, {A: 1}, Order.DOMINATES),
    ],
)
def test_compare(a: dict[bytes, int], b: dict[bytes, int], order: Order) -> None:
    assert compare(a, b) is order


@pytest.mark.parametrize(
    ("vectors", "merged"),
    [
        ([], {}),
        ([{A: 1}], {A: 1}),
        ([{A: 1, B: 3}, {A: 2, C: 1}], {A: 2, B: 3, C: 1}),
        ([{A: 1}, {A: 0, B: 0}], {A: 1}),
    ],
)
def test_merge(vectors: list[dict[bytes, int]], merged: dict[bytes, int]) -> None:
    assert merge(*vectors) == merged


def test_increment_and_newest_leave_their_arguments_alone() -> None:
    v = {A: 1, B: 0}
    assert increment(v, A) == {A: 2} and increment(v, C) == {A: 1, C: 1} and v == {A: 1, B: 0}
    assert newest([{A: 1}, {A: 2, B: 1}, {B: 1}]) == {A: 2, B: 1}
    assert newest([{A: 1}, {B: 1}]) is None and newest([]) is None
    assert newest([{A: 1}, {B: 1}, {A: 1, B: 1}]) == {A: 1, B: 1}  # a later one settles it


vectors = st.dictionaries(st.sampled_from([A, B, C]), st.integers(0, 3), max_size=3)
_FLIP = {Order.EQUAL: Order.EQUAL, Order.CONCURRENT: Order.CONCURRENT}
_FLIP |= {Order.DOMINATES: Order.DOMINATED, Order.DOMINATED: Order.DOMINATES}


def _le(a: dict[bytes, int], b: dict[bytes, int]) -> bool:
    return compare(a, b) in (Order.EQUAL, Order.DOMINATED)


@given(vectors, vectors, vectors)
def test_a_partial_order(a: dict[bytes, int], b: dict[bytes, int], c: dict[bytes, int]) -> None:
    assert compare(a, a) is Order.EQUAL  # reflexive
    assert compare(b, a) is _FLIP[compare(a, b)]  # antisymmetric, and the order read both ways
    assert (compare(a, b) is Order.EQUAL) == (normal(a) == normal(b))
    if _le(a, b) and _le(b, c):
        assert _le(a, c)  # transitive
    if compare(a, b) is Order.DOMINATES and _le(c, b):
        assert compare(a, c) is Order.DOMINATES  # strictly above what is below it


@given(vectors, vectors, vectors)
def test_merge_is_the_least_upper_bound(
    a: dict[bytes, int], b: dict[bytes, int], c: dict[bytes, int]
) -> None:
    m = merge(a, b)
    assert _le(a, m) and _le(b, m)  # an upper bound
    if _le(a, c) and _le(b, c):
        assert _le(m, c)  # the least one
    assert normal(merge(a, b)) == normal(merge(b, a)) and normal(merge(a, a)) == normal(a)
    assert normal(merge(merge(a, b), c)) == normal(merge(a, merge(b, c)))


@given(vectors, st.sampled_from([A, B, C]))
def test_increment_dominates(a: dict[bytes, int], peer: bytes) -> None:
    assert compare(increment(a, peer), a) is Order.DOMINATES
    assert _le(increment(a, peer), increment(merge(a, {peer: 3}), peer))  # monotone
