"""Content hashing and chunking: one pass, content-defined, and never a wrong hash."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3
from pyfastcdc import FastCDC

from realizefs.real import hashing
from realizefs.real.hashing import MAX_CHUNK, MIN_CHUNK, ChangedWhileHashingError, hash_bytes, hash_fd


def random_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def hash_path(path: Path) -> hashing.Content:
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def test_hash_and_manifest_describe_the_content(tmp_path: Path) -> None:
    data = random_bytes(3 << 20)
    (tmp_path / "f").write_bytes(data)
    content = hash_path(tmp_path / "f")
    assert content.size == len(data) and content.hash == blake3(data).digest()
    assert content.mtime_ns == os.stat(tmp_path / "f").st_mtime_ns
    offset = 0
    for chunk in content.chunks:
        assert chunk.offset == offset
        assert chunk.hash == blake3(data[offset : offset + chunk.length]).digest()
        offset += chunk.length
    assert offset == len(data)
    assert all(MIN_CHUNK <= c.length <= MAX_CHUNK for c in content.chunks[:-1])
    assert hash_bytes(data).chunks == content.chunks and hash_bytes(data).hash == content.hash


def test_average_chunk_is_about_64_kib() -> None:
    content = hash_bytes(random_bytes(32 << 20, seed=7))
    average = content.size / len(content.chunks)
    assert 48 << 10 <= average <= 80 << 10, average


def test_an_insertion_changes_only_nearby_chunks() -> None:
    data = random_bytes(8 << 20, seed=3)
    edited = data[: 4 << 20] + b"inserted!" + data[4 << 20 :]
    before = {c.hash for c in hash_bytes(data).chunks}
    after = [c.hash for c in hash_bytes(edited).chunks]
    new = [h for h in after if h not in before]
    assert 1 <= len(new) <= 3, len(new)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    content = hash_path(tmp_path / "e")
    assert content.size == 0 and content.chunks == () and content.hash == blake3(b"").digest()


@pytest.mark.parametrize("change", ["append", "truncate", "overwrite"])
def test_a_file_changed_while_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(random_bytes(9 << 20))  # more than one read block

    class ChangingChunker:
        """The real chunker; the file changes under it after the first block."""

        def __init__(self) -> None:
            self.real = FastCDC(hashing.AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
            self.calls = 0

        def cut_buf(self, buf: bytes) -> Iterator[object]:
            self.calls += 1
            if self.calls == 1:
                with open(path, "r+b") as f:
                    if change == "append":
                        f.seek(0, os.SEEK_END)
                        f.write(b"more")
                    elif change == "truncate":
                        f.truncate(100_000)
                    else:
                        os.utime(path, ns=(1, 1))  # same size, content rewritten in place
                        f.write(b"x" * 10)
            return self.real.cut_buf(buf)

    monkeypatch.setattr(hashing, "_chunker", ChangingChunker)
    with pytest.raises(ChangedWhileHashingError):
        hash_path(path)


@pytest.mark.parametrize("prefix", [0, 1, 4096, 4096 * 3 + 7, 4096 * 5, 4096 * 5 + 1])
def test_the_same_pass_hashes_a_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefix: int) -> None:
    monkeypatch.setattr(hashing, "READ_BLOCK", 4096)  # the prefix spans several blocks
    data = random_bytes(4096 * 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        content = hash_fd(fd, prefix)
    finally:
        os.close(fd)
    assert content.hash == blake3(data).digest()
    expected = blake3(data[:prefix]).digest() if prefix <= len(data) else None
    assert content.prefix_hash == expected
