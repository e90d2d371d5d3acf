"""When consensus tries again what failed: a full pass after 10 s, then twice as long after each
pass in a row that failed again, at most the interval; a pass without failures ends it.

The scheduler (`Consensus.run`) is the real one, on trio's mock clock; the passes are
stand-ins that only say whether they failed (what a pass does is tested with real daemons)."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import trio
import trio.testing

from realizefs.sync.consensus import RETRY_FIRST, Consensus, Report

pytestmark = pytest.mark.expect_log("no connected peer could supply a chunk")


class Passes(Consensus):
    def __init__(self, failing: int, rest: float, interval: float) -> None:
        super().__init__(cast(Any, None), cast(Any, None), list, lambda *a: None, rest, interval)
        self.failing = failing  # full passes that fail before one succeeds
        self.times: list[tuple[float, bool]] = []

    async def run_pass(self, full: bool) -> Report:
        self.times.append((trio.current_time(), full))
        report = Report(full, time.time())
        if full and self.failing:
            self.failing -= 1
            report.fail("arena", [b"f"], "fetch: no connected peer could supply a chunk")
        return report


def run(passes: Passes, until: float, *, now: bool = True) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(passes.run)
            if now:
                passes.request()
            await trio.sleep(until)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_failures_are_tried_again_with_a_doubling_delay_until_a_pass_succeeds() -> None:
    passes = Passes(failing=3, rest=10_000, interval=500)
    run(passes, 1000)
    first = RETRY_FIRST
    retried = [0.0, first, first * 3, first * 7]  # 10, 20, 40 s apart
    assert [t for t, _ in passes.times] == [*retried, retried[-1] + 500]  # then the interval's
    assert all(full for _, full in passes.times)
    assert passes.retries == 0 and passes.retry_at is None


def test_the_delay_never_exceeds_the_interval() -> None:
    passes = Passes(failing=1000, rest=10_000, interval=60)
    run(passes, 400)
    gaps = [b - a for (a, _), (b, _) in zip(passes.times, passes.times[1:], strict=False)]
    assert gaps[:3] == [RETRY_FIRST, 2 * RETRY_FIRST, 4 * RETRY_FIRST]
    assert max(gaps) == 60 and gaps[-1] == 60


def test_a_prompt_pass_neither_retries_nor_resets_the_delay() -> None:
    passes = Passes(failing=2, rest=10_000, interval=10_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(passes.run)
            passes.request()
            await trio.sleep(5)
            passes.news()  # a prompt pass 0.2 s later: it fails nothing and changes no retry
            await trio.sleep(100)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(round(t, 1), full) for t, full in passes.times] == [
        (0.0, True),
        (5.2, False),
        (RETRY_FIRST, True),
        (3 * RETRY_FIRST, True),
    ]
