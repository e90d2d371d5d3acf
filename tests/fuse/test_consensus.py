"""Consensus through real mounts: two daemons on loopback make their Real agree.

What a peer marks ``real`` is fetched into its Real at consensus (``now``
written to ``.realize/consensus``, or once the rest period passed); a peer's
edit of a file Real here replaces it, its delete removes it and its rename
moves it (not fetched again) within seconds; concurrent edits are both kept,
each where it was made, and reported.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from blake3 import blake3

from tests.fuse.test_editors import settled
from tests.fuse.test_unreal import connect, household, listed
from tests.support import Daemon, run_as, wait_for


def now(d: Daemon) -> None:
    (d.mountpoint / ".realize" / "consensus").write_text("now\n")


def facts(d: Daemon) -> dict[str, Any]:
    return json.loads((d.mountpoint / ".realize" / "consensus.json").read_text())  # type: ignore[no-any-return]


def conflicts(d: Daemon) -> list[str] | None:
    """The paths the last pass of *d* found in conflict (None: no pass yet)."""
    report = facts(d)["last"]
    return None if not report else [path for _, path in report["conflicts"]]


def asked(d: Daemon) -> list[str] | None:
    """`conflicts` after asking for a pass (each pass weighs what peers told so far)."""
    now(d)
    return conflicts(d)


def history(d: Daemon) -> list[dict[str, Any]]:
    text = (d.mountpoint / ".realize" / "history.json").read_text()
    return json.loads(text)["arenas"]["a"]  # type: ignore[no-any-return]


def short_id(key: str) -> str:
    """How a conflict copy names the peer with *key* (``ed25519:<base64>``)."""
    return base64.b64decode(key.split(":", 1)[1])[:4].hex()


def hashed(d: Daemon, path: str, data: bytes) -> bool:
    """Whether *d* hashed *path* with content *data* (its peers are told of it)."""
    try:
        found = os.getxattr(d.mnt() / path, "user.realize.hash")
    except OSError:
        return False
    return found == blake3(data).hexdigest().encode()


def shared(a: Daemon, b: Daemon, path: str, data: bytes) -> None:
    """Write *data* at *path* on *a*, and have *b* realize it (its directories must exist)."""
    (a.mnt() / path).write_bytes(data)
    wait_for(lambda: settled(a, path), 20, "hashed on a")
    wait_for(lambda: listed(b.mnt() / path) is not None, 10, "listed on b")
    now(b)
    wait_for(lambda: real_on(b, path, data), 20, "realized on b")


def held_by(d: Daemon, path: str) -> bytes:
    """The peers *d* knows to hold, in their Real, the version of *path* it holds."""
    return os.getxattr(d.mnt() / path, "user.realize.peers")


def real_on(d: Daemon, path: str, data: bytes) -> bool:
    try:
        return (d.root() / path).read_bytes() == data
    except (FileNotFoundError, NotADirectoryError):
        return False


def test_now_realizes_what_a_real_directory_holds_and_nothing_else(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        os.setxattr(b.mnt(), "user.realize.mode", b"unreal")  # b keeps only what it marks
        (a.mnt() / "docs" / "deep").mkdir(parents=True)
        (a.mnt() / "docs" / "deep").chmod(0o750)
        (a.mnt() / "docs" / "deep" / "notes.txt").write_bytes(b"n" * 70_000)
        (a.mnt() / "docs" / "deep" / "notes.txt").chmod(0o640)
        os.utime(a.mnt() / "docs" / "deep" / "notes.txt", ns=(1_600_000_000_000_000_000,) * 2)
        os.symlink("deep/notes.txt", a.mnt() / "docs" / "link")
        (a.mnt() / "other").mkdir()
        (a.mnt() / "other" / "big.bin").write_bytes(b"b" * 100_000)
        wait_for(lambda: settled(a, "docs/deep/notes.txt") and settled(a, "other/big.bin"), 20, "hashed on a")
        wait_for(lambda: listed(b.mnt() / "other" / "big.bin") is not None, 10, "listed on b")
        wait_for(lambda: listed(b.mnt() / "docs" / "link") is not None, 10, "listed on b")
        os.setxattr(b.mnt() / "docs", "user.realize.mode", b"real")
        now(b)
        wait_for(lambda: real_on(b, "docs/deep/notes.txt", b"n" * 70_000), 20, "realized on b")
        st = (b.root() / "docs" / "deep" / "notes.txt").stat()
        assert st.st_mtime_ns == 1_600_000_000_000_000_000
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert stat.S_IMODE((b.root() / "docs" / "deep").stat().st_mode) == 0o750
        wait_for(lambda: (b.root() / "docs" / "link").is_symlink(), 10, "the symlink made")
        assert os.readlink(b.root() / "docs" / "link") == "deep/notes.txt"
        assert not (b.root() / "other").exists()  # not marked real: still Unreal
        assert os.getxattr(b.mnt() / "other" / "big.bin", "user.realize.status").startswith(b"unreal")
        assert os.getxattr(b.mnt() / "docs" / "deep" / "notes.txt", "user.realize.status") == b"real"
        report = wait_for(
            lambda: (f := facts(b))["last_full"] and f["last_full"]["finished"] and f, 10, "a report"
        )
        assert report["last_full"]["applied"].get("fetched", 0) >= 1
        assert not report["last_full"]["failed"]
        # what b holds Real is told to a: b now holds that version in its Real
        wait_for(
            lambda: b"b" in os.getxattr(a.mnt() / "docs" / "deep" / "notes.txt", "user.realize.peers"),
            10,
            "a told that b holds it",
        )


def test_a_peers_edit_rename_and_delete_reach_the_real(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        (a.mnt() / "d").mkdir()
        shared(a, b, "d/f.txt", b"1" * 50_000)
        # an edit: fetched and placed over the Real file at the next consensus
        (a.mnt() / "d" / "f.txt").write_bytes(b"2" * 50_000 + b"more")
        wait_for(lambda: held_by(b, "d/f.txt") == b"", 20, "b told of the edit (a holds another version)")
        now(b)
        wait_for(lambda: real_on(b, "d/f.txt", b"2" * 50_000 + b"more"), 20, "the edit applied on b")
        inode = (b.root() / "d" / "f.txt").stat().st_ino
        # a rename: moved on b's disk within seconds, without asking (not fetched: the same inode)
        os.rename(a.mnt() / "d" / "f.txt", a.mnt() / "d" / "g.txt")
        wait_for(lambda: real_on(b, "d/g.txt", b"2" * 50_000 + b"more"), 10, "the rename applied on b")
        assert not (b.root() / "d" / "f.txt").exists()
        assert (b.root() / "d" / "g.txt").stat().st_ino == inode
        # a delete: removed from b's disk within seconds
        os.remove(a.mnt() / "d" / "g.txt")
        wait_for(lambda: not (b.root() / "d" / "g.txt").exists(), 10, "the delete applied on b")
        os.rmdir(a.mnt() / "d")
        wait_for(lambda: not (b.root() / "d").exists(), 10, "the directory's delete applied on b")
        assert listed(a.mnt() / "d") is None
        # b's index followed its Real without a change of its own: nothing in its history
        assert history(b) == []


def test_concurrent_edits_converge_and_the_losing_version_is_kept(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        shared(a, b, "f.txt", b"base")
        b.stop()
        (a.mnt() / "f.txt").write_bytes(b"a's edit")
        wait_for(lambda: hashed(a, "f.txt", b"a's edit"), 20, "a's edit hashed")
        (b.root() / "f.txt").write_bytes(b"b's own edit")  # while b is down: found by its walk
        hours_ago = time.time_ns() - 7200 * 10**9  # rested: hashed at once; older: it loses
        os.utime(b.root() / "f.txt", ns=(hours_ago, hours_ago))
        b.start()
        wait_for(lambda: hashed(b, "f.txt", b"b's own edit"), 20, "b's edit hashed")
        # both converge on the later edit, and b's is kept where both can read it
        for d in (a, b):
            wait_for(lambda d=d: (asked(d), real_on(d, "f.txt", b"a's edit"))[1], 20, "the winner")  # type: ignore[misc]
        for d in (a, b):
            kept = d.mountpoint / ".realize" / "conflicts" / "a" / "f.txt"
            wait_for(lambda kept=kept: kept.is_dir() and len(os.listdir(kept)) == 1, 20, "the copy listed")  # type: ignore[misc]
            (name,) = os.listdir(kept)
            assert name.endswith(".txt") and name.startswith(short_id(pair.keys[1]) + "-"), name
            assert (kept / name).read_bytes() == b"b's own edit"
            wait_for(lambda d=d: asked(d) == [], 20, "no conflict left")  # type: ignore[misc]


def test_consensus_runs_by_itself_once_the_rest_period_passed(bases: list[Path]) -> None:
    with household(bases, extra='\n[consensus]\nrest = "2s"\n') as pair:
        a, b = pair.daemons
        (a.mnt() / "later.txt").write_bytes(b"l" * 1000)
        wait_for(lambda: real_on(b, "later.txt", b"l" * 1000), 30, "realized on b without asking")


def test_an_edit_wins_over_a_concurrent_delete_everywhere(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        shared(a, b, "kept.txt", b"base")
        b.stop()
        os.remove(a.mnt() / "kept.txt")
        wait_for(lambda: history(a)[-1]["op"] == "delete", 20, "a's delete recorded")
        (b.root() / "kept.txt").write_bytes(b"b's edit, made while a deleted it")
        hours_ago = time.time_ns() - 7200 * 10**9  # rested: hashed at once
        os.utime(b.root() / "kept.txt", ns=(hours_ago, hours_ago))
        b.start()
        # the edit comes back to a's Real, and stays on b's; nobody reports a conflict
        wait_for(
            lambda: (asked(a), real_on(a, "kept.txt", b"b's edit, made while a deleted it"))[1],
            30,
            "a",
        )
        assert real_on(b, "kept.txt", b"b's edit, made while a deleted it")
        for d in (a, b):
            wait_for(lambda d=d: asked(d) == [], 20, "a pass without conflicts")  # type: ignore[misc]


def test_unreal_gives_the_space_back_once_another_peer_holds_the_version(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        (a.mnt() / "docs").mkdir()
        shared(a, b, "docs/shared.bin", b"s" * 300_000)
        (b.mnt() / "docs" / "mine.txt").write_bytes(b"only b has this")
        wait_for(lambda: settled(b, "docs/mine.txt"), 20, "hashed on b")
        os.setxattr(b.mnt() / "docs", "user.realize.mode", b"unreal")
        wait_for(lambda: held_by(b, "docs/shared.bin") == b"a", 10, "b knows a holds it")
        assert os.getxattr(b.mnt() / "docs" / "shared.bin", "user.realize.status") == (
            b"unreal pending: given back at the next consensus"
        )
        now(b)
        wait_for(lambda: not (b.root() / "docs" / "shared.bin").exists(), 20, "given back on b")
        # still listed, and read from the cache with a gone
        assert os.getxattr(b.mnt() / "docs" / "shared.bin", "user.realize.status") == b"unreal 100% cached"
        a.stop()
        assert (b.mnt() / "docs" / "shared.bin").read_bytes() == b"s" * 300_000
        # what no other peer holds stays Real, and says why
        assert (b.root() / "docs" / "mine.txt").read_bytes() == b"only b has this"
        assert os.getxattr(b.mnt() / "docs" / "mine.txt", "user.realize.status") == (
            b"unreal pending: no peer holds this version"
        )
        a.start()
        # unrealizing is not a delete: a's file is as it was
        assert (a.root() / "docs" / "shared.bin").read_bytes() == b"s" * 300_000
        assert history(b)[-1]["path"] == "docs/mine.txt"  # b's history: its own file only


def jobs(d: Daemon) -> list[dict[str, Any]]:
    return json.loads((d.mountpoint / ".realize" / "jobs.json").read_text())["jobs"]  # type: ignore[no-any-return]


def test_a_transfer_is_listed_in_jobs_and_its_failure_reported(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        b.allowed_log += ["consensus: a/private/big.bin", "peer a"]
        (b.mnt() / "private").mkdir(mode=0o700)  # b's: a path in it is root's to see
        (a.mnt() / "private").mkdir(mode=0o700)
        (a.mnt() / "private" / "big.bin").write_bytes(os.urandom(8 << 20))
        wait_for(lambda: settled(a, "private/big.bin"), 20, "hashed on a")
        wait_for(lambda: listed(b.mnt() / "private" / "big.bin") is not None, 10, "listed on b")
        a.signal(signal.SIGSTOP)  # frozen: b's fetch waits until it gives the connection up
        try:
            now(b)
            (job,) = wait_for(lambda: jobs(b), 10, "the job listed")
            assert (job["kind"], job["path"], job["state"]) == ("fetched", "private/big.bin", "running")
            assert job["total"] == 8 << 20
            assert "fetched" in (b.mountpoint / ".realize" / "jobs").read_text()
            assert "big.bin" not in run_as(["cat", str(b.mountpoint / ".realize" / "jobs.json")]).stdout
            status = b.mnt() / "private" / "big.bin"
            wait_for(lambda: os.getxattr(status, "user.realize.status") == b"realizing 0%", 30, "realizing")
            wait_for(lambda: (f := facts(b)["last_full"]) and f["failed"], 30, "the failure reported")
            assert jobs(b) == []
            text = (b.mountpoint / ".realize" / "consensus").read_text()
            assert "failed: a/private/big.bin: fetch: " in text
            assert "what failed is tried again at " in text
            assert "big.bin" not in run_as(["cat", str(b.mountpoint / ".realize" / "consensus")]).stdout
            assert not (b.root() / "private" / "big.bin").exists()
        finally:
            a.signal(signal.SIGCONT)
        # tried again after a while, with nothing asked and nothing new from a: realized
        wait_for(lambda: (b.root() / "private" / "big.bin").exists(), 60, "the failed fetch retried")
        assert os.getxattr(b.mnt() / "private" / "big.bin", "user.realize.status") == b"real"


def tree_of(d: Daemon) -> dict[str, bytes]:
    """The files of *d*'s Real (the daemon's own files left out), by path."""
    out = {}
    for path in d.root().rglob("*"):
        rel = path.relative_to(d.root()).as_posix()
        if path.is_file() and not rel.startswith((".realize-tmp", ".realize-arena")):
            out[rel] = path.read_bytes()
    return out


def test_three_peers_heal_after_partitions_and_keep_every_version(bases: list[Path]) -> None:
    with household(bases, 3) as pair:
        a, b, c = pair.daemons
        for name in ("f1", "f2", "f3"):
            (a.mnt() / name).write_bytes(b"base " + name.encode())
        wait_for(lambda: all(settled(a, n) for n in ("f1", "f2", "f3")), 20, "hashed on a")
        for d in (b, c):
            wait_for(lambda d=d: (now(d), tree_of(d) == tree_of(a))[1], 30, "the base everywhere")  # type: ignore[misc,func-returns-value]
        written = {b"base f3"}  # (f1's and f2's bases are superseded by edits that knew them)

        def alone(d: Daemon, writes: dict[str, bytes], change: Callable[[Path], object] = Path) -> None:
            """Start *d* with the others stopped, write *writes* and make *change* through its
            mount, and stop it once what it wrote is hashed (told to peers when they meet)."""
            d.start()
            for name, data in writes.items():
                (d.mnt() / name).write_bytes(data)
            change(d.mnt())
            for name, data in writes.items():
                wait_for(lambda name=name, data=data: hashed(d, name, data), 20, f"{name} hashed")  # type: ignore[misc]
            d.stop()

        for d in (a, b, c):
            d.stop()

        def on_a(mnt: Path) -> None:
            os.remove(mnt / "f2")
            os.rename(mnt / "f3", mnt / "g3")

        alone(a, {"f1": b"a's f1"}, on_a)
        alone(b, {"f1": b"b's f1, the later edit", "f2": b"b's f2, edited while a deleted it"})
        alone(c, {"f3": b"c's f3, edited while a renamed it", "h": b"c's new file"})
        written |= {b"a's f1", b"b's f1, the later edit", b"b's f2, edited while a deleted it"}
        written |= {b"c's f3, edited while a renamed it", b"c's new file"}
        for d in (a, b, c):
            d.start()
        connect(pair)

        def healed() -> bool:
            for d in (a, b, c):
                now(d)
            trees = [tree_of(d) for d in (a, b, c)]
            return trees[0] == trees[1] == trees[2] and all(asked(d) == [] for d in (a, b, c))

        wait_for(healed, 60, "the three peers agreeing")
        tree = tree_of(a)
        assert tree["f1"] == b"b's f1, the later edit"  # the later edit wins...
        assert b"a's f1" in [
            v for k, v in tree.items() if k.startswith(".realize-conflicts/f1/")
        ]  # ...a's is kept
        assert tree["f2"] == b"b's f2, edited while a deleted it"  # an edit wins over a delete
        assert tree["g3"] == b"base f3"  # a's rename
        assert tree["f3"] == b"c's f3, edited while a renamed it"  # c's edit is kept at its name
        assert tree["h"] == b"c's new file"
        assert written <= set(tree.values()), written - set(tree.values())  # nothing ever written is lost


def test_an_edit_travels_as_the_chunks_the_receiver_lacks(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        data = bytearray(os.urandom(8 << 20))
        (a.mnt() / "big.bin").write_bytes(data)
        wait_for(lambda: hashed(a, "big.bin", bytes(data)), 20, "hashed on a")
        wait_for(lambda: listed(b.mnt() / "big.bin") is not None, 10, "listed on b")
        now(b)
        wait_for(lambda: real_on(b, "big.bin", bytes(data)), 20, "realized on b")
        data[4 << 20 : (4 << 20) + 4096] = os.urandom(4096)  # 4 KiB in the middle
        with open(a.mnt() / "big.bin", "r+b") as f:
            f.seek(4 << 20)
            f.write(data[4 << 20 : (4 << 20) + 4096])
        wait_for(lambda: hashed(a, "big.bin", bytes(data)), 20, "the edit hashed on a")
        wait_for(lambda: held_by(b, "big.bin") == b"", 20, "b told of the edit")
        first = wait_for(lambda: facts(b)["last_full"], 10, "the first pass's report")
        now(b)
        wait_for(lambda: real_on(b, "big.bin", bytes(data)), 20, "the edit applied on b")

        def edit_pass() -> dict[str, Any]:
            report: dict[str, Any] = facts(b)["last_full"] or {}
            done = report and report["started"] != first["started"] and report["finished"]
            return report if done and report["placed_bytes"] else {}

        report = wait_for(edit_pass, 10, "the edit's pass reported")
        assert report["placed_bytes"] == 8 << 20
        assert 0 < report["received_bytes"] < 1 << 20, report  # a chunk or two, not the file
