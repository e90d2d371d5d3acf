"""Unreal reads on the bulk lane, through real mounts of two daemons on loopback.

Once b's lane to a is open, the chunks of a file read on b travel on it, not
on the control connection (whose byte count ``peers.json`` shows); a damaged
chunk answered on the lane is refused as it is on the control connection.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from tests.fuse.test_peers import Pair, connected, peers
from tests.fuse.test_unreal import REST, connect, listed
from tests.support import Daemon, wait_for

LANE_OPEN = "peer a: bulk lane open (fetching)"


def received(d: Daemon, name: str) -> int:
    """Bytes *d* has received on its control connections to peer *name*."""
    return int(peers(d)[name]["bytes_in"])


def test_chunks_move_on_the_lane_and_damaged_ones_are_refused(bases: list[Path]) -> None:
    pair = Pair(bases[:2], extra=REST)
    a, b = pair.daemons
    b.allowed_log.append("does not match its hash")
    try:
        connect(pair)
        wait_for(lambda: LANE_OPEN in b.log(), 20, "b's lane to a")
        data = random.Random(5).randbytes(4 << 20)
        (a.mnt() / "f").write_bytes(data)
        there = b.mnt() / "f"
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == len(data), 20, "listed on b")
        before = received(b, "a")
        assert there.read_bytes() == data
        assert received(b, "a") - before < len(data) // 4  # the chunks came on the lane

        a.stop()
        a.start(env={"REALIZEFS_TEST_CORRUPT_CHUNKS": "1"})  # a now serves every chunk damaged
        wait_for(lambda: connected(b, "a") and b.log().count(LANE_OPEN) == 2, 20, "the lane again")
        damaged = random.Random(6).randbytes(1 << 20)
        (a.mnt() / "g").write_bytes(damaged)
        wait_for(lambda: (s := listed(b.mnt() / "g")) is not None and s.st_size == len(damaged), 20, "g on b")
        before = received(b, "a")
        with pytest.raises(OSError) as info:
            (b.mnt() / "g").read_bytes()
        assert info.value.errno == errno.EIO
        assert "does not match its hash" in b.log()
        assert received(b, "a") - before < len(damaged) // 4  # refused on the lane, not asked again
        pair.stop()
    finally:
        pair.kill()
