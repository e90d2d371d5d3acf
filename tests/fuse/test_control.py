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

from tests.support import NOBODY, Daemon, run_as, wait_for


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

    def counted(files: int, directories: int, links: int) -> dict[str, Any] | None:
        status = json.loads(read(daemon, "status.json"))
        real = status["arenas"][0]["real"]
        return (
            status
            if (real["files"], real["directories"], real["links"]) == (files, directories, links)
            else None
        )

    wait_for(lambda: counted(1, 1, 0), 10, "the index to count the first file")
    text = read(daemon, "status")
    assert "real: 1 file, " in text and "1 directory, 0 symlinks" in text  # plural only when plural
    (root / "two").write_bytes(b"y" * 24)
    os.symlink("two", root / "link")
    os.mkfifo(root / "fifo")  # not indexed
    status = wait_for(lambda: counted(2, 1, 1), 10, "the index to count the new files")
    assert status is not None
    [arena] = status["arenas"]
    assert arena["name"] == "a" and arena["root"] == str(root)
    assert arena["real"]["bytes"] == 1024 and arena["real"]["scanned"]
    assert status["schema_version"] >= 2 and len(status["store_id"]) == 32
    assert status["uptime_s"] >= 0
    text = read(daemon, "status")
    assert "2 files" in text and "1.0 KiB" in text and str(root) in text
    assert "1 symlink" in text and "1 symlinks" not in text
    assert "mounted 1 arena on" in daemon.log()


def test_status_counts_no_file_that_is_gone(base: Path) -> None:
    """A deleted file waits a short grace before its delete is recorded (a save may bring it
    back): the counts leave it out meanwhile, and after."""
    d = Daemon(base, extra='\n[consensus]\nrest = "1h"\n')
    d.start()
    try:
        for name in ("one", "two", "three"):
            (d.mnt() / name).write_bytes(b"x" * 10)

        def real() -> dict[str, Any]:
            counts: dict[str, Any] = json.loads(read(d, "status.json"))["arenas"][0]["real"]
            return counts

        def ops() -> list[tuple[str, str]]:
            return [(e["op"], e["path"]) for e in json.loads(read(d, "history.json"))["arenas"]["a"]]

        wait_for(lambda: real()["files"] == 3, 10, "three files counted")
        wait_for(lambda: len(ops()) == 3, 10, "the three hashed")
        os.unlink(d.mnt() / "one")
        os.unlink(d.mnt() / "two")
        wait_for(lambda: (real()["files"], real()["bytes"]) == (1, 10), 10, "one file")
        assert "real: 1 file, 10 B" in read(d, "status")
        wait_for(lambda: real()["gone"] == 0, 10, "the deletes recorded")
        assert (real()["files"], real()["bytes"]) == (1, 10)
        assert ("delete", "one") in ops() and ("delete", "two") in ops()
        d.stop()
    finally:
        d.kill()


def test_status_shows_the_mode_in_effect_at_the_arena_root(daemon: Daemon) -> None:
    def arena() -> dict[str, Any]:
        [a] = json.loads(read(daemon, "status.json"))["arenas"]
        return dict(a)

    assert (arena()["mode"], arena()["mode_set_on"]) == ("real", "config")
    assert "a  root " in read(daemon, "status") and "real (config default)" in read(daemon, "status")
    os.setxattr(daemon.mnt(), "user.realize.mode", b"unreal")
    assert (arena()["mode"], arena()["mode_set_on"], arena()["default_mode"]) == ("unreal", "root", "real")
    assert "unreal (set on the arena root)" in read(daemon, "status")
    os.removexattr(daemon.mnt(), "user.realize.mode")
    assert "real (config default)" in read(daemon, "status")


@pytest.mark.parametrize("name", ["identity", "identity.json", "peers.json", "consensus"])
def test_sizes_are_right_before_the_first_read(daemon: Daemon, name: str) -> None:
    path = daemon.mountpoint / ".realize" / name
    size = os.stat(path).st_size
    content = path.read_bytes()
    assert size == len(content) > 0
    listing = subprocess.run(
        ["ls", "-l", str(daemon.mountpoint / ".realize")], capture_output=True, text=True
    )
    assert f" {len(content)} " in next(
        line for line in listing.stdout.splitlines() if line.endswith(f" {name}")
    )
    last = content.rstrip(b"\n").rsplit(b"\n", 1)[-1] + b"\n"
    assert subprocess.run(["tail", "-n", "1", str(path)], capture_output=True, check=True).stdout == last
    copy = daemon.base / f"copy-{name}"
    subprocess.run(["cp", str(path), str(copy)], check=True)
    assert copy.read_bytes() == content


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
    assert "last request: " in path.read_text()
    assert json.loads(read(daemon, "consensus.json"))["last_request"] is not None
    # a full pass runs (alone here: nothing to apply), and is reported
    wait_for(lambda: "last full pass: full, started" in path.read_text(), 10, "the pass reported")
    report = json.loads(read(daemon, "consensus.json"))["last_full"]
    assert report["finished"] and report["applied"] == {} and report["failed"] == []
    for bad in (b"later\n", b"nownow", b"\x00", b"now\nx"):
        with pytest.raises(OSError) as info, open(path, "wb") as f:
            f.write(bad)
        assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("command", ["now\n", "now", "  now \n"])
