"""The inode table, in both directions of every rule."""

from __future__ import annotations

import stat

from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.shrink import Shrink
from realizefs.vfs.inodes import ROOT_INODE, InodeTable
from tests.support import examples

F, D = stat.S_IFREG, stat.S_IFDIR


def test_same_path_same_number_and_rename_keeps_it() -> None:
    t = InodeTable()
    d = t.add(ROOT_INODE, b"d", D)
    f = t.add(d, b"f", F)
    assert t.add(d, b"f", F) == f
    assert t.path(f) == [b"d", b"f"]
    t.move(ROOT_INODE, b"d", ROOT_INODE, b"e")
    assert t.path(f) == [b"e", b"f"]  # everything below a moved directory follows
    assert t.child(ROOT_INODE, b"d") is None and t.child(ROOT_INODE, b"e") == d


def test_a_kind_change_gets_a_new_number() -> None:
    t = InodeTable()
    f = t.add(ROOT_INODE, b"x", F)
    d = t.add(ROOT_INODE, b"x", D)
    assert d != f and t.child(ROOT_INODE, b"x") == d


def test_orphans_live_while_referenced() -> None:
    t = InodeTable()
    f = t.add(ROOT_INODE, b"f", F)
    t.looked_up(f)
    t.opened(f)
    assert t.detach(ROOT_INODE, b"f") == f
    assert f in t and t.path(f) is None
    t.forget(f, 1)
    assert f in t  # still open
    t.closed(f)
    assert f not in t
    g = t.add(ROOT_INODE, b"g", F)
    t.detach(ROOT_INODE, b"g")
    assert g not in t  # nobody held it


