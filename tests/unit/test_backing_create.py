"""New objects are handed to their user through a descriptor of the object created, never by name."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from realizefs.errors import Exists
from realizefs.real.backing import Backing, Owner

USER = Owner(1234, 1234, lambda gid: gid == 1234)
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="handing objects over needs root")


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Backing, Path, Path]]:
    root = tmp_path / "real"
    root.mkdir()
    victim = tmp_path / "victim"  # someone else's file, outside the arena
    victim.write_text("secret")
    os.chown(victim, 4321, 4321)
    os.chmod(victim, 0o600)
    backing = Backing(root)
    yield backing, root, victim
    backing.close()


def swapping(monkeypatch: pytest.MonkeyPatch, name: str, swap: Callable[[], None]) -> None:
    """Make ``os.<name>`` do its work, then let *swap* put another object in its place."""
    real = getattr(os, name)

    def call(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        swap()
        return result

    monkeypatch.setattr(os, name, call)


def untouched(victim: Path) -> bool:
    st = victim.stat()
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4321, 0o600)


def test_a_file_swapped_in_after_mkdir_is_not_handed_over(
    tree: tuple[Backing, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backing, root, victim = tree

    def swap() -> None:
        os.rename(root / "d", root / "d.mine")
        os.link(victim, root / "d")  # a hard link to someone's file under the new name

    swapping(monkeypatch, "mkdir", swap)
    with pytest.raises(Exists):
        backing.mkdir(b"", b"d", 0o755, USER)
    assert untouched(victim)


def test_a_directory_swapped_in_after_mkdir_is_not_handed_over(
    tree: tuple[Backing, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backing, root, _ = tree
    (root / "other").mkdir(mode=0o700)
    os.chown(root / "other", 4321, 4321)

    def swap() -> None:
        os.rename(root / "d", root / "d.mine")
        os.rename(root / "other", root / "d")

    swapping(monkeypatch, "mkdir", swap)
    with pytest.raises(Exists):
        backing.mkdir(b"", b"d", 0o755, USER)
    assert (root / "d").stat().st_uid == 4321


def test_a_file_swapped_in_after_mknod_is_not_handed_over(
    tree: tuple[Backing, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backing, root, victim = tree

    def swap() -> None:
        os.unlink(root / "p")
        os.link(victim, root / "p")

    swapping(monkeypatch, "mknod", swap)
    with pytest.raises(Exists):
        backing.mknod(b"", b"p", stat.S_IFIFO | 0o644, 0, USER)
    assert untouched(victim)


def test_a_file_swapped_in_after_symlink_is_not_handed_over(
    tree: tuple[Backing, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    backing, root, victim = tree

    def swap() -> None:
        os.unlink(root / "l")
        os.link(victim, root / "l")

    swapping(monkeypatch, "symlink", swap)
    with pytest.raises(Exists):
        backing.symlink(b"", b"l", b"target", USER)
    assert untouched(victim)


def test_an_existing_file_is_opened_as_it_is_never_handed_over(tree: tuple[Backing, Path, Path]) -> None:
    """A name that appeared behind the kernel's back (or a hard link put there) is not a new file."""
    backing, root, victim = tree
    os.link(victim, root / "f")
    fd, st = backing.create(b"", b"f", os.O_WRONLY | os.O_CREAT, 0o644, USER)
    os.close(fd)
    assert untouched(victim) and st.st_uid == 4321
    with pytest.raises(Exists):
        backing.create(b"", b"f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, USER)


@pytest.mark.parametrize("kind", ["file", "dir", "fifo", "link"])
def test_new_objects_belong_to_their_user(tree: tuple[Backing, Path, Path], kind: str) -> None:
    backing, root, _ = tree
    if kind == "file":
        fd, st = backing.create(b"", b"x", os.O_WRONLY, 0o640, USER)
        os.close(fd)
    elif kind == "dir":
        st = backing.mkdir(b"", b"x", 0o750, USER)
    elif kind == "fifo":
        st = backing.mknod(b"", b"x", stat.S_IFIFO | 0o640, 0, USER)
    else:
        st = backing.symlink(b"", b"x", b"target", USER)
    on_disk = os.lstat(root / "x")
    assert (on_disk.st_uid, on_disk.st_gid) == (1234, 1234) == (st.st_uid, st.st_gid)
    if kind != "link":
        assert stat.S_IMODE(on_disk.st_mode) == {"file": 0o640, "dir": 0o750, "fifo": 0o640}[kind]
