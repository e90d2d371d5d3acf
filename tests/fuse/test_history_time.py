"""What a history entry says of its change: when it happened, and the size it left."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.support import Daemon, wait_for

OLD = 1_000_000_000  # an mtime (2001) long rested, in s


def entries(d: Daemon) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads((d.mountpoint / ".realize" / "history.json").read_text())[
        "arenas"
    ]["a"]
    return found


def entry(d: Daemon, op: str, path: str) -> dict[str, Any] | None:
    return next((e for e in entries(d) if (e["op"], e["path"]) == (op, path)), None)


def wait_entry(d: Daemon, op: str, path: str) -> dict[str, Any]:
    found = wait_for(lambda: entry(d, op, path), 10, f"the {op} entry of {path}")
    assert found is not None
    return found


def test_an_entry_carries_the_time_of_its_change(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "300ms"\n')
    d.start()
    try:
        (d.mnt() / "f").write_text("content\n")
        changed = os.stat(d.root() / "f").st_ctime_ns
        create = wait_entry(d, "create", "f")
        assert create["time_ns"] == changed  # not when it was hashed, a rest period later
        os.chmod(d.mnt() / "f", 0o600)
        changed = os.stat(d.root() / "f").st_ctime_ns
        chmod = wait_entry(d, "chmod", "f")
        assert chmod["time_ns"] == changed
        assert chmod["new"]["mode"] == "0600"
        d.stop()
    finally:
        d.kill()


def test_a_rename_of_a_file_not_hashed_yet_shows_its_size(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "1h"\n')  # nothing written now is hashed
    (d.root() / "doc.txt").write_text("old\n")
    os.utime(d.root() / "doc.txt", (OLD, OLD))  # long rested: hashed at once
    d.start()
    try:
        wait_entry(d, "create", "doc.txt")
        with open(d.mnt() / ".doc.txt.tmp", "w") as f:

            def looked_at() -> bool:
                real = json.loads((d.mountpoint / ".realize" / "status.json").read_text())["arenas"][0][
                    "real"
                ]
                return bool(real["files"] == 2 and real["pending"] == 1)

            wait_for(looked_at, 10, "the empty new file to be looked at")
            f.write("the new content, 29 bytes\n...")
        os.rename(d.mnt() / ".doc.txt.tmp", d.mnt() / "doc.txt")  # an editor's atomic save
        rename = wait_entry(d, "rename", "doc.txt")
        assert rename["new"]["size"] == 29 and rename["new"]["hash"] is None
        assert "29 B" in (d.mountpoint / ".realize" / "history").read_text()
        d.stop()
    finally:
        d.kill()
