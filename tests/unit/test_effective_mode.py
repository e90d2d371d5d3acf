"""The effective mode consensus reads for a path: the nearest ``user.realize.mode`` on it or
an ancestor in the Real, else the arena's default; at any depth (a tree deeper than
Python's recursion limit made every pass fail)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from realizefs.real.backing import Backing
from realizefs.sync.consensus import Place, effective_mode
from realizefs.types import Mode

DEPTH = 1500


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    fd = os.open(tmp_path, os.O_PATH)
    try:
        for _ in range(DEPTH):
            os.mkdir("x", dir_fd=fd)
            inner = os.open("x", os.O_PATH, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path / "x")], check=True)  # shutil.rmtree recurses


def test_the_nearest_stored_mode_at_any_depth(deep: Path) -> None:
    place = Place("a", Backing(deep), Mode.REAL)
    path = (b"x",) * DEPTH + (b"new",)  # an Unreal file at the bottom of a Real tree
    assert effective_mode(place, path, {}) is Mode.REAL
    os.setxattr(deep / "x" / "x", "user.realize.mode", b"unreal")
    modes: dict[tuple[bytes, ...], Mode] = {}
    assert effective_mode(place, path, modes) is Mode.UNREAL
    assert effective_mode(place, (b"x",), modes) is Mode.REAL
    assert modes[path[:-1]] is Mode.UNREAL and modes[(b"x",)] is Mode.REAL
    os.setxattr(deep, "user.realize.mode", b"unreal")
    assert effective_mode(place, (b"y",), {}) is Mode.UNREAL
