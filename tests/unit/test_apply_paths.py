"""Consensus's changes of the Real refuse paths a peer may not give, whatever the index holds.

The marker and the staging directory in the arena's root, ``.``, ``..``, the
root itself, empty names, NUL and over-long names: each change of
`realizefs.real.apply` raises `Refused` and leaves the disk as it was (a
staged file is discarded).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from realizefs.real import apply, marker, staging
from realizefs.real.backing import Backing, Owner

HOSTILE = [
    b".realize-tmp",
    b".realize-tmp/0123456789abcdef",
    b".realize-arena",
    b".realize-arena/x",
    b"",
    b".",
    b"..",
    b"d/../..",
    b"d/./f",
    b"d//f",
    b"d/\0",
    b"x" * 256,
]


def expect(path: bytes, st: os.stat_result | None) -> None:
    raise AssertionError(f"told the indexer of a change at {path!r}")


@pytest.fixture
def backing(tmp_path: Path) -> Backing:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"kept")
    b = Backing(tmp_path)
    marker.make(b, "a", bytes(16))
    return b


def disk(root: Path) -> list[tuple[str, bool]]:
    return sorted((str(p.relative_to(root)), p.is_dir()) for p in root.rglob("*"))


@pytest.mark.parametrize("rel", HOSTILE)
def test_every_change_refuses_a_path_no_peer_may_give(tmp_path: Path, backing: Backing, rel: bytes) -> None:
    owner = Owner(os.geteuid(), os.getegid(), lambda g: True)
    st = (tmp_path / "d" / "f").stat()
    known = (st.st_size, st.st_mtime_ns)
    fd, staged = staging.stage(backing, 0o644, owner)
    os.write(fd, b"a peer's")
    os.close(fd)
    before = [e for e in disk(tmp_path) if not e[0].startswith(".realize-tmp/")]
    changes: list[Callable[[], Any]] = [
        lambda: apply.place(backing, rel, staged, None, expect),
        lambda: apply.place(backing, rel, staged, known, expect),
        lambda: apply.remove_file(backing, rel, known, expect),
        lambda: apply.remove_link(backing, rel, b"t", expect),
        lambda: apply.remove_dir(backing, rel, expect),
        lambda: apply.move(backing, b"d/f", rel, known, expect),
        lambda: apply.move(backing, rel, b"d/g", known, expect),
        lambda: apply.make_dir(backing, rel, 0o755, owner, expect),
        lambda: apply.make_link(backing, rel, b"t", owner, expect),
        lambda: apply.set_mode(backing, rel, 0o777, expect),
    ]
    for change in changes:
        with pytest.raises(apply.Refused):
            change()
    assert [e for e in disk(tmp_path) if not e[0].startswith(".realize-tmp/")] == before
    assert os.listdir(tmp_path / ".realize-tmp") == []  # the staged file discarded
    assert (tmp_path / "d" / "f").read_bytes() == b"kept"
