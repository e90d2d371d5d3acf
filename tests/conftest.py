"""Shared pytest configuration: hypothesis profiles, and no unexpected warning in any test.

Hypothesis: the ``ci`` profile (when the environment sets ``CI``) draws the same
examples at every run, keeps no example database and prints how to reproduce a
failure; ``HYPOTHESIS_PROFILE=long`` draws many more examples, for runs on demand
(`tests.support.examples` scales the tests' own counts alike).

Logs: every test fails at teardown if a ``realizefs`` logger recorded a WARNING or
worse that the test did not declare, with ``@pytest.mark.expect_log(regex, ...)`` or
by calling the `expect_log` fixture; each pattern is searched in the record's
message. The daemon tests check the daemon's own log the same way (`Daemon.stop`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

if os.environ.get("CI") and not os.path.exists("/dev/fuse"):
    raise pytest.UsageError("CI must run the FUSE tests: /dev/fuse is missing")

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("long", max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "expect_log(*patterns): WARNING or ERROR records of realizefs this test expects (regexes)"
    )


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def _no_unexpected_log(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Collect realizefs' WARNING and ERROR records; fail on those no expected pattern matches."""
    patterns = [p for marker in request.node.iter_markers("expect_log") for p in marker.args]
    handler = _Records()
    logger = logging.getLogger("realizefs")
    logger.addHandler(handler)
    try:
        yield patterns
    finally:
        logger.removeHandler(handler)
    unexpected = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in handler.records
        if not any(re.search(p, r.getMessage()) for p in patterns)
    ]
    if unexpected:
        pytest.fail("unexpected warnings or errors logged:\n" + "\n".join(unexpected), pytrace=False)


@pytest.fixture
def expect_log(_no_unexpected_log: list[str]) -> Callable[[str], None]:
    """Declare, from within a test, a regex of WARNING or ERROR messages it expects."""
    return _no_unexpected_log.append
