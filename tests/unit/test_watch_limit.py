"""Raising the inotify watch limit when it is reached."""

from __future__ import annotations

from pathlib import Path

from realizefs.real.watcher import _raise_watch_limit


def test_the_limit_doubles_up_to_a_ceiling(tmp_path: Path) -> None:
    sysctl = tmp_path / "max_user_watches"
    sysctl.write_text("8192\n")
    assert _raise_watch_limit(sysctl, ceiling=20000)
    assert sysctl.read_text() == "16384\n"
    assert _raise_watch_limit(sysctl, ceiling=20000)
    assert sysctl.read_text() == "20000\n"
    assert not _raise_watch_limit(sysctl, ceiling=20000)  # at the ceiling: report instead
    assert not _raise_watch_limit(tmp_path / "absent", ceiling=20000)
