"""The household's pure rules: which of two connections to keep, how long to wait before redialing."""

from __future__ import annotations

import random

import pytest

from realizefs.peers.household import BACKOFF_START, backoff_delay, keep_new

LOW, HIGH = b"\x01" * 32, b"\x02" * 32


@pytest.mark.parametrize(
    ("existing", "new", "keep"),
    [
        (HIGH, LOW, True),  # the smaller key's connection wins...
        (LOW, HIGH, False),  # ...whichever arrived first
        (LOW, LOW, True),  # the same dialer redialed: it gave up on the old one
        (HIGH, HIGH, True),
    ],
)
def test_keep_new(existing: bytes, new: bytes, keep: bool) -> None:
    assert keep_new(existing, new) is keep


def test_both_sides_keep_the_same_connection_whatever_the_order() -> None:
    # Connection x was dialed by LOW, y by HIGH. Each side sees them in either order.
    dialers = {"x": LOW, "y": HIGH}
    for first, second in (("x", "y"), ("y", "x")):
        kept = second if keep_new(dialers[first], dialers[second]) else first
        assert kept == "x"


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(7)
    cap = 60.0
    for attempt in range(12):
        ceiling = min(cap, BACKOFF_START * 2**attempt)
        delays = [backoff_delay(attempt, cap, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 10  # jittered, so peers do not dial in step
    assert backoff_delay(10_000, cap, rng) <= cap  # no overflow however long a peer is away
    assert backoff_delay(0, cap, rng) <= BACKOFF_START  # a reset starts over quickly
