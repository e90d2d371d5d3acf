"""The inode table: FUSE inode numbers for the paths the mount has shown.

A tree of nodes, each known by (parent inode, name), so that renaming a
directory is one update whatever it holds, and a file renamed through the
mount keeps its inode number. A path keeps its number for the life of the
mount, also after the kernel forgets it, as long as it exists with the same
kind of object (a path whose kind changed, say file to directory, gets a new
number so the kernel never mistakes one for the other).

A node removed from the tree (unlinked, or replaced by a rename) while the
kernel still holds references or open handles becomes an *orphan*: it keeps
its number, answers through its open handles, and disappears once forgotten.

Pure data structure: no I/O, no trio; called from the event loop thread only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

ROOT_INODE = 1


@dataclass(slots=True)
class Node:
    parent: int  # 0 for the root and for orphans
    name: bytes
    kind: int  # stat.S_IFMT of the object, 0 if not known yet
    lookups: int = 0
    opens: int = 0


class InodeTable:
    def __init__(self, first_free: int = ROOT_INODE + 1) -> None:
        self._nodes: dict[int, Node] = {ROOT_INODE: Node(0, b"", 0, lookups=1)}
        self._children: dict[tuple[int, bytes], int] = {}
        self._next = first_free

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, ino: int) -> bool:
        return ino in self._nodes

    def node(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def child(self, parent: int, name: bytes) -> int | None:
        return self._children.get((parent, name))

    def add(self, parent: int, name: bytes, kind: int, ino: int | None = None) -> int:
        """The inode of *name* in *parent*, creating it (or renumbering on a kind change)."""
        key = (parent, name)
        existing = self._children.get(key)
        if existing is not None:
            node = self._nodes[existing]
            if node.kind == kind or not node.kind or not kind:
                node.kind = node.kind or kind
                return existing
            self.detach(parent, name)
        if ino is None:
            ino = self._next
            self._next += 1
        self._nodes[ino] = Node(parent, name, kind)
        self._children[key] = ino
        return ino

    def path(self, ino: int) -> list[bytes] | None:
        """Names from the root down to *ino*; None for an orphan or unknown inode."""
        names: list[bytes] = []
        while ino != ROOT_INODE:
            node = self._nodes.get(ino)
            if node is None or node.parent == 0:
                return None
            names.append(node.name)
            ino = node.parent
        names.reverse()
        return names

    def children(self, parent: int) -> Iterator[tuple[bytes, int]]:
        """Known children; O(table) — for tests and rare bookkeeping only."""
        for (p, name), ino in self._children.items():
            if p == parent:
                yield name, ino

    def detach(self, parent: int, name: bytes) -> int | None:
        """Remove *name* from *parent*; its node becomes an orphan until forgotten."""
        ino = self._children.pop((parent, name), None)
        if ino is None:
            return None
        node = self._nodes[ino]
        node.parent = 0
        self._drop_if_unused(ino, node)
        return ino

    def move(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes) -> None:
        """Rename: the moved node keeps its number; a replaced target is detached."""
        ino = self._children.pop((old_parent, old_name), None)
        self.detach(new_parent, new_name)
        if ino is None:
            return
        node = self._nodes[ino]
        node.parent, node.name = new_parent, new_name
        self._children[(new_parent, new_name)] = ino

    def exchange(self, parent_a: int, name_a: bytes, parent_b: int, name_b: bytes) -> None:
        a = self._children.pop((parent_a, name_a), None)
        b = self._children.pop((parent_b, name_b), None)
        if a is not None:
            self._nodes[a].parent, self._nodes[a].name = parent_b, name_b
            self._children[(parent_b, name_b)] = a
        if b is not None:
            self._nodes[b].parent, self._nodes[b].name = parent_a, name_a
            self._children[(parent_a, name_a)] = b

    def looked_up(self, ino: int) -> None:
        self._nodes[ino].lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._drop_if_unused(ino, node)

    def opened(self, ino: int) -> None:
        self._nodes[ino].opens += 1

    def closed(self, ino: int) -> None:
        node = self._nodes.get(ino)
        if node is not None:
            node.opens -= 1
            self._drop_if_unused(ino, node)

    def _drop_if_unused(self, ino: int, node: Node) -> None:
        if node.parent == 0 and ino != ROOT_INODE and node.lookups <= 0 and node.opens <= 0:
            del self._nodes[ino]
