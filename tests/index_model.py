"""Helpers for the index model test (`tests/fuse/test_index_model.py`): trees, the index, history replay.

`tree` walks a directory (the backing tree or the mount) into comparable facts;
`indexed` reads an arena's whole index from a stopped daemon's store;
`replay` checks that each history entry describes a transition from the state
the entries before it left (an ``exchange`` swaps two paths with all below
them), and returns the state they add up to.

No concurrency: called from the test's thread only.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

from blake3 import blake3

from realizefs.peers.identity import load_or_create
from realizefs.real.marker import MARKER
from realizefs.store.history import Entry, Version
from realizefs.store.index import KIND_DIR, KIND_FILE, KIND_LINK, Index
from realizefs.store.schema import Store

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
KINDS = {KIND_FILE: "file", KIND_DIR: "dir", KIND_LINK: "link"}


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


@dataclass(frozen=True)
class Node:
    """What a path is, as the disk, the mount, the index and the history can all say it."""

    kind: str
    size: int = 0
    mode: int = 0
    hash: bytes | None = None  # a file's BLAKE3
    target: bytes | None = None  # a symlink's


def tree(top: Path) -> dict[bytes, Node]:
    """Every path below *top* (relative, bytes) and what it is now."""
    out: dict[bytes, Node] = {}
    todo = [b""]
    while todo:
        rel = todo.pop()
        for name in os.listdir(os.fsencode(top) + (b"/" + rel if rel else b"")):
            if not rel and name == MARKER:
                continue  # the daemon's, in the Real only: neither indexed nor shown
            path = rel + b"/" + name if rel else name
            full = os.fsencode(top) + b"/" + path
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out[path] = Node("dir", 0, mode)
                todo.append(path)
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(full)
                out[path] = Node("link", len(target), mode, target=target)
            elif stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    content = f.read()
                out[path] = Node("file", len(content), mode, blake3(content).digest())
    return out


def indexed(data_dir: Path, arena: str = "a") -> tuple[dict[bytes, Node], list[Entry]]:
    """A stopped daemon's index of *arena* (every path) and its whole history."""
    with Store(data_dir) as store:
        index = Index(store, load_or_create(data_dir).public_key[:8])
        root = index.arena_root(arena)
        out: dict[bytes, Node] = {}
        todo: list[list[bytes]] = [[]]
        while todo:
            path = todo.pop()
            for name, r in index.children(root, path).items():
                key = b"/".join([*path, name])
                kind = KINDS[r.kind]
                out[key] = Node(kind, r.size if kind != "dir" else 0, r.mode, r.settled_hash, r.target)
                if r.kind == KIND_DIR:
                    todo.append([*path, name])
        return out, index.history(root, 1 << 40)


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _below(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top + b"/")


def _node(kind: str, v: Version | None) -> Node:
    assert v is not None
    return Node(kind, v.size if kind != "dir" else 0, v.mode, v.hash, v.target)


def replay(entries: list[Entry]) -> tuple[dict[bytes, Node], list[str]]:
    """The state *entries* add up to from an empty arena, and every entry that does not fit it."""
    state: dict[bytes, Node] = {}
    problems: list[str] = []
    for e in entries:
        have = state.get(e.path)
        parent = _parent(e.path)

        def bad(why: str, e: Entry = e) -> None:
            moved = f" (from {e.old_path!r})" if e.old_path is not None else ""
            problems.append(f"#{e.seq} {e.op} {e.path!r}{moved}: {why}")

        if (
            e.op in ("create", "mkdir", "symlink", "rename", "exchange")
            and parent
            and state.get(parent, Node("")).kind != "dir"
        ):
            bad("its directory is not in the history's state")
        if e.op in ("create", "mkdir", "symlink"):
            kind = {"create": "file", "mkdir": "dir", "symlink": "link"}[e.op]
            if have is not None and not (kind == "link" == have.kind):
                bad(f"a {have.kind} is already there")
                for path in [p for p in state if _below(p, e.path)]:
                    del state[path]
            state[e.path] = _node(kind, e.new)
        elif e.op in ("edit", "overwrite"):
            if have is None or have.kind != "file":
                bad(f"no file there ({have})")
            elif e.old is None or (have.hash is not None and e.old.hash != have.hash):
                bad(f"says the content before was {e.old}, the history has {have}")
            state[e.path] = _node("file", e.new)
        elif e.op == "delete":
            if have is None or have.kind != "file":
                bad(f"no file there ({have})")
            state.pop(e.path, None)
        elif e.op == "rmdir":
            inside = [p for p in state if p != e.path and _below(p, e.path)]
            if have is None or have.kind != "dir" or inside:
                bad(f"no empty directory there ({have}, holding {inside})")
            for path in [*inside, e.path]:
                state.pop(path, None)
        elif e.op == "chmod":
            if have is None:
                bad("nothing there")
            else:
                state[e.path] = replace(have, mode=e.new.mode if e.new else have.mode)
        elif e.op == "rename":
            assert e.old_path is not None
            source = state.get(e.old_path)
            if source is None:
                bad("nothing at the old path")
            if have is not None and e.old is None:
                bad(f"replaced a {have.kind} without saying so")
            if have is None and e.old is not None:
                bad(f"says it replaced {e.old}, the history has nothing there")
            for path in [p for p in state if _below(p, e.path)]:
                del state[path]
            for path in sorted(p for p in state if _below(p, e.old_path)):
                state[e.path + path[len(e.old_path) :]] = state.pop(path)
            if source is not None:
                moved = _node(source.kind, e.new)
                if moved.hash is None and source.kind == "file":  # not hashed since: the base it had
                    moved = replace(moved, hash=e.old.hash if e.old is not None else source.hash)
                state[e.path] = moved
        elif e.op == "exchange":
            assert e.old_path is not None
            source = state.get(e.old_path)
            if have is None or source is None:
                bad(f"exchanges {source} with {have}: both must be there")
            elif e.old is None or e.new is None or (e.old.hash not in (None, have.hash)):
                bad(f"says {e.path!r} held {e.old}, the history has {have}")
            elif e.new.hash not in (None, source.hash):
                bad(f"says {e.old_path!r} held {e.new}, the history has {source}")
            else:
                swapped = {p: state.pop(p) for p in [q for q in state if _below(q, e.path)]}
                moving = {p: state.pop(p) for p in [q for q in state if _below(q, e.old_path)]}
                state.update({e.old_path + p[len(e.path) :]: n for p, n in swapped.items()})
                state.update({e.path + p[len(e.old_path) :]: n for p, n in moving.items()})
                for where, was, v in ((e.path, source, e.new), (e.old_path, have, e.old)):
                    node = _node(was.kind, v)
                    if node.hash is None and was.kind == "file":  # not hashed since: the base it had
                        node = replace(node, hash=was.hash)
                    state[where] = node
        else:
            bad("unknown op")
    return state, problems