def test_a_replaced_rename_target_is_detached_and_exchange_swaps() -> None:
    t = InodeTable()
    a, b = t.add(ROOT_INODE, b"a", F), t.add(ROOT_INODE, b"b", F)
    t.looked_up(b)
    t.move(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert t.child(ROOT_INODE, b"b") == a and t.path(b) is None and b in t
    c = t.add(ROOT_INODE, b"c", F)
    t.exchange(ROOT_INODE, b"b", ROOT_INODE, b"c")
    assert t.child(ROOT_INODE, b"b") == c and t.child(ROOT_INODE, b"c") == a


def test_the_root_is_never_dropped() -> None:
    t = InodeTable()
    t.forget(ROOT_INODE, 100)
    assert ROOT_INODE in t and t.path(ROOT_INODE) == []


names = st.sampled_from([b"a", b"b", b"c"])
ops = st.lists(
    st.tuples(st.sampled_from(["add_f", "add_d", "move", "detach"]), names, names, st.integers(0, 5)),
    max_size=60,
)


@settings(max_examples=examples(300), deadline=None)
@given(ops)
def test_paths_stay_consistent(operations: list[tuple[str, bytes, bytes, int]]) -> None:
    t = InodeTable()
    dirs = [ROOT_INODE]
    for op, name, other, pick in operations:
        parent = dirs[pick % len(dirs)]
        if op == "add_f":
            t.add(parent, name, F)
        elif op == "add_d":
            ino = t.add(parent, name, D)
            if ino not in dirs:
                dirs.append(ino)
        elif op == "move":
            moving = t.child(parent, name)
            if moving is not None and moving not in dirs:  # files only: no cycles
                t.move(parent, name, dirs[0], other)
        else:
            t.detach(parent, name)
        dirs = [d for d in dirs if d == ROOT_INODE or t.path(d) is not None]
        for d in dirs:
            for child_name, child in t.children(d):
                assert t.path(child) == [*(t.path(d) or []), child_name]


def test_forgotten_nodes_are_kept_up_to_a_bound_leaves_first() -> None:
    """Memory is what the kernel references plus `keep_forgotten` nodes; within that, numbers hold."""
    dropped: list[int] = []
    t = InodeTable(keep_forgotten=3, on_drop=dropped.append)
    d = t.add(ROOT_INODE, b"d", D)
    t.looked_up(d)
    files = [t.add(d, b"f%d" % i, F) for i in range(3)]
    for f in files:
        t.looked_up(f)
    held = t.add(d, b"held", F)
    t.looked_up(held)
    assert not dropped  # referenced: all kept
    t.forget(files[0], 1)
    t.forget(files[1], 1)
    assert t.add(d, b"f0", F) == files[0]  # forgotten, still numbered
    t.looked_up(files[0])
    t.forget(files[0], 1)
    t.forget(files[2], 1)
    t.forget(d, 1)  # four forgotten, three kept: the least recently forgotten leaf goes
    assert dropped == [files[1]] and files[1] not in t and t.child(d, b"f1") is None
    assert t.child(d, b"f0") == files[0] and d in t  # a directory with children stays
    t.forget(held, 1)  # over the bound again: the directory still has children, so a leaf goes
    assert dropped == [files[1], files[0]]
    assert d in t


def test_a_node_no_one_referenced_is_forgotten_from_the_start() -> None:
    """Nodes a listing numbered but the kernel never took count toward the bound too."""
    dropped: list[int] = []
    t = InodeTable(keep_forgotten=2, on_drop=dropped.append)
    a, b, c = (t.add(ROOT_INODE, name, F) for name in (b"a", b"b", b"c"))
    assert dropped == [a] and b in t and c in t
    t.looked_up(b)
    t.add(ROOT_INODE, b"d", F)
    t.add(ROOT_INODE, b"e", F)
    assert b in t and dropped == [a, c]  # a referenced node is never dropped


def test_a_table_that_shrank_a_lot_is_copied_to_give_its_memory_back() -> None:
    """CPython never shrinks a dict's table: the inode table copies its own once mostly empty."""
    t = InodeTable()
    d = t.add(ROOT_INODE, b"d", D)
    t.looked_up(d)
    files = [t.add(d, b"f%d" % i, F) for i in range(6000)]
    for f in files:
        t.looked_up(f)
    table = t._nodes
    for i, f in enumerate(files[:5000]):
        t.detach(d, b"f%d" % i)
        t.forget(f, 1)
    assert t._nodes is not table  # a fresh table, sized for what is left
    assert len(t._nodes) == 1000 + 2 and all(t.child(d, b"f%d" % i) == files[i] for i in range(5000, 6000))


def test_shrink_says_when_a_mapping_emptied_to_a_quarter_of_its_largest() -> None:
    s = Shrink()
    assert not any(s.due(n) for n in range(0, 10_001))  # growing
    assert not s.due(2_501) and s.due(2_499)  # a quarter of 10,000
    assert not s.due(2_000)  # measured from the new size
    small = Shrink()
    assert not small.due(4000) and not small.due(10)  # too small to be worth a copy


def test_names_of_one_object_share_a_node() -> None:
    """Hard links: a name looked up for an object that has a node joins it, not a new number."""
    t = InodeTable()
    d = t.add(ROOT_INODE, b"d", D, (1, 10))
    f = t.add(ROOT_INODE, b"f", F, (1, 20))
    t.looked_up(f)
    assert t.add(d, b"g", F, (1, 20)) == f and t.child(d, b"g") == f
    assert sorted(t.names(f)) == [(ROOT_INODE, b"f"), (d, b"g")]
    assert t.add(ROOT_INODE, b"h", F, (1, 21)) != f  # another object
    assert t.add(ROOT_INODE, b"e", D, (1, 10)) != d  # directories never share a node
    assert t.detach(ROOT_INODE, b"f") == f
    assert not t.is_orphan(f) and t.path(f) == [b"d", b"g"]  # one name left
    t.move(d, b"g", ROOT_INODE, b"k")
    assert t.names(f) == [(ROOT_INODE, b"k")] and t.child(d, b"g") is None
    t.detach(ROOT_INODE, b"k")
    assert t.is_orphan(f)  # no name left, still referenced
    assert t.add(d, b"back", F, (1, 20)) == f and t.path(f) == [b"d", b"back"]  # found again by a name


def test_a_rename_between_two_names_of_one_object_does_nothing() -> None:
    t = InodeTable()
    f = t.add(ROOT_INODE, b"f", F, (1, 20))
    t.looked_up(f)
    t.add(ROOT_INODE, b"g", F, (1, 20))
    t.move(ROOT_INODE, b"f", ROOT_INODE, b"g")
    assert sorted(t.names(f)) == [(ROOT_INODE, b"f"), (ROOT_INODE, b"g")]
    t.exchange(ROOT_INODE, b"f", ROOT_INODE, b"g")
    assert sorted(t.names(f)) == [(ROOT_INODE, b"f"), (ROOT_INODE, b"g")]
    assert t.child(ROOT_INODE, b"f") == t.child(ROOT_INODE, b"g") == f


def test_an_unreferenced_node_found_under_a_new_name_is_rehomed() -> None:
    """Nothing pins an object the kernel forgot: its identity may now be another file's, so its
    old names leave the tree (those still leading to it join it again when looked up)."""
    dropped: list[int] = []
    t = InodeTable(on_drop=dropped.append)
    f = t.add(ROOT_INODE, b"f", F, (1, 20))  # never referenced
    assert t.add(ROOT_INODE, b"g", F, (1, 20)) == f
    assert t.names(f) == [(ROOT_INODE, b"g")] and t.child(ROOT_INODE, b"f") is None
    t.looked_up(f)
    assert t.add(ROOT_INODE, b"f", F, (1, 20)) == f and len(t.names(f)) == 2
    t.forget(f, 1)
    t.detach(ROOT_INODE, b"f")
    t.detach(ROOT_INODE, b"g")
    assert dropped == [f] and t.add(ROOT_INODE, b"h", F, (1, 20)) != f  # gone with its identity


def test_a_forgotten_node_leaves_with_all_its_names() -> None:
    dropped: list[int] = []
    t = InodeTable(keep_forgotten=1, on_drop=dropped.append)
    f = t.add(ROOT_INODE, b"f", F, (1, 20))
    t.looked_up(f)
    t.add(ROOT_INODE, b"g", F, (1, 20))
    t.forget(f, 1)
    t.add(ROOT_INODE, b"other", F, (1, 30))  # over the bound: f goes
    assert dropped == [f] and t.child(ROOT_INODE, b"f") is None and t.child(ROOT_INODE, b"g") is None
    assert t.add(ROOT_INODE, b"g", F, (1, 20)) != f


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["add", "link", "move", "detach", "ref"]), names, names), max_size=60)
)
def test_every_name_leads_to_its_node_with_links(operations: list[tuple[str, bytes, bytes]]) -> None:
    t = InodeTable(keep_forgotten=4)
    made = 0
    for op, name, other in operations:
        here = t.child(ROOT_INODE, name)
        if op == "add":
            made += 1
            t.add(ROOT_INODE, name, F, (1, made))
        elif op == "link" and here is not None:
            node = t.node(here)
            assert node is not None
            t.add(ROOT_INODE, other, F, node.ident)
        elif op == "move":
            t.move(ROOT_INODE, name, ROOT_INODE, other)
        elif op == "detach":
            t.detach(ROOT_INODE, name)
        elif op == "ref" and here is not None:
            t.looked_up(here)
        for child_name, child in t.children(ROOT_INODE):
            assert (ROOT_INODE, child_name) in t.names(child)
            assert t.path(child) == [t.names(child)[0][1]]
        for ino in range(ROOT_INODE, made + 2):  # every name a node claims is in the tree
            for parent, child_name in t.names(ino):
                assert t.child(parent, child_name) == ino


def test_a_referenced_node_whose_object_nothing_holds_gets_no_new_name() -> None:
    """Past the pin budget a node's object may be gone and its identity reused by a new file:
    that file must not take the node (and the kernel's pages of the old one)."""
    t = InodeTable(alive=lambda ino: False)
    f = t.add(ROOT_INODE, b"f", F, (1, 20))
    t.looked_up(f)
    g = t.add(ROOT_INODE, b"g", F, (1, 20))
    assert g != f and t.names(f) == [(ROOT_INODE, b"f")] and t.names(g) == [(ROOT_INODE, b"g")]
