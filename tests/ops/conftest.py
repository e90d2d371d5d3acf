"""Fixtures of the namespace and tree tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty backing directory."""
    path = tmp_path / "real"
    path.mkdir()
    return path
