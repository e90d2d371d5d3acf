"""Fixtures for tests against a real mount of the real daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import FUSE_AVAILABLE, Daemon, cleanup_base, make_base, serving

if not FUSE_AVAILABLE:  # never on CI: it runs as root with /dev/fuse
    pytest.skip("needs /dev/fuse and root", allow_module_level=True)


@pytest.fixture
def base() -> Iterator[Path]:
    path = make_base()
    yield path
    cleanup_base(path)


@pytest.fixture
def bases() -> Iterator[list[Path]]:
    """Three bases, for daemons of different peers."""
    made = [make_base() for _ in range(3)]
    yield made
    for base in made:
        cleanup_base(base)


@pytest.fixture
def daemon(base: Path) -> Iterator[Daemon]:
    """A running daemon with one Real arena "a"; stopped and checked afterwards."""
    d = Daemon(base)
    yield from serving(d)
