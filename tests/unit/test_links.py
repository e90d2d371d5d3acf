"""The indexer's record of hard-linked names."""

from __future__ import annotations

import os
from pathlib import Path

from realizefs.real.links import Links


def test_names_of_one_linked_file_find_each_other_until_gone_or_unlinked(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_text("x")
    c.write_text("y")
    links = Links()
    assert links.saw(("t", b"a"), os.stat(a)) == set() and len(links) == 0  # one link: not kept
    os.link(a, b)
    assert links.saw(("t", b"b"), os.stat(b)) == set()
    assert links.saw(("t", b"a"), os.stat(a)) == {("t", b"b")}
    assert links.saw(("t", b"b"), os.stat(b)) == {("t", b"a")}  # seen again: no duplicate
    assert links.saw(("t", b"c"), os.stat(c)) == set()
    os.unlink(b)
    assert links.saw(("t", b"b"), None) == set()
    assert links.saw(("t", b"a"), os.stat(a)) == set() and len(links) == 0
