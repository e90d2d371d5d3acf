"""File lists between peers: real households over TLS on loopback, real LMDB, `FileLists` on each.

Each peer's index is changed as its indexer would (``put``/``rename``/``delete``
with an op); what the others' indexes hold is read back. The mount's side of
it is in tests/fuse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import trio

from realizefs.config import PeerConfig
from realizefs.peers.connection import PeerInfo, Reply
from realizefs.peers.identity import Identity
from realizefs.peers.messages import Request, Value
from realizefs.peers.methods import Methods
from realizefs.store.index import KIND_DIR, KIND_FILE, Index, Record
from realizefs.store.schema import Store
from realizefs.sync.lists import FileLists
from tests.integration.support import Node, eventually, new_identity, run_trio, start_node

H1, H2 = bytes(range(32)), bytes(32)


def pid(key: bytes) -> bytes:
    return key[:8]


@dataclass
class Peer:
    node: Node
    store: Store
    index: Index
    root: int
    lists: FileLists
    known: list[PeerConfig]  # its [[peer]] entries
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        """Stop the household and the lists, then close the store (no worker thread left in it)."""
        self.node.stop()
        self.scope.cancel()
        await self.done.wait()
        self.store.close()

    @property
    def me(self) -> bytes:
        return pid(self.node.identity.public_key)

    def get(self, path: str, tombstones: bool = False) -> Record | None:
        return self.index.get(self.root, path.encode().split(b"/"), unreal=True, tombstones=tombstones)


async def start_peer(
    nursery: trio.Nursery,
    base: Path,
    name: str,
    peers: Sequence[Peer] = (),
    *,
    listen: bool = True,
    identity: Identity | None = None,
) -> Peer:
    """A peer *name* with its store in *base*/*name*, knowing *peers* (and they it)."""
    identity = identity or new_identity()
    (base / name).mkdir(exist_ok=True)
    store = Store(base / name)
    index = Index(store, pid(identity.public_key))
    lists = FileLists(index, lambda: ["a"], pid)
    known = [other.node.peer(address=other.node.address is not None) for other in peers]
    node = await start_node(
        nursery,
        name,
        known,
        listen=listen,
        identity=identity,
        handler=Methods(*lists.served()),
        store_id=store.store_id,
    )
    for other in peers:
        other.known.append(node.peer(address=listen))
        other.node.household.update(other.known)
    peer = Peer(node, store, index, index.arena_root("a"), lists, known, trio.CancelScope(), trio.Event())
    nursery.start_soon(_run_lists, peer)
    return peer


async def _run_lists(peer: Peer) -> None:
    try:
        with peer.scope:
            await peer.lists.run(peer.node.household)
    finally:
        peer.done.set()


def p(path: str) -> list[bytes]:
    return path.encode().split(b"/")


def made(peer: Peer, path: str, content: bytes = H1, size: int = 5) -> None:
    record = Record(KIND_FILE, size, 7, 0o644, content)
    assert peer.index.put(peer.root, p(path), record, op="create" if peer.get(path) is None else "edit")


def test_a_peers_files_are_listed_renames_and_deletes_follow(tmp_path: Path) -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_peer(nursery, tmp_path, "a")
        b = await start_peer(nursery, tmp_path, "b", [a], listen=False)
        a.index.put(a.root, p("d"), Record(KIND_DIR, mode=0o755), op="mkdir")
        made(a, "d/f")
        await eventually(lambda: b.get("d/f") is not None, what="d/f listed on b")
        f = b.get("d/f")
        assert f is not None and not f.real and (f.size, f.mtime_ns, f.hash) == (5, 7, H1)
        assert f.vv == {a.me: 1} and f.origin == a.me
        made(a, "d/f", H2, 9)  # an edit
        await eventually(lambda: (r := b.get("d/f")) is not None and r.hash == H2, what="the edit")
        assert a.index.rename(a.root, p("d"), p("e"))
        await eventually(lambda: b.get("e/f") is not None and b.get("d") is None, what="the rename")
        assert a.index.delete(a.root, p("e/f"))
        await eventually(lambda: b.get("e/f") is None, what="the delete")
        stone = b.get("e/f", tombstones=True)
        assert stone is not None and not stone.live
        # b's own files go the other way, over the connection b dialed
        made(b, "mine")
        await eventually(lambda: a.get("mine") is not None, what="b's file on a")
        mine = a.get("mine")
        assert mine is not None and not mine.real and mine.origin == b.me
        # b holds its own in its Real, and a's view of b says so
        assert a.index.holders("a", p("mine"), real=True) == [b.me]

    run_trio(test)


def test_a_star_relays_each_laptops_files_to_the_other_and_nothing_loops(tmp_path: Path) -> None:
    async def test(nursery: trio.Nursery) -> None:
        hub = await start_peer(nursery, tmp_path, "hub")
        one = await start_peer(nursery, tmp_path, "one", [hub], listen=False)
        two = await start_peer(nursery, tmp_path, "two", [hub], listen=False)
        made(one, "from-one")
        await eventually(lambda: two.get("from-one") is not None, what="one's file on two, through hub")
        relayed = two.get("from-one")
        assert relayed is not None and relayed.origin == one.me and relayed.vv == {one.me: 1}
        made(two, "from-one", H2)  # two edits it: one hears of it through the hub
        await eventually(
            lambda: one.index.holders("a", p("from-one"), content=H2) == [hub.me], what="the edit"
        )
        kept = one.get("from-one")
        assert kept is not None and kept.real and kept.hash == H1  # one's Real is consensus's to change
        # the hub keeps one's file in its Real: an edit from two is relayed before consensus
        made(hub, "hubs")
        await eventually(lambda: one.get("hubs") is not None, what="the hub's file on one")
        made(one, "hubs", H2)
        await eventually(lambda: (r := two.get("hubs")) is not None and r.hash == H2, what="relayed noted")
        hubs = hub.index.get(hub.root, p("hubs"))
        assert hubs is not None and hubs.hash == H1  # the hub's Real is consensus's to change
        # nothing loops: a last change reaches everyone, then nobody numbers anything more
        counts = [x.index.last_told(x.root) for x in (hub, one, two)]
        made(one, "last")
        await eventually(lambda: hub.get("last") is not None and two.get("last") is not None, what="last")
        await eventually(lambda: all(x.lists._followers for x in (hub, one, two)), what="followers")
        settled = [x.index.last_told(x.root) for x in (hub, one, two)]
        assert [s - c for s, c in zip(settled, counts, strict=True)] == [1, 1, 1]
        made(two, "barrier")  # one more round trip through everyone: still nothing more
        await eventually(lambda: one.get("barrier") is not None, what="barrier")
        await eventually(lambda: hub.get("barrier") is not None, what="barrier on hub")
        assert [x.index.last_told(x.root) for x in (hub, one, two)] == [s + 1 for s in settled]

    run_trio(test)


def test_a_reconnecting_peer_resumes_and_a_recreated_store_sends_a_full_index(tmp_path: Path) -> None:
    async def test(nursery: trio.Nursery) -> None:
        a = await start_peer(nursery, tmp_path, "a")
        identity = new_identity()
        b = await start_peer(nursery, tmp_path, "b", [a], listen=False, identity=identity)
        made(a, "one")
        await eventually(lambda: b.get("one") is not None, what="one")
        await b.stop()
        made(a, "two")
        b = await start_peer(nursery, tmp_path, "b", [a], listen=False, identity=identity)
        await eventually(lambda: b.get("two") is not None, what="two after the restart")
        state = b.index.sync_state("a", a.me)
        assert state is not None and state.store_id == a.store.store_id
        assert state.last_seq == a.index.last_told(a.root)
        # a's store is recreated: b forgets its view of a and takes a full index
        await a.stop()
        fresh = tmp_path / "a-again"
        fresh.mkdir()
        b.known.clear()
        a2 = await start_peer(nursery, fresh, "a", [b], identity=a.node.identity)
        made(a2, "three")
        state = b.index.sync_state("a", a.me)
        assert state is not None and state.store_id == a.store.store_id  # until it connects

        def mirrored() -> bool:
            view = b.index.view_root("a", a.me)
            theirs = a2.index.children(a2.root, [], unreal=True, tombstones=True)
            return view is not None and b.index.children(view, [], unreal=True, tombstones=True) == theirs

        # b's view of a is a2's index (which took b's files, relayed from the old a, back
        # from b: the old a's own view is gone with its store)
        await eventually(
            lambda: (s := b.index.sync_state("a", a.me)) is not None and s.store_id == a2.store.store_id,
            what="the new store followed",
        )
        await eventually(lambda: b.get("three") is not None and mirrored(), what="a full index")
        assert set(a2.index.children(a2.root, [], unreal=True)) == {b"one", b"two", b"three"}
        one = a2.get("one")
        assert one is not None and one.origin == a.me and not one.real

    run_trio(test)


class _Garbage:
    """Serves ``follow`` with a part that is not a batch."""

    def __init__(self, part: bytes) -> None:
        self.part = part

    async def handle(self, peer: PeerInfo, request: Request, reply: Reply) -> Value:
        await reply.send(self.part)
        await trio.sleep_forever()
        return None


@pytest.mark.expect_log(r"a malformed file list")
@pytest.mark.parametrize(
    "part",
    [
        b"\xc1",  # not msgpack
        msgpack.packb([[1, b"../etc/passwd", 1, 1, 1, 0o644, H1, None, {b"x": 1}, True, b"x"]]),
        msgpack.packb([[1, b"f", 1, 1, 1, 0o644, b"short", None, {b"x": 1}, True, b"x"]]),
        msgpack.packb([[1, b"f", 1, 1, 1, 0o644, H1, None, {}, True, b"x"]]),
        msgpack.packb(
            [
                [2, b"f", 1, 1, 1, 0o644, H1, None, {b"x": 1}, True, b"x"],
                [1, b"g", 1, 1, 1, 0, H1, None, {b"x": 1}, True, b"x"],
            ]
        ),
    ],
)
def test_a_malformed_file_list_closes_that_connection_and_nothing_is_taken(
    tmp_path: Path, part: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(nursery: trio.Nursery) -> None:
        bad = await start_node(nursery, "bad", handler=_Garbage(part))
        good = await start_peer(nursery, tmp_path, "good", listen=False)
        bad.household.update([good.node.peer(address=False)])
        good.node.household.update([bad.peer()])
        with caplog.at_level(logging.WARNING):
            await eventually(lambda: "a malformed file list" in caplog.text, what="the warning")
        assert good.index.children(good.root, [], unreal=True, tombstones=True) == {}
        view = good.index.view_root("a", pid(bad.identity.public_key))
        assert view is None or good.index.children(view, [], unreal=True, tombstones=True) == {}

    run_trio(test)
