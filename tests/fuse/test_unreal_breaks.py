"""The Unreal under abuse: what adversarial use of two real daemons found broken.

Each test is a bug reproduced through real mounts (see the docstrings); they
use the scaffolding of `tests/fuse/test_unreal.py`.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from tests.fuse.test_peers import Pair
from tests.fuse.test_unreal import REST, connect, listed
from tests.support import wait_for


def test_two_handles_open_on_an_unreal_file_can_both_write(bases: list[Path]) -> None:
    """Two handles opened for writing while the file is Unreal: the first write realizes
    it; the second handle's write failed with EEXIST ("File exists": its own realize
    found the Real file the first one placed, `RENAME_NOREPLACE`) and its data was lost
    (after fetching the whole content again)."""
    pair = Pair(bases[:2], extra=REST)
    a, b = pair.daemons
    try:
        connect(pair)
        data = random.Random(13).randbytes(300_000)
        (a.mnt() / "shared.bin").write_bytes(data)
        there = b.mnt() / "shared.bin"
        wait_for(lambda: (s := listed(there)) is not None and s.st_size == len(data), 20, "listed on b")
        first = os.open(there, os.O_RDWR)
        second = os.open(there, os.O_RDWR)
        try:
            assert os.pwrite(first, b"FIRST", 1000) == 5
            assert os.pwrite(second, b"SECOND", 200_000) == 6
        finally:
            os.close(first)
            os.close(second)
        expected = bytearray(data)
        expected[1000:1005] = b"FIRST"
        expected[200_000:200_006] = b"SECOND"
        assert (b.root() / "shared.bin").read_bytes() == bytes(expected)
        assert os.listdir(b.root() / ".realize-tmp") == []
        pair.stop()
    finally:
        pair.kill()
