"""The files of ``.realize/``."""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import Daemon, wait_for


def read(d: Daemon, name: str) -> str:
    return (d.mountpoint / ".realize" / name).read_text()


def test_identity_is_ready_to_paste(daemon: Daemon) -> None:
    text = read(daemon, "identity")
    data = json.loads(read(daemon, "identity.json"))
    assert data["name"] == "test"
    assert data["key"].startswith("ed25519:")
    assert len(base64.b64decode(data["key"].removeprefix("ed25519:"))) == 32
    assert "[[peer]]" in text and f'key = "{data["key"]}"' in text and 'name = "test"' in text
    key_file = daemon.data_dir / "identity.key"
    assert os.stat(key_file).st_mode & 0o777 == 0o600


def test_status_counts_the_real(daemon: Daemon) -> None:
    root = daemon.root()
    (root / "d").mkdir()
    (root / "d" / "one").write_bytes(b"x" * 1000)
    (root / "two").write_bytes(b"y" * 24)
    os.symlink("two", root / "link")
    os.mkfifo(root / "fifo")  # not indexed

    def counted() -> dict[str, Any] | None:
        status = json.loads(read(daemon, "status.json"))
        real = status["arenas"][0]["real"]
        return status if (real["files"], real["directories"], real["links"]) == (2, 1, 1) else None

    status = wait_for(counted, 10, "the index to count the new files")
    assert status is not None
    [arena] = status["arenas"]
    assert arena["name"] == "a" and arena["root"] == str(root)
    assert arena["real"]["bytes"] == 1024 and arena["real"]["scanned"]
    assert status["schema_version"] >= 2 and len(status["store_id"]) == 32
    assert status["uptime_s"] >= 0
    text = read(daemon, "status")
    assert "2 files" in text and "1.0 KiB" in text and str(root) in text


def test_peers_lists_configured_peers_disconnected(base: Path) -> None:
    key = "ed25519:" + base64.b64encode(bytes(range(32))).decode()
    extra = (
        f'\n[[peer]]\nname = "server"\nkey = "{key}"\naddress = "192.0.2.1:7733"\n'
        f'\n[[peer]]\nname = "phone"\nkey = "ed25519:{base64.b64encode(bytes(32)).decode()}"\n'
    )
    d = Daemon(base, extra=extra)
    d.start()
    try:
        peers = json.loads(read(d, "peers.json"))["peers"]
        assert [(p["name"], p["address"]) for p in peers] == [("server", "192.0.2.1:7733"), ("phone", None)]
        assert peers[0]["state"] in ("connecting", "disconnected")  # dialed: TEST-NET-1 never answers
        assert peers[1]["state"] == "disconnected"  # deaf: it must call us
        text = read(d, "peers")
        assert "server" in text and "deaf" in text and "disconnected" in text
        d.stop()
    finally:
        d.kill()


def test_consensus_accepts_now_and_refuses_anything_else(daemon: Daemon) -> None:
    path = daemon.mountpoint / ".realize" / "consensus"
    subprocess.run(["sh", "-c", f"echo now > {path}"], check=True)
    assert "exchanging history is not built yet" in path.read_text()
    assert json.loads(read(daemon, "consensus.json"))["last_request"] is not None
    for bad in (b"later\n", b"nownow", b"\x00"):
        with pytest.raises(OSError) as info, open(path, "wb") as f:
            f.write(bad)
        assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("name", ["status", "identity", "peers.json", "consensus.json"])
def test_status_files_are_read_only(daemon: Daemon, name: str) -> None:
    path = daemon.mountpoint / ".realize" / name
    with pytest.raises(OSError) as info:
        path.write_text("x")
    assert info.value.errno in (errno.EACCES, errno.EPERM)
    with pytest.raises(OSError):
        path.unlink()
    with pytest.raises(OSError):
        (daemon.mountpoint / ".realize" / "new").write_text("x")


def test_history_shows_what_was_done(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "200ms"\n')
    d.start()
    try:
        mnt = d.mnt()
        (mnt / "docs").mkdir()
        (mnt / "docs" / "a.txt").write_text("first version\n")

        def ops() -> list[tuple[str, str, str | None]]:
            entries = json.loads(read(d, "history.json"))["arenas"]["a"]
            return [(e["op"], e["path"], e["old_path"]) for e in entries]

        wait_for(lambda: ("create", "docs/a.txt", None) in ops(), 10, "the create entry")
        os.rename(mnt / "docs", mnt / "papers")
        wait_for(lambda: ("rename", "papers", "docs") in ops(), 10, "one rename entry for the directory")
        os.unlink(mnt / "papers" / "a.txt")
        wait_for(lambda: ("delete", "papers/a.txt", None) in ops(), 10, "the delete entry")
        assert ops()[0] == ("mkdir", "docs", None)
        assert not any(path.startswith("docs/") and op == "delete" for op, path, _ in ops())
        entries = json.loads(read(d, "history.json"))["arenas"]["a"]
        assert all(e["vv"].get("this peer", 0) >= 1 for e in entries)
        assert "rename" in read(d, "history") and "docs -> papers" in read(d, "history")
        d.stop()
    finally:
        d.kill()
