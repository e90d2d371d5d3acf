"""Conflicts through real mounts: each losing version under ``.realize/conflicts/``, listed in
``user.realize.versions`` and ``.realize/status``, resolved by writing a hash to
``user.realize.version`` or by deleting the kept version, on every peer."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest
from blake3 import blake3

from tests.fuse.test_consensus import asked, hashed, real_on, shared, short_id
from tests.fuse.test_unreal import household
from tests.support import Daemon, run_as, wait_for

A_EDIT = b"a's edit, the later one"
B_EDIT = b"b's own edit, the older one"


def view(d: Daemon, path: str) -> Path:
    return d.mountpoint / ".realize" / "conflicts" / "a" / path


def kept(d: Daemon, path: str) -> list[str]:
    try:
        return sorted(os.listdir(view(d, path)))
    except FileNotFoundError:
        return []


def in_conflict(d: Daemon) -> list[str]:
    status = json.loads((d.mountpoint / ".realize" / "status.json").read_text())
    return list(status["arenas"][0]["conflicts"])


def versions(d: Daemon, path: str) -> list[list[str]]:
    value = os.getxattr(d.mnt() / path, "user.realize.versions").decode()
    return [line.split(" ") for line in value.splitlines()]


def conflicted(a: Daemon, b: Daemon, path: str, keys: list[str]) -> str:
    """Make *path* a conflict a wins (a's edit later, b's kept aside); the kept copy's name,
    once both peers list it."""
    shared(a, b, path, b"base")
    b.stop()
    (a.mnt() / path).write_bytes(A_EDIT)
    wait_for(lambda: hashed(a, path, A_EDIT), 20, "a's edit hashed")
    (b.root() / path).write_bytes(B_EDIT)  # while b is down: found by its walk
    hours_ago = time.time_ns() - 7200 * 10**9  # rested: hashed at once; older: it loses
    os.utime(b.root() / path, ns=(hours_ago, hours_ago))
    b.start()
    wait_for(lambda: hashed(b, path, B_EDIT), 20, "b's edit hashed")
    for d in (a, b):
        wait_for(lambda d=d: (asked(d), real_on(d, path, A_EDIT))[1], 20, "the winner")  # type: ignore[misc]
    for d in (a, b):
        wait_for(lambda d=d: len(kept(d, path)) == 1, 20, "the copy listed")  # type: ignore[misc]
    (name,) = kept(a, path)
    assert name == f"{short_id(keys[1])}-{blake3(B_EDIT).hexdigest()[:12]}.txt"
    return name


def refused(d: Daemon, path: str, value: bytes) -> int:
    with pytest.raises(OSError) as caught:
        os.setxattr(d.mnt() / path, "user.realize.version", value)
    return caught.value.errno  # type: ignore[return-value]


def test_a_losing_version_is_shown_and_made_current_by_its_hash(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        # on a, the conflicts area stays Unreal: resolving there fetches the kept version
        os.setxattr(a.mnt(), "user.realize.mode", b"unreal")
        (a.mnt() / "f.txt").write_bytes(b"")
        os.setxattr(a.mnt() / "f.txt", "user.realize.mode", b"real")
        name = conflicted(a, b, "f.txt", pair.keys)
        mine, theirs = blake3(A_EDIT).hexdigest(), blake3(B_EDIT).hexdigest()
        for d in (a, b):
            assert (view(d, "f.txt") / name).read_bytes() == B_EDIT
            assert ".realize-conflicts" not in os.listdir(d.mnt())  # shown only in the view
            assert in_conflict(d) == ["f.txt"]
            listed = versions(d, "f.txt")
            assert [(v[0], v[1], v[3], v[4]) for v in listed] == [
                (mine, str(len(A_EDIT)), "a", "current"),
                (theirs, str(len(B_EDIT)), "b", name),
            ]
            assert "user.realize.versions" not in os.listxattr(d.mnt() / "f.txt")  # computed
            status = os.getxattr(d.mnt() / "f.txt", "user.realize.status")
            assert status.endswith(b"; conflict: 1 other version kept (user.realize.versions)"), status
            # another user who may see the path lists and reads the kept version too
            seen = run_as(["cat", str(view(d, "f.txt") / name)])
            assert seen.stdout == B_EDIT.decode()
        assert not (a.root() / ".realize-conflicts" / "f.txt" / name).exists()  # Unreal on a
        # bad values change nothing
        other = next(c for c in "0123456789abcdef" if not mine.startswith(c) and not theirs.startswith(c))
        assert refused(a, "f.txt", other.encode() * 12) == errno.EINVAL  # no such version
        assert refused(a, "f.txt", b"not a hash") == errno.EINVAL
        common = mine[: next(i for i, (x, y) in enumerate(zip(mine, theirs, strict=True)) if x != y)]
        if common:
            assert refused(a, "f.txt", common.encode()) == errno.EINVAL  # ambiguous
        (a.mnt() / "g.txt").write_bytes(b"g")
        wait_for(lambda: hashed(a, "g.txt", b"g"), 20, "g hashed")
        assert refused(a, "g.txt", mine.encode()) == errno.EINVAL  # not in conflict
        assert kept(a, "f.txt") == [name]
        # b's version, by its short hash, on a (where it is Unreal): current everywhere
        os.setxattr(a.mnt() / "f.txt", "user.realize.version", f" {theirs[:12].upper()}\n".encode())
        assert (a.mnt() / "f.txt").read_bytes() == B_EDIT
        for d in (a, b):
            wait_for(lambda d=d: (asked(d), real_on(d, "f.txt", B_EDIT))[1], 20, "b's version current")  # type: ignore[misc]
            wait_for(lambda d=d: kept(d, "f.txt") == [] and in_conflict(d) == [], 20, "no conflict left")  # type: ignore[misc]
            with pytest.raises(OSError) as caught:
                os.getxattr(d.mnt() / "f.txt", "user.realize.versions")
            assert caught.value.errno == errno.ENODATA
            assert b"conflict" not in os.getxattr(d.mnt() / "f.txt", "user.realize.status")
            wait_for(lambda d=d: asked(d) == [], 20, "no conflict reported")  # type: ignore[misc]
        assert all(real_on(d, "f.txt", B_EDIT) for d in (a, b))


def test_deleting_a_kept_version_removes_it_everywhere(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        for d in (a, b):  # a directory only root may list: its conflicts are root's to see
            (d.mnt() / "private").mkdir()
            (d.mnt() / "private").chmod(0o700)
        wait_for(lambda: (b.mnt() / "private").stat().st_mode & 0o777 == 0o700, 20, "the mode agreed")
        name = conflicted(a, b, "private/f.txt", pair.keys)
        for d in (a, b):
            assert in_conflict(d) == ["private/f.txt"]
            assert run_as(["ls", "-A", str(view(d, ""))]).stdout == "private\n"  # as in the arena,
            assert run_as(["ls", "-A", str(view(d, "private"))]).stdout == ""  # but not what it holds
            assert run_as(["cat", str(view(d, "private/f.txt") / name)], check=False).returncode != 0
            assert (
                json.loads(run_as(["cat", str(d.mountpoint / ".realize" / "status.json")]).stdout)["arenas"][
                    0
                ]["conflicts"]
                == []
            )
        with pytest.raises(OSError) as caught:  # the view only lets its entries be deleted
            (view(a, "private/f.txt") / "new.txt").write_bytes(b"x")
        assert caught.value.errno == errno.EPERM
        os.remove(view(a, "private/f.txt") / name)
        for d in (a, b):
            wait_for(lambda d=d: (asked(d), kept(d, "private/f.txt") == [])[1], 20, "the copy gone")  # type: ignore[misc]
            wait_for(lambda d=d: in_conflict(d) == [], 20, "no conflict left")  # type: ignore[misc]
            assert real_on(d, "private/f.txt", A_EDIT)
        wait_for(
            lambda: not (b.root() / ".realize-conflicts" / "private" / "f.txt" / name).exists(),
            20,
            "gone on b",
        )
