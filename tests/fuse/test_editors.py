"""What ordinary editing patterns leave in the history (docs/design.md lists the outcomes)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Daemon, wait_for

REST = 0.3
# Large enough to span several ~64 KiB chunks: an edit keeps most of them.
TEXT = "".join(f"line {i}: {random.Random(i).random()}\n" for i in range(20_000))


@pytest.fixture
def d(base: Path) -> Iterator[Daemon]:
    daemon = Daemon(base, extra=f'\n[consensus]\nrest = "{int(REST * 1000)}ms"\n')
    daemon.start()
    try:
        yield daemon
        daemon.stop()
    finally:
        daemon.kill()


def history(d: Daemon) -> list[tuple[str, str, str | None]]:
    entries = json.loads((d.mountpoint / ".realize" / "history.json").read_text())["arenas"]["a"]
    return [(e["op"], e["path"], e["old_path"]) for e in entries]


def settled(d: Daemon, path: str) -> bool:
    try:
        os.getxattr(d.mnt() / path, "user.realize.hash")
    except OSError:
        return False
    return True


def new_entries(
    d: Daemon, before: int, until: tuple[str, str, str | None]
) -> list[tuple[str, str, str | None]]:
    wait_for(lambda: until in history(d)[before:], 10, f"history entry {until}")
    return history(d)[before:]


def start_with(d: Daemon, content: str) -> int:
    (d.mnt() / "doc.txt").write_text(content)
    wait_for(lambda: ("create", "doc.txt", None) in history(d), 10, "the file's create entry")
    return len(history(d))


def test_atomic_save_is_a_rename_then_an_edit(d: Daemon) -> None:
    before = start_with(d, TEXT)
    (d.mnt() / ".doc.txt.swp").write_text(TEXT + "line two\n")
    os.rename(d.mnt() / ".doc.txt.swp", d.mnt() / "doc.txt")  # gedit, kate, most GUI editors
    entries = new_entries(d, before, ("edit", "doc.txt", None))
    assert entries == [("rename", "doc.txt", ".doc.txt.swp"), ("edit", "doc.txt", None)]


def test_an_atomic_save_is_the_same_history_however_its_events_arrive(d: Daemon) -> None:
    """Made and renamed over the file before the indexer looked at it: still a rename, then an edit."""
    before = start_with(d, TEXT)
    d.signal(signal.SIGSTOP)  # the events wait in the queue, then arrive in one read
    try:
        (d.root() / ".doc.txt.swp").write_text(TEXT + "line two\n")
        os.rename(d.root() / ".doc.txt.swp", d.root() / "doc.txt")
    finally:
        d.signal(signal.SIGCONT)
    entries = new_entries(d, before, ("edit", "doc.txt", None))
    assert entries == [("rename", "doc.txt", ".doc.txt.swp"), ("edit", "doc.txt", None)]


def test_delete_then_recreate_within_the_rest_is_one_edit(d: Daemon) -> None:
    before = start_with(d, TEXT)
    os.unlink(d.mnt() / "doc.txt")
    (d.mnt() / "doc.txt").write_text(TEXT + "more\n")
    entries = new_entries(d, before, ("edit", "doc.txt", None))
    assert entries == [("edit", "doc.txt", None)]


def test_truncate_and_rewrite_with_other_content_is_an_overwrite(d: Daemon) -> None:
    before = start_with(d, "old content\n")
    with open(d.mnt() / "doc.txt", "w") as f:  # O_TRUNC, as shell redirection and cp do
        f.write("something else entirely\n")
    assert new_entries(d, before, ("overwrite", "doc.txt", None)) == [("overwrite", "doc.txt", None)]


def test_cp_over_a_file_is_an_overwrite(d: Daemon, base: Path) -> None:
    before = start_with(d, "old\n")
    (base / "other.txt").write_text("copied in\n")
    shutil.copyfile(base / "other.txt", d.mnt() / "doc.txt")
    assert new_entries(d, before, ("overwrite", "doc.txt", None)) == [("overwrite", "doc.txt", None)]


def test_an_append_loop_is_one_edit_once_it_stops(d: Daemon) -> None:
    before = start_with(d, TEXT)
    with open(d.mnt() / "doc.txt", "a") as f:
        for i in range(10):
            f.write(f"appended {i}\n")
            f.flush()
            wait_for(lambda: not settled(d, "doc.txt"), 5, "the file to be pending")
    assert new_entries(d, before, ("edit", "doc.txt", None)) == [("edit", "doc.txt", None)]


def test_an_append_to_a_small_file_is_an_edit(d: Daemon) -> None:
    """A file of one chunk shares none with its grown self: the old content being its start tells."""
    before = start_with(d, "6 byte")
    with open(d.mnt() / "doc.txt", "a") as f:
        f.write(" grown to 20 b")
    assert new_entries(d, before, ("edit", "doc.txt", None)) == [("edit", "doc.txt", None)]
    with open(d.mnt() / "doc.txt", "r+") as f:  # the start changed: no longer the old content
        f.write("seven b and more")
    assert new_entries(d, before + 1, ("overwrite", "doc.txt", None)) == [("overwrite", "doc.txt", None)]


def test_vim_style_backup_rename_is_recorded_as_it_happened(d: Daemon) -> None:
    """vim's default save renames the file to a backup, writes anew, removes the backup."""
    before = start_with(d, TEXT)
    os.rename(d.mnt() / "doc.txt", d.mnt() / "doc.txt~")
    (d.mnt() / "doc.txt").write_text(TEXT + "edited\n")
    os.unlink(d.mnt() / "doc.txt~")
    new_entries(d, before, ("delete", "doc.txt~", None))
    entries = new_entries(d, before, ("create", "doc.txt", None))
    assert entries[0] == ("rename", "doc.txt~", "doc.txt")
    assert sorted(entries[1:]) == [("create", "doc.txt", None), ("delete", "doc.txt~", None)]


def test_changes_in_the_backing_directory_make_the_same_entries(d: Daemon) -> None:
    before = start_with(d, "via the mount\n")
    subprocess.run(["sh", "-c", f"echo 'directly, all new' > {d.root() / 'doc.txt'}"], check=True)
    assert new_entries(d, before, ("overwrite", "doc.txt", None)) == [("overwrite", "doc.txt", None)]
    os.rename(d.root() / "doc.txt", d.root() / "moved.txt")
    assert new_entries(d, before + 1, ("rename", "moved.txt", "doc.txt")) == [
        ("rename", "moved.txt", "doc.txt")
    ]
