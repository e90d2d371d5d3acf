"""What the household agrees a path is, from the versions its peers hold.

Each peer holds a version of a path (its own, and what it was told of by
each other peer): a vector, whether it is live, what it is (`Version.what`:
kind, content hash, symlink target, mode bits: two versions that say the
same are *alike*), its mtime and the peer that made it. `choose` takes all
the versions known for one path and returns the agreed one:

- the versions no other dominates (the *frontier*) are what is current; an
  older version is never chosen, and a peer that missed intermediate
  versions has nothing to object (A edits three times while C is away: C's
  old version is dominated by the last, however it hears of it);
- frontier versions that are alike are one version (two peers made the same
  directory, or wrote the same bytes: no conflict); their vectors merge;
- more than one unlike version is a *conflict*. Every peer picks the same
  winner from the same set: a live version over a tombstone (delete against
  edit keeps the edit), then the later mtime, then the greater origin key.
  The other live ones are the losers, each a version someone may want back:
  its holders keep it aside (`loses`; a version behind is no loser) and take
  the winner with a vector that knows theirs, not the other losers'
  (`keeping`), so those losers' holders still see the conflict and keep
  theirs. A delete that lost to an edit leaves nothing to keep, so that alone
  is no conflict: the edit wins, with a vector that dominates the delete.

The result does not depend on the order the versions are given in, on
duplicates, or on dominated versions being there or not (tested by property).

Pure functions of plain values; no I/O, no state, safe from any thread.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field

from realizefs.consensus.versions import Order, compare, merge, normal


@dataclass(frozen=True)
class Version:
    """One version of a path, as consensus weighs it."""

    vv: Mapping[bytes, int] = field(compare=False)
    live: bool
    what: Hashable  # equal for versions that say the same (kind, hash, target, mode)
    mtime_ns: int = 0
    origin: bytes = b""

    def key(self) -> tuple[bool, int, bytes]:
        """The order of the winner rule: live first, then later mtime, then greater origin."""
        return (self.live, self.mtime_ns, self.origin)

    def alike(self, other: Version) -> bool:
        return self.live == other.live and (not self.live or self.what == other.what)


@dataclass(frozen=True)
class Choice:
    """The agreed version of a path: *winner*, the vector that dominates every version given
    (*vv*), and the *losers* of a conflict (unlike versions no other dominates; empty when
    there is no conflict)."""

    winner: Version
    vv: dict[bytes, int]
    losers: tuple[Version, ...] = ()

    @property
    def conflict(self) -> bool:
        return bool(self.losers)


def frontier(versions: Iterable[Version]) -> list[Version]:
    """The versions no other dominates, one per vector, in a canonical order."""
    given = {_vkey(v.vv): v for v in sorted(versions, key=_total)}  # equal vectors: one, chosen the same way
    out = [
        v
        for v in given.values()
        if not any(compare(w.vv, v.vv) is Order.DOMINATES for w in given.values() if w is not v)
    ]
    return sorted(out, key=_total)


def choose(versions: Iterable[Version]) -> Choice:
    """The agreed version of the versions known for one path (at least one)."""
    given = list(versions)
    if not given:
        raise ValueError("no version to choose from")
    top = frontier(given)
    classes: list[list[Version]] = []
    for v in top:
        for c in classes:
            if c[0].alike(v):
                c.append(v)
                break
        else:
            classes.append([v])
    heads = sorted((max(c, key=_total) for c in classes), key=_total, reverse=True)
    winner = heads[0]
    losers = tuple(h for h in heads[1:] if h.live)  # of a delete that lost, nothing is to keep
    return Choice(winner, merge(*(v.vv for v in given)), losers)


def resolves(choice: Choice, held: Version) -> bool:
    """Whether *held* already says what *choice* agreed on (nothing to apply, at most the
    vector to take on)."""
    return held.alike(choice.winner)


def loses(choice: Choice, held: Version) -> bool:
    """Whether *held* is a losing version of *choice* (alike one): its holder keeps it aside. A
    version neither alike the winner nor a loser is behind (another dominates it): there is
    nothing of it to keep, and its holder takes the agreed version once it dominates it."""
    return any(held.alike(loser) for loser in choice.losers)


def keeping(versions: Iterable[Version], choice: Choice, held: Version) -> dict[bytes, int]:
    """The vector the holder of losing version *held* takes the winner with, once it kept *held*
    aside: the vectors of *held*, of the winner and the tombstones among the frontier, and of
    every version one of them (or one alike *held*) dominates, merged; not the other losers'.
    Their holders must still find the winner in conflict with their version, and keep it: a
    vector merged from every version told them the winner knew theirs, so they took it over
    their version, which was lost."""
    given = list(versions)
    covering = [f for f in frontier(given) if f.alike(choice.winner) or not f.live or f.alike(held)]
    covered = (
        v.vv for v in given if any(compare(f.vv, v.vv) in (Order.EQUAL, Order.DOMINATES) for f in covering)
    )
    return merge(held.vv, *covered)


def _vkey(vv: Mapping[bytes, int]) -> tuple[tuple[bytes, int], ...]:
    return tuple(sorted(normal(vv).items()))


def _total(v: Version) -> tuple[bool, int, bytes, tuple[tuple[bytes, int], ...], str]:
    """A total order of versions (the winner rule first; then the vector and what it says), so
    every choice is the same whatever order the versions came in."""
    return (*v.key(), _vkey(v.vv), repr(v.what))
