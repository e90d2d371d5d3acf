"""The real ``mv``, ``cp -a`` and ``rsync -aX``: into, out of and within the mount.

Computed attributes (``user.realize.status``, ``user.realize.hash``, an
inherited ``user.realize.mode``) are readable by name but not listed, so copy
tools neither fail on them nor copy them: every run exits 0 without a message,
pins no mode, and leaves nothing of realizefs on copies outside. A mode set on
a path itself is listed, and travels with a copy of that path like any
attribute set there. Each tool runs as root and as ``nobody``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import NOBODY, Daemon, run_as, serving, wait_for

MODE = "user.realize.mode"
HASH = "user.realize.hash"
PINNED = {"pinned": {MODE: b"unreal"}}  # the one mode the source tree sets on a path itself
USERS = pytest.mark.parametrize("uid", [0, NOBODY], ids=["root", "nobody"])


@pytest.fixture
def two(base: Path) -> Iterator[Daemon]:
    """Arenas "a" and "b", both Real, whose files are hashed 300 ms after they rest."""
    d = Daemon(base, arenas=[("a", "real"), ("b", "real")], extra='\n[consensus]\nrest = "300ms"\n')
    yield from serving(d)


def run(uid: int, *args: str | Path) -> None:
    """Run a command as *uid*; it must exit 0 and say nothing."""
    argv = [str(a) for a in args]
    if uid == 0:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    else:
        result = run_as(argv, uid=uid, gid=uid, check=False)
    assert (result.returncode, result.stderr) == (0, ""), f"{argv} as uid {uid}"


def realize_attrs(top: Path) -> dict[str, dict[str, bytes]]:
    """The ``user.realize.*`` attributes stored on each object below *top* (read directly)."""
    found: dict[str, dict[str, bytes]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        if path.is_symlink():
            continue  # no user.* attributes on symlinks
        names = [n for n in os.listxattr(path) if n.startswith("user.realize.")]
        if names:
            found[str(path.relative_to(top))] = {n: os.getxattr(path, n) for n in names}
    return found


def contents(top: Path) -> dict[str, str]:
    return {
        str(p.relative_to(top)): p.read_text()
        for p in sorted(top.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


TREE = {"f": "content f", "sub/g": "content g", "pinned/h": "content h"}


def give(path: Path, uid: int) -> None:
    for p in [path, *path.rglob("*")]:
        os.lchown(p, uid, uid)


def make_tree(d: Daemon, uid: int) -> Path:
    """``a/tree`` with files, a symlink and a directory whose mode is set on it; owned by *uid*, hashed."""
    for arena in ("a", "b"):
        d.root(arena).chmod(0o777)  # nobody may create and remove at the arena roots
    tree = d.mnt("a") / "tree"
    for rel, text in TREE.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    (tree / "link").symlink_to("f")
    os.setxattr(tree / "pinned", MODE, b"unreal")
    os.setxattr(tree / "f", "user.color", b"blue")
    give(tree, uid)
    wait_for(lambda: all(has_hash(tree / rel) for rel in TREE), 30, "the tree's hashes")
    return tree


def has_hash(path: Path) -> bool:
    try:
        return len(os.getxattr(path, HASH)) == 64
    except OSError:
        return False


def outside(d: Daemon, uid: int) -> Path:
    out = d.base / "out"
    out.mkdir(exist_ok=True)
    os.chown(out, uid, uid)
    return out


def check_copy(copy: Path, expected: dict[str, dict[str, bytes]]) -> None:
    assert contents(copy) == TREE
    assert os.readlink(copy / "link") == "f"
    assert os.getxattr(copy / "f", "user.color") == b"blue"
    assert realize_attrs(copy) == expected


@USERS
def test_mv_between_arenas(two: Daemon, uid: int) -> None:
    make_tree(two, uid)
    run(uid, "mv", two.mnt("a") / "tree", two.mnt("b") / "tree")
    assert not (two.root("a") / "tree").exists()
    check_copy(two.root("b") / "tree", PINNED)
    assert os.getxattr(two.mnt("b") / "tree" / "pinned" / "h", MODE) == b"unreal"


@USERS
def test_cp_a_within_the_mount_and_into_another_arena(two: Daemon, uid: int) -> None:
    tree = make_tree(two, uid)
    run(uid, "cp", "-a", tree, two.mnt("a") / "copy")
    run(uid, "cp", "-a", tree, two.mnt("b") / "copy")
    for arena in ("a", "b"):
        check_copy(two.root(arena) / "copy", PINNED)
        os.setxattr(
            two.mnt(arena) / "copy", MODE, b"unreal"
        )  # a later setting on the parent reaches the copies
        for rel in ("f", "sub", "sub/g"):
            assert os.getxattr(two.mnt(arena) / "copy" / rel, MODE) == b"unreal", (arena, rel)


@USERS
def test_rsync_within_the_mount_and_into_another_arena(two: Daemon, uid: int) -> None:
    tree = make_tree(two, uid)
    for _ in range(2):  # the second run compares the attributes of copies that exist
        run(uid, "rsync", "-aX", f"{tree}/", two.mnt("a") / "copy")
        run(uid, "rsync", "-aX", f"{tree}/", two.mnt("b") / "copy")
    for arena in ("a", "b"):
        check_copy(two.root(arena) / "copy", PINNED)


@USERS
def test_copies_into_the_mount(two: Daemon, uid: int) -> None:
    make_tree(two, uid)  # for the permissions of the arena roots
    src = outside(two, uid) / "src"
    for rel, text in TREE.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    (src / "link").symlink_to("f")
    os.setxattr(src / "f", "user.color", b"blue")
    give(src, uid)
    run(uid, "cp", "-a", src, two.mnt("a") / "cp")
    for _ in range(2):
        run(uid, "rsync", "-aX", f"{src}/", two.mnt("a") / "rsync")
    run(uid, "mv", src, two.mnt("b") / "mv")
    for copy in (two.root("a") / "cp", two.root("a") / "rsync", two.root("b") / "mv"):
        check_copy(copy, {})


@USERS
def test_copies_out_of_the_mount(two: Daemon, uid: int) -> None:
    """Nothing computed reaches the copies; the mode set on ``pinned`` itself is a setting, and travels."""
    tree = make_tree(two, uid)
    out = outside(two, uid)
    run(uid, "cp", "-a", tree, out / "cp")
    for _ in range(2):
        run(uid, "rsync", "-aX", f"{tree}/", out / "rsync")
    run(uid, "mv", tree, out / "mv")
    for copy in ("cp", "rsync", "mv"):
        check_copy(out / copy, PINNED)


@USERS
def test_copies_carrying_a_status_from_an_older_realizefs_come_in_quietly(two: Daemon, uid: int) -> None:
    """Files that an older realizefs's ``cp -a`` out marked ``user.realize.status="real"``.

    Writing the status a path has changes nothing, so the copies go through; the
    modes they carry are settings on those very paths, and are kept.
    """
    make_tree(two, uid)
    src = outside(two, uid) / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("old copy")
    for path in (src, src / "sub", src / "sub" / "f"):
        os.setxattr(path, "user.realize.status", b"real")
        os.setxattr(path, "user.realize.mode", b"real")  # what an older realizefs listed everywhere
    give(src, uid)
    run(uid, "cp", "-a", src, two.mnt("a") / "cp")
    run(uid, "rsync", "-aX", f"{src}/", two.mnt("a") / "rsync")
    run(uid, "mv", src, two.mnt("b") / "mv")
    for copy in (two.root("a") / "cp", two.root("a") / "rsync", two.root("b") / "mv"):
        assert (copy / "sub" / "f").read_text() == "old copy"
        assert realize_attrs(copy) == {rel: {MODE: b"real"} for rel in (".", "sub", "sub/f")}
