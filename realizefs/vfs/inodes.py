"""The inode table: FUSE inode numbers for the paths the mount has shown.

A tree of nodes, each known by (parent inode, name), so that renaming a
directory is one update whatever it holds, and a file renamed through the
mount keeps its inode number.

A node *is* the backing object it was looked up as, known by its identity
(device and inode number of the backing object). A path keeps its number
while the kernel references it, and after the kernel forgets it for as long
as it stays among the `keep_forgotten` most recently forgotten nodes (so
memory is bounded by what the kernel references plus that many), as long as
it leads to the same object; when the name comes to lead to another object (a
rename-replace or a delete and create in the backing tree, a kind change),
the name gets a new node and number, so the kernel never caches one object's
pages or attributes under another's inode.

A file with several hard links is one node with several names: its first
name is `Node.parent` and `Node.name`, the others `Node.links`. A name
looked up for an object that already has a node (its identity is in the
table, and it is not a directory) joins that node, so both names show one
inode number and the kernel keeps one page cache and one set of attributes
for them, as for one inode on the disk. A node the kernel does not reference
(no pin keeps its object alive, so its identity may have been reused by a new
object) is instead re-homed: its old names leave the tree, and those that
still lead to it join it again when next looked up. A node the kernel
references but whose object nothing holds (*alive* says no: past the pin
budget) is left alone, and the name gets a node of its own, as before links.

A node removed from the tree (its last name unlinked, replaced by a rename,
or found to be stale) while the kernel still holds references or open handles
becomes an *orphan*: it keeps its number, answers through its open handles,
and disappears once forgotten.

Pure data structure: no I/O, no trio; called from the event loop thread only.
"""

from __future__ import annotations

import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from realizefs.shrink import Shrink

ROOT_INODE = 1
KEEP_FORGOTTEN = 1 << 16  # forgotten nodes kept so their paths keep their numbers (~300 bytes each)


Ident = tuple[int, int]  # (st_dev, st_ino) of the backing object


@dataclass(slots=True)
class Node:
    parent: int  # 0 for the root and for orphans
    name: bytes
    kind: int  # stat.S_IFMT of the object, 0 if not known yet
    ident: Ident | None = None  # the backing object; None for virtual nodes
    lookups: int = 0
    opens: int = 0
    links: list[tuple[int, bytes]] | None = None  # its other names (parent, name): hard links

    def names(self) -> list[tuple[int, bytes]]:
        """Every (parent, name) the node has in the tree; none for an orphan."""
        first = [(self.parent, self.name)] if self.parent else []
        return first + (self.links or [])


