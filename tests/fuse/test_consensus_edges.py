"""Consensus while the user changes what a pass changes, through real mounts.

A local change is never overwritten or lost (it may be reported as a
conflict), and the index stays true to the disk: a pass places what it
fetched only if the index still holds, at that moment, the version it
planned over.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.fuse.test_consensus import facts, history, now, settled
from tests.fuse.test_unreal import household, listed
from tests.support import Daemon, wait_for

BIG = 96 << 20  # long enough to fetch for the user to act meanwhile


def staging(d: Daemon) -> list[str]:
    try:
        return os.listdir(d.root() / ".realize-tmp")
    except FileNotFoundError:
        return []


def finished(d: Daemon) -> bool:
    report = facts(d)
    return report["running"] is None and bool(report["last_full"]) and report["last_full"]["finished"]


def test_a_file_deleted_on_b_while_b_realizes_it_stays_deleted(bases: list[Path]) -> None:
    with household(bases) as pair:
        a, b = pair.daemons
        with open(a.mnt() / "big.bin", "wb") as f, open(a.mnt() / "copy.bin", "wb") as g:
            for _ in range(BIG >> 20):
                block = os.urandom(1 << 20)
                f.write(block)
                g.write(block)  # a keeps serving the content once it applied b's delete
        wait_for(lambda: settled(a, "big.bin") and settled(a, "copy.bin"), 60, "hashed on a")
        wait_for(lambda: listed(b.mnt() / "copy.bin") is not None, 20, "listed on b")
        now(b)
        wait_for(lambda: staging(b), 30, "b fetching into its staging directory")
        os.remove(b.mnt() / "big.bin")  # the user deletes the Unreal file b is realizing
        wait_for(lambda: finished(b), 60, "b's pass finished")
        assert listed(b.mnt() / "big.bin") is None  # the user's delete holds
        assert not (b.root() / "big.bin").exists()
        assert staging(b) == []
        # and is a delete of b's, told to a like any other
        assert [e["op"] for e in history(b)] == ["delete"]
        wait_for(lambda: not (a.root() / "big.bin").exists(), 20, "the delete applied on a")
