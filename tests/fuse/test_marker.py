"""The arena root's marker: a root that lost it (a disk not mounted) is not a mass delete."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon, wait_for

MARKER = ".realize-arena"
NOT_INDEXED = "NOT INDEXED: the root"


def status(d: Daemon) -> dict[str, Any]:
    arena: dict[str, Any] = json.loads((d.mountpoint / ".realize" / "status.json").read_text())["arenas"][0]
    return arena


def ops(d: Daemon) -> list[tuple[str, str]]:
    entries = json.loads((d.mountpoint / ".realize" / "history.json").read_text())["arenas"]["a"]
    return [(e["op"], e["path"]) for e in entries]


def settled(d: Daemon) -> bool:
    real = status(d)["real"]
    return bool(real["scanned"]) and real["pending"] == 0


def test_a_root_without_its_marker_is_not_indexed(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "100ms"\n')
    d.allowed_log.append(NOT_INDEXED)
    root = d.root()
    d.start()
    try:
        wait_for(lambda: (root / MARKER).is_file(), 10, "the root to be marked on first use")
        assert (
            f"store = {json.loads((d.mountpoint / '.realize' / 'status.json').read_text())['store_id']}"
            in (root / MARKER).read_text()
        )
        (d.mnt() / "docs").mkdir()
        (d.mnt() / "docs" / "one.txt").write_text("one\n")
        (d.mnt() / "two.txt").write_text("two\n")
        wait_for(
            lambda: ("create", "two.txt") in ops(d) and ("create", "docs/one.txt") in ops(d), 10, "creates"
        )
        wait_for(lambda: settled(d), 10, "the index to settle")
        d.stop()
        # the disk is not mounted: an empty directory where the tree was
        away = base / "away"
        root.rename(away)
        root.mkdir()
        d.start()
        wait_for(lambda: status(d)["real"]["marker_missing"], 10, "the arena to say its marker is missing")
        assert NOT_INDEXED in (d.mountpoint / ".realize" / "status").read_text()
        assert NOT_INDEXED in d.log()
        assert not status(d)["real"]["scanned"]
        assert status(d)["real"]["files"] == 2  # what was indexed, not forgotten
        assert os.listdir(d.mnt()) == []  # the mount shows what is there
        (root / "new.txt").write_text("lands on the wrong disk\n")
        os.remove(root / "new.txt")
        assert not any(op in ("delete", "rmdir") for op, _ in ops(d))
        assert not (root / MARKER).exists()  # not marked: this is not the arena's tree
        # the disk is back: a reload opens the root again
        root.rmdir()
        away.rename(root)
        d.signal(signal.SIGHUP)
        wait_for(lambda: not status(d)["real"]["marker_missing"] and settled(d), 10, "indexing again")
        assert sorted(os.listdir(d.mnt())) == ["docs", "two.txt"]
        assert (d.mnt() / "docs" / "one.txt").read_text() == "one\n"
        assert status(d)["real"]["files"] == 2
        assert not any(op in ("delete", "rmdir") for op, _ in ops(d))
        d.stop()
    finally:
        d.kill()


def test_the_marker_is_not_shown_through_the_mount(daemon: Daemon) -> None:
    root, mnt = daemon.root(), daemon.mnt()
    wait_for(lambda: (root / MARKER).is_file(), 10, "the root to be marked")
    assert MARKER not in os.listdir(mnt)
    assert not (mnt / MARKER).exists()
    (mnt / "f").write_text("x")
    for make in (
        lambda: (mnt / MARKER).write_text("x"),
        lambda: (mnt / MARKER).mkdir(),
        lambda: os.rename(mnt / "f", mnt / MARKER),
    ):
        with pytest.raises(PermissionError) as info:
            make()
        assert info.value.errno == errno.EPERM
    (mnt / "sub").mkdir()
    (mnt / "sub" / MARKER).write_text("only the root's is the marker\n")
    assert os.listdir(mnt / "sub") == [MARKER]
    assert (root / MARKER).is_file()
    assert "only" not in (root / MARKER).read_text()


def test_an_empty_marker_made_by_hand_does(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "100ms"\n')
    (d.root() / MARKER).touch()
    (d.root() / "file").write_text("x\n")
    d.start()
    try:
        wait_for(lambda: ("create", "file") in ops(d), 10, "the file indexed")
        assert (d.root() / MARKER).read_text() == ""
        assert status(d)["real"]["files"] == 1 and not status(d)["real"]["marker_missing"]
        d.stop()
    finally:
        d.kill()