class InodeTable:
    def __init__(
        self,
        first_free: int = ROOT_INODE + 1,
        keep_forgotten: int = KEEP_FORGOTTEN,
        on_drop: Callable[[int], None] = lambda ino: None,
        alive: Callable[[int], bool] = lambda ino: True,
    ) -> None:
        self._nodes: dict[int, Node] = {ROOT_INODE: Node(0, b"", 0, lookups=1)}
        # nodes in the tree that nothing references, least recently forgotten first
        self._forgotten: OrderedDict[int, None] = OrderedDict()
        self.keep_forgotten = keep_forgotten
        self._on_drop = on_drop  # told of every node dropped from the table
        self._alive = alive  # whether a node's object is surely still its own (pinned or open)
        self._shrink = Shrink()
        self._children: dict[int, dict[bytes, int]] = {}  # parent -> name -> child
        self._by_ident: dict[Ident, int] = {}  # the node of each backing object but directories
        self._next = first_free

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, ino: int) -> bool:
        return ino in self._nodes

    def node(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def child(self, parent: int, name: bytes) -> int | None:
        kids = self._children.get(parent)
        return kids.get(name) if kids is not None else None

    def add(
        self,
        parent: int,
        name: bytes,
        kind: int,
        ident: Ident | None = None,
        *,
        keep: bool = False,
        number: int | None = None,
    ) -> int:
        """The inode of *name* in *parent*: the node there if it is the same object, else a new one.

        The node there is kept when its kind and identity match (either side unknown
        matches); otherwise it becomes an orphan and the name gets a new number:
        *number* if given and free (an object whose number is fixed by what it is),
        else the next one. *keep*: a node that is never forgotten (the mount's own
        directories and files)."""
        existing = self.child(parent, name)
        if existing is not None:
            node = self._nodes[existing]
            same_kind = node.kind == kind or not node.kind or not kind
            same_object = node.ident == ident or node.ident is None or ident is None
            if same_kind and same_object:
                node.kind = node.kind or kind
                if node.ident is None and ident is not None:
                    node.ident = ident
                    self._register(existing, node)
                return existing
            self.detach(parent, name)
        linked = self._by_ident.get(ident) if ident is not None else None
        if linked is not None and self._nodes[linked].kind == kind:  # another name of a known object
            node = self._nodes[linked]
            referenced = node.lookups or node.opens
            if not referenced:
                for old_parent, old_name in node.names():  # its identity may be reused: see the doc
                    self._pop(old_parent, old_name)
                node.parent, node.links = 0, None
            if not referenced or self._alive(linked):
                self._name(linked, parent, name)
                return linked
        if number is not None and number not in self._nodes:
            ino = number
        else:
            ino = self._next
            self._next += 1
        self._nodes[ino] = Node(parent, name, kind, ident)
        self._register(ino, self._nodes[ino])
        self._children.setdefault(parent, {})[name] = ino
        self._shrink.due(len(self._nodes))  # notes the largest size
        if not keep:
            self._unused(ino)  # until the kernel takes a reference
        return ino

    def _register(self, ino: int, node: Node) -> None:
        if node.ident is not None and node.kind and node.kind != stat.S_IFDIR:
            self._by_ident[node.ident] = ino

    def _unregister(self, ino: int, node: Node) -> None:
        if node.ident is not None and self._by_ident.get(node.ident) == ino:
            del self._by_ident[node.ident]

    def _name(self, ino: int, parent: int, name: bytes) -> None:
        """Give *ino* the name (*parent*, *name*) besides those it has."""
        node = self._nodes[ino]
        if not node.parent:
            node.parent, node.name = parent, name
        else:
            node.links = [*(node.links or []), (parent, name)]
        self._children.setdefault(parent, {})[name] = ino

    def _unname(self, node: Node, parent: int, name: bytes) -> None:
        """Take the name (*parent*, *name*) from *node* (the tree's map is the caller's)."""
        if (node.parent, node.name) == (parent, name):
            if node.links:
                node.parent, node.name = node.links.pop(0)
            else:
                node.parent = 0
        elif node.links and (parent, name) in node.links:
            node.links.remove((parent, name))
        if not node.links:
            node.links = None

    def names(self, ino: int) -> list[tuple[int, bytes]]:
        """Every (parent, name) of *ino* in the tree (several for a file with hard links)."""
        node = self._nodes.get(ino)
        return node.names() if node is not None else []

    def is_orphan(self, ino: int) -> bool:
        node = self._nodes.get(ino)
        return node is not None and node.parent == 0 and ino != ROOT_INODE

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
        """Known children of *parent* (in time proportional to their number)."""
        yield from list(self._children.get(parent, {}).items())

    def _pop(self, parent: int, name: bytes) -> int | None:
        kids = self._children.get(parent)
        if kids is None:
            return None
        ino = kids.pop(name, None)
        if not kids:
            del self._children[parent]
        return ino

    def detach(self, parent: int, name: bytes) -> int | None:
        """Remove *name* from *parent*; a node left with no name becomes an orphan until forgotten."""
        ino = self._pop(parent, name)
        if ino is None:
            return None
        node = self._nodes[ino]
        self._unname(node, parent, name)
        if not node.parent:
            self._forgotten.pop(ino, None)
            self._drop_if_unused(ino, node)
        return ino

    def move(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes) -> None:
        """Rename: the moved node keeps its number; a replaced target is detached.

        Two names of one node: nothing happens, as ``rename(2)`` does nothing then."""
        ino = self.child(old_parent, old_name)
        if ino is not None and ino == self.child(new_parent, new_name):
            return
        self._pop(old_parent, old_name)
        self.detach(new_parent, new_name)
        if ino is None:
            return
        node = self._nodes[ino]
        self._unname(node, old_parent, old_name)
        self._name(ino, new_parent, new_name)

    def exchange(self, parent_a: int, name_a: bytes, parent_b: int, name_b: bytes) -> None:
        a = self._pop(parent_a, name_a)
        b = self._pop(parent_b, name_b)
        if a is not None and a == b:  # two names of one object: nothing changes
            self._children.setdefault(parent_a, {})[name_a] = a
            self._children.setdefault(parent_b, {})[name_b] = a
            return
        if a is not None:
            self._unname(self._nodes[a], parent_a, name_a)
        if b is not None:
            self._unname(self._nodes[b], parent_b, name_b)
        if a is not None:
            self._name(a, parent_b, name_b)
        if b is not None:
            self._name(b, parent_a, name_a)

    def looked_up(self, ino: int) -> None:
        self._nodes[ino].lookups += 1
        self._forgotten.pop(ino, None)

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups = max(0, node.lookups - count)
        self._drop_if_unused(ino, node)

    def opened(self, ino: int) -> None:
        self._nodes[ino].opens += 1
        self._forgotten.pop(ino, None)

    def closed(self, ino: int) -> None:
        node = self._nodes.get(ino)
        if node is not None:
            node.opens -= 1
            self._drop_if_unused(ino, node)

    def _drop_if_unused(self, ino: int, node: Node) -> None:
        if ino == ROOT_INODE or node.lookups > 0 or node.opens > 0:
            return
        if node.parent == 0:
            del self._nodes[ino]
            self._unregister(ino, node)
            self._on_drop(ino)
            self._compact()
        else:
            self._unused(ino)

    def _unused(self, ino: int) -> None:
        """*ino* is in the tree and nothing references it: kept while among the most recent."""
        self._forgotten[ino] = None
        self._forgotten.move_to_end(ino)
        while len(self._forgotten) > self.keep_forgotten:
            oldest = next(iter(self._forgotten))
            if self._children.get(oldest):  # its children go first (the kernel forgets leaves first)
                self._forgotten.move_to_end(oldest)
                break
            del self._forgotten[oldest]
            node = self._nodes.pop(oldest)
            for parent, name in node.names():
                self._pop(parent, name)
            self._unregister(oldest, node)
            self._on_drop(oldest)
            self._compact()

    def _compact(self) -> None:
        """Give back the tables of a table that shrank a lot (see `realizefs.shrink`)."""
        if self._shrink.due(len(self._nodes)):
            self._nodes = dict(self._nodes)
            self._children = dict(self._children)
            self._by_ident = dict(self._by_ident)
            self._forgotten = OrderedDict(self._forgotten)
