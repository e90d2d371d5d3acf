"""Content of Real files: the BLAKE3 hash and the content-defined chunk manifest.

One read pass over the file yields both (DESIGN.md §4): the file is read in
4 MiB blocks, the whole content is hashed block by block (BLAKE3 spreads a
large block over the cores), FastCDC (`pyfastcdc`) cuts the blocks into chunks
of about 64 KiB (16 KiB minimum, 256 KiB maximum; a chunk that reaches the end
of a block is cut again with the next one, which gives the same cut points as
cutting the whole file at once), and each chunk is hashed with BLAKE3. The
file is read through its descriptor with plain reads, never mapped: a file
truncated while it is read must not crash the daemon with SIGBUS.

With a *prefix* size, the same pass also hashes the file's first *prefix*
bytes: equal to the hash of the version before (that size), the new content
is that version with more bytes after it (an append).

A file that changes while it is read (its size, mtime or ctime differ before
and after, or it did not yield as many bytes as it claimed) raises
`ChangedWhileHashing`: the caller hashes it again later and never records a
hash that does not match the content.

Blocking and CPU-bound: callers run it in a worker thread (BLAKE3 releases the
GIL while hashing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from blake3 import blake3
from pyfastcdc import FastCDC

MIN_CHUNK = 16 << 10
AVG_CHUNK = 48 << 10  # FastCDC's mean is avg + min: about 64 KiB
MAX_CHUNK = 256 << 10
READ_BLOCK = 4 << 20
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
    ctime_ns: int = 0  # the inode's last change when it was read (0: content in memory)
    prefix_hash: bytes | None = None  # the hash of the first *prefix* bytes, if asked and there


class ChangedWhileHashingError(Exception):
    """The file changed while it was read; its hash would not match its content."""


def _chunker() -> FastCDC:
    return FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)


def hash_fd(fd: int, prefix: int | None = None) -> Content:
    """Hash and chunk the regular file open as *fd*, from its start (and its first *prefix* bytes)."""
    before = os.fstat(fd)
    whole = blake3(max_threads=blake3.AUTO)  # large blocks: worth spreading over the cores
    head = blake3() if prefix is not None and prefix <= before.st_size else None
    chunker = _chunker()
    chunks: list[Chunk] = []
    # One buffer for the whole file (fresh 4 MiB objects per block cost page faults):
    # the bytes of the chunk not yet known to be complete, then the next block.
    buf = bytearray(READ_BLOCK + MAX_CHUNK)
    view = memoryview(buf)
    carried = 0  # bytes at the start of buf carried over from the previous block
    start = 0  # the file offset of buf[0]
    while True:
        got = os.preadv(fd, [view[carried : carried + READ_BLOCK]], start + carried)
        whole.update(view[carried : carried + got])
        if head is not None and prefix is not None and start + carried < prefix:
            head.update(view[carried : carried + min(got, prefix - start - carried)])
        pieces = list(chunker.cut_buf(view[: carried + got]))
        if got and pieces:  # the last piece may only end where the block does: cut it again
            pieces.pop()
        for piece in pieces:
            chunks.append(Chunk(start + piece.offset, piece.length, blake3(piece.data).digest()))
        done = pieces[-1].offset + pieces[-1].length if pieces else 0
        carried += got - done
        buf[:carried] = buf[done : done + carried]
        start += done
        if not got:
            break
    after = os.fstat(fd)
    stamp = (before.st_size, before.st_mtime_ns, before.st_ctime_ns)
    if stamp != (after.st_size, after.st_mtime_ns, after.st_ctime_ns) or start != after.st_size:
        raise ChangedWhileHashingError(f"changed while read ({start} of {after.st_size} bytes)")
    return Content(
        after.st_size,
        after.st_mtime_ns,
        whole.digest(),
        tuple(chunks),
        after.st_ctime_ns,
        head.digest() if head is not None else None,
    )


def hash_bytes(data: bytes) -> Content:
    """The same for content in memory (chunks received from peers, tests)."""
    chunks = tuple(
        Chunk(piece.offset, piece.length, blake3(piece.data).digest()) for piece in _chunker().cut_buf(data)
    )
    return Content(len(data), 0, blake3(data).digest(), chunks)