def test_consensus_takes_now_written_in_pieces(daemon: Daemon, command: str) -> None:
    path = daemon.mountpoint / ".realize" / "consensus"
    assert json.loads(read(daemon, "consensus.json"))["last_request"] is None
    subprocess.run(["dd", f"of={path}", "bs=1", "status=none"], input=command.encode(), check=True)
    # without a newline the command is taken at release, which the kernel sends after close(2) returned
    wait_for(lambda: json.loads(read(daemon, "consensus.json"))["last_request"], 10, "the request recorded")


def test_consensus_refuses_a_bad_byte_at_the_write_that_brings_it(daemon: Daemon) -> None:
    path = daemon.mountpoint / ".realize" / "consensus"
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.write(fd, b"n") == 1 and os.write(fd, b"o") == 1
        with pytest.raises(OSError) as info:
            os.write(fd, b"x")
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert json.loads(read(daemon, "consensus.json"))["last_request"] is None


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


def test_history_shows_a_user_only_the_paths_they_may_see(base: Path) -> None:
    d = Daemon(base, extra='\n[consensus]\nrest = "200ms"\n')
    d.start()
    try:
        mnt = d.mnt()
        for name, mode in (
            ("private", 0o700),
            ("public", 0o755),
            ("mine", 0o700),
            ("gone", 0o755),
            ("dark", 0o711),
        ):
            (mnt / name).mkdir()
            (mnt / name).chmod(mode)
        os.chown(mnt / "mine", NOBODY, NOBODY)
        (mnt / "private" / "secret.txt").write_text("s")
        (mnt / "public" / "note.txt").write_text("n")
        (mnt / "gone" / "old.txt").write_text("o")
        (mnt / "dark" / "unlisted.txt").write_text("u")  # could be opened by name, but not listed
        run_as(["sh", "-c", f"echo mine > {mnt / 'mine' / 'own.txt'}"])

        def paths(as_nobody: bool = False) -> str:
            path = str(d.mountpoint / ".realize" / "history.json")
            text = run_as(["cat", path]).stdout if as_nobody else Path(path).read_text()
            return " ".join(f"{e['op']}:{e['old_path']}>{e['path']}" for e in json.loads(text)["arenas"]["a"])

        everything = [
            "private/secret.txt",
            "public/note.txt",
            "mine/own.txt",
            "gone/old.txt",
            "dark/unlisted.txt",
        ]
        wait_for(lambda: all(f"create:None>{p}" in paths() for p in everything), 10, "the creates")
        os.rename(mnt / "gone" / "old.txt", mnt / "public" / "moved.txt")
        os.rename(mnt / "private" / "secret.txt", mnt / "public" / "leaked.txt")
        os.rmdir(mnt / "gone")
        wait_for(lambda: "rmdir:None>gone" in paths(), 10, "the rmdir")
        (mnt / "private").chmod(0o755)  # names that were private stay out: their past is not known
        (mnt / "private" / "later.txt").write_text("l")
        wait_for(lambda: "create:None>private/later.txt" in paths(), 10, "the create after the chmod")

        seen = paths(as_nobody=True)
        assert "mkdir:None>private" in seen and "create:None>public/note.txt" in seen
        assert "create:None>mine/own.txt" in seen  # their own directory
        assert "create:None>private/later.txt" in seen  # made after the directory was opened
        assert "secret" not in seen and "leaked" not in seen  # the old name was private
        assert "old.txt" not in seen and "moved.txt" not in seen  # its old directory is gone
        assert "unlisted" not in seen
        text = run_as(["cat", str(d.mountpoint / ".realize" / "history")]).stdout
        assert "public/note.txt" in text and "secret" not in text and "old.txt" not in text

        os.chown(mnt / "mine", 0, 0)
        assert "mine/own.txt" not in paths(as_nobody=True)
        assert all(p in paths() for p in ["private/secret.txt", "public/leaked.txt", "gone/old.txt"])  # root
        d.stop()
    finally:
        d.kill()
