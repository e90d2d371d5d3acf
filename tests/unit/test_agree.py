"""What the household agrees a path is (`realizefs.consensus.agree`): the table, and its laws."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from realizefs.consensus.agree import Version, choose, frontier, keeping, loses, resolves
from realizefs.consensus.versions import Order, compare

A, B, C, D = b"a", b"b", b"c", b"d"


def v(vv: dict[bytes, int], what: str = "x", mtime: int = 0, origin: bytes = A, live: bool = True) -> Version:
    return Version(vv, live, what, mtime, origin)


GONE = "gone"


@pytest.mark.parametrize(
    ("versions", "winner", "losers"),
    [
        # one version: itself
        ([v({A: 1})], 0, []),
        # a newer version wins whatever its mtime
        ([v({A: 1}, "old", mtime=9), v({A: 2}, "new", mtime=1)], 1, []),
        # A edited three times while C was away: C's old version is behind, not in conflict
        ([v({A: 1}, "v1"), v({A: 3}, "v3", origin=B), v({A: 1}, "v1", origin=C)], 1, []),
        # concurrent but alike (the same directory made on two peers): one version, no conflict
        ([v({A: 1}, "dir", origin=A), v({B: 1}, "dir", origin=B)], 1, []),
        # concurrent and unlike: the later mtime wins, the other is kept as a loser
        ([v({A: 1}, "mine", mtime=5), v({B: 1}, "theirs", mtime=7, origin=B)], 1, [0]),
        # same mtime: the greater origin key
        ([v({A: 1}, "mine", mtime=5, origin=A), v({B: 1}, "theirs", mtime=5, origin=B)], 1, [0]),
        # delete against edit keeps the edit, even an older one: no conflict, nothing to keep
        ([v({A: 1}, "edit", mtime=1), v({B: 1}, GONE, mtime=9, origin=B, live=False)], 0, []),
        # ... also beside a real conflict, which it does not join
        (
            [
                v({A: 1}, "mine", mtime=5),
                v({B: 1}, "theirs", mtime=7, origin=B),
                v({C: 1}, GONE, mtime=9, origin=C, live=False),
            ],
            1,
            [0],
        ),
        # two deletes are alike
        ([v({A: 1}, GONE, live=False), v({B: 1}, "other", live=False, origin=B)], 1, []),
        # three-way, one dominated: the other two conflict
        (
            [
                v({A: 1}, "a", mtime=1),
                v({A: 1, B: 1}, "b", mtime=2, origin=B),
                v({C: 1}, "c", mtime=3, origin=C),
            ],
            2,
            [1],
        ),
    ],
)
def test_choose(versions: list[Version], winner: int, losers: list[int]) -> None:
    choice = choose(versions)
    assert choice.winner.what == versions[winner].what
    assert sorted(str(x.what) for x in choice.losers) == sorted(str(versions[i].what) for i in losers)
    assert choice.conflict == bool(losers)
    for x in versions:
        assert compare(choice.vv, x.vv) in (Order.EQUAL, Order.DOMINATES)


def test_nothing_to_choose_from() -> None:
    with pytest.raises(ValueError):
        choose([])


def test_resolves() -> None:
    choice = choose([v({A: 1}, "x"), v({A: 2}, "y")])
    assert resolves(choice, v({B: 1}, "y"))  # says the same: at most the vector to take on
    assert not resolves(choice, v({A: 1}, "x"))
    assert not resolves(choice, v({A: 1}, "y", live=False))


# ------------------------------------------------------------ laws

PEERS = [A, B, C]
vectors = st.dictionaries(st.sampled_from(PEERS), st.integers(0, 3), max_size=3)
version_st = st.builds(
    Version,
    vv=vectors,
    live=st.booleans(),
    what=st.sampled_from(["x", "y", "z"]),
    mtime_ns=st.integers(0, 3),
    origin=st.sampled_from(PEERS),
)
sets = st.lists(version_st, min_size=1, max_size=6).map(
    # one version per vector, as the household holds them (a vector names one change)
    lambda vs: list({tuple(sorted((p, c) for p, c in x.vv.items() if c)): x for x in vs}.values())
)


@given(sets, st.randoms(use_true_random=False))
def test_the_choice_does_not_depend_on_order_or_duplicates(versions: list[Version], rnd: object) -> None:
    shuffled = list(versions) + list(versions[:2])
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    one, other = choose(versions), choose(shuffled)
    assert (one.winner, one.winner.vv, one.vv) == (other.winner, other.winner.vv, other.vv)
    assert sorted(map(repr, one.losers)) == sorted(map(repr, other.losers))


@given(sets)
def test_a_dominated_version_never_wins_nor_loses(versions: list[Version]) -> None:
    choice = choose(versions)
    top = frontier(versions)
    for x in [choice.winner, *choice.losers]:
        assert any(x is y for y in top)
    # adding what the frontier dominates changes nothing
    assert choose(top).winner == choice.winner
    # every unlike live frontier version is the winner's or a loser's: nothing is dropped
    for x in top:
        assert x.alike(choice.winner) or any(x.alike(y) for y in choice.losers) or not x.live
    assert all(x.live for x in choice.losers)
    assert choice.winner.live or not any(x.live for x in top)  # an edit beats a delete


@given(sets)
def test_the_agreed_vector_dominates_every_version(versions: list[Version]) -> None:
    choice = choose(versions)
    for x in versions:
        assert compare(choice.vv, x.vv) in (Order.EQUAL, Order.DOMINATES)


# ------------------------------------------------------------ found by test_agree_model.py


def test_a_version_behind_the_conflict_is_no_loser() -> None:
    # A made v1, then v2; B edited v1 into v3 meanwhile. C, still at v1, holds no losing version:
    # it keeps no copy of v1 (it did: a conflict copy of a version both sides had replaced)
    v1 = v({A: 1}, "v1", origin=A)
    mine, theirs = v({A: 2}, "v2", origin=A), v({A: 1, B: 1}, "v3", mtime=1, origin=B)
    choice = choose([v1, mine, theirs])
    assert choice.winner == theirs
    assert not loses(choice, v1)
    assert loses(choice, mine) and loses(choice, v({A: 1, C: 1}, "v2", origin=C))  # alike: kept too
    assert not loses(choice, theirs)


def test_a_losers_holder_claims_no_other_loser() -> None:
    # three concurrent edits of v1; A, holding l1, heard of l2 and w, keeps l1 aside and takes w:
    # with a vector that dominates l2 too, B took w over l2 without keeping it: l2 was lost
    l1 = v({A: 2}, "l1", mtime=0, origin=A)
    l2 = v({A: 1, B: 1}, "l2", mtime=1, origin=B)
    w = v({A: 1, C: 1}, "w", mtime=2, origin=C)
    gone = v({A: 1, D: 1}, GONE, mtime=3, origin=D, live=False)
    choice = choose([l1, l2, w, gone])
    assert choice.winner == w and set(choice.losers) == {l1, l2}
    taken = keeping([l1, l2, w, gone], choice, l1)
    for x in (l1, w, gone):  # kept aside, taken, or a delete that lost: all known
        assert compare(taken, x.vv) in (Order.EQUAL, Order.DOMINATES)
    assert compare(taken, l2.vv) is Order.CONCURRENT  # B still finds it in conflict, and keeps l2
