"""Content of Real files: the BLAKE3 hash and the content-defined chunk manifest.

One read pass over the file yields both (DESIGN.md §4): FastCDC
(`pyfastcdc`) cuts the stream into chunks of about 64 KiB (16 KiB minimum,
256 KiB maximum), each chunk is hashed with BLAKE3, and the whole content is
hashed as it streams by. The file is read through its descriptor with plain
reads, never mapped: a file truncated while it is read must not crash the
daemon with SIGBUS.

A file that changes while it is read (its size, mtime or ctime differ before
and after, or it did not yield as many bytes as it claimed) raises
`ChangedWhileHashing`: the caller hashes it again later and never records a
hash that does not match the content.

Blocking and CPU-bound: callers run it in a worker thread (BLAKE3 releases the
GIL while hashing).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from blake3 import blake3
from pyfastcdc import FastCDC

MIN_CHUNK = 16 << 10
AVG_CHUNK = 48 << 10  # FastCDC's mean is avg + min: about 64 KiB
MAX_CHUNK = 256 << 10
HASH_SIZE = 32


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    length: int
    hash: bytes


@dataclass(frozen=True, slots=True)
class Content:
    """What one file held: its size, mtime, hash and chunk manifest."""

    size: int
    mtime_ns: int
    hash: bytes
    chunks: tuple[Chunk, ...]


class ChangedWhileHashingError(Exception):
    """The file changed while it was read; its hash would not match its content."""


def _chunker() -> FastCDC:
    return FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)


def hash_fd(fd: int) -> Content:
    """Hash and chunk the regular file open as *fd*, from its start."""
    before = os.fstat(fd)
    whole = blake3(max_threads=1)
    chunks: list[Chunk] = []
    total = 0
    reader = io.FileIO(fd, "rb", closefd=False)
    reader.seek(0)
    for piece in _chunker().cut_stream(reader):
        data = piece.data
        whole.update(data)
        chunks.append(Chunk(piece.offset, piece.length, blake3(data).digest()))
        total += piece.length
    after = os.fstat(fd)
    stamp = (before.st_size, before.st_mtime_ns, before.st_ctime_ns)
    if stamp != (after.st_size, after.st_mtime_ns, after.st_ctime_ns) or total != after.st_size:
        raise ChangedWhileHashingError(f"changed while read ({total} of {after.st_size} bytes)")
    return Content(after.st_size, after.st_mtime_ns, whole.digest(), tuple(chunks))


def hash_bytes(data: bytes) -> Content:
    """The same for content in memory (chunks received from peers, tests)."""
    chunks = tuple(
        Chunk(piece.offset, piece.length, blake3(piece.data).digest()) for piece in _chunker().cut_buf(data)
    )
    return Content(len(data), 0, blake3(data).digest(), chunks)
