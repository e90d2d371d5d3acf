"""The content of Unreal files: chunks served to peers, and fetched from them on demand.

This peer serves ``manifest {hash}`` (the chunks of a content it indexed:
``[offset, length, chunk hash]`` flattened) and ``chunk {hash}`` (the bytes
of one chunk, read from an indexed Real file holding it, or from the cache,
and verified against its BLAKE3 hash before they are sent: a file written
since it was indexed is not served as that chunk).

`Content.read` serves a read of an Unreal file: it takes the content's
manifest (kept in the index once fetched), and for each chunk covering the
range uses the first of: the cache, an indexed Real file holding the chunk
(never fetched, then), a connected peer whose view holds this version (those
holding it in their Real first), then any other connected peer. Every chunk
from the network is verified before it is kept or returned; one that fails is
discarded with a warning and asked of the next peer. When no peer can supply
it within `FETCH_TIMEOUT`, the read fails with ``EIO``; no byte reaches a
reader unverified. Several readers of one chunk share one transfer; at most
`MAX_IN_FLIGHT` chunks are fetched at once (a memory bound of that many
chunks of at most 256 KiB). A read that continues where the last one of the
same content ended also fetches the next `READ_AHEAD` chunks in the
background.

Fetched chunks are kept in memory (at most `MAX_UNWRITTEN` bytes) until a
background task writes them to the cache in one transaction per batch (a
write transaction fsyncs: one per chunk would bound a sequential read by the
disk's fsync rate); a chunk that does not fit (everything else pinned) is
served without being kept.

A handle's reads go through a `Reader`: every chunk it has read stays pinned
in the cache until the handle is released, so reading it again never needs a
peer (under a small quota such a chunk was evicted and fetched again, and with
the peer gone the read failed). A reader of a file larger than the quota thus
fills the cache with its pins, and the rest is served uncached while it is open.

Chunks are fetched on the peer's bulk lane when it has one (`realizefs.peers.bulk`:
its thread verifies them), else, or if the lane ends meanwhile, with a ``chunk``
request on the control connection (still served, for peers without lanes).
`lane_chunk` serves our lanes: it runs in a lane's thread.

Runs in the daemon's trio thread; disk reads and cache and index writes run in
worker threads; network transfers are the connections' and lanes' (`realizefs.peers`).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import functools
import itertools
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import blake3
import trio

from realizefs.errors import ConnectionLost, FsError, RemoteError
from realizefs.peers.bulk import BadChunk
from realizefs.peers.connection import Connection, PeerInfo, Reply
from realizefs.peers.messages import Value
from realizefs.peers.methods import Method, Served
from realizefs.peers.schema import Bytes, Record
from realizefs.real.backing import Backing
from realizefs.store.cache import CacheFull, Pin
from realizefs.store.index import ChunkSource, Index, RealSource
from realizefs.store.index import Record as Entry

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 10.0  # seconds a chunk is sought from peers before a read fails with EIO
MAX_IN_FLIGHT = 16  # chunks fetched at once
READ_AHEAD = 32  # chunks fetched ahead of a sequential reader
RECENT = 2 * READ_AHEAD  # fetched chunks kept in memory for the reads that follow
MANIFESTS = 64  # manifests of the contents read last, kept decoded
MAX_CHUNK = 1 << 20  # bytes of a chunk accepted from a peer (FastCDC's are at most 256 KiB)
MAX_MANIFEST = 1 << 20  # chunks of one manifest
PIN_SHARE = 2  # an open handle pins at most this fraction (1/n) of the cache's quota
MAX_UNWRITTEN = 32 << 20  # bytes of fetched chunks waiting for the cache's next write
FLUSH_EVERY = 5.0  # seconds between writes of the cache's access order


@dataclass(frozen=True)
class ByHash:
    hash: bytes


MANIFEST = Method("manifest", Record(ByHash, {"hash": Bytes(32, low=32)}))
CHUNK = Method("chunk", Record(ByHash, {"hash": Bytes(32, low=32)}))

Manifest = list[tuple[int, int, bytes]]


class ChunkStore(Protocol):
    """Where fetched chunks are kept (`realizefs.store.cache.ChunkCache`)."""

    def get(self, key: bytes) -> bytes | None: ...

    def has(self, key: bytes) -> bool: ...

    def put_many(self, items: Iterable[tuple[bytes, bytes]]) -> int: ...

    def flush(self) -> None: ...

    def cached_bytes(self, manifest: list[tuple[int, int, bytes]]) -> int: ...

    def pin(self, keys: Iterable[bytes]) -> Pin: ...

    @property
    def max_size(self) -> int: ...


def verified(chunk: bytes, data: bytes) -> bool:
    return blake3.blake3(data).digest() == chunk


def read_real(backing: Backing, source: RealSource) -> bytes | None:
    """The bytes of a chunk at *source*, if the file still holds them (worker thread)."""
    try:
        fd = backing.open(b"/".join(source.path), os.O_RDONLY | os.O_NONBLOCK)
    except FsError:
        return None
    try:
        return os.pread(fd, source.length, source.offset)
    except OSError:
        return None
    finally:
        os.close(fd)


class Reader:
    """One open handle's reads of one version of an Unreal file: each chunk it reads is
    pinned in the cache before it is looked up or fetched, and stays pinned until `close`
    (the handle's release), so a read through the handle never needs a peer again; but a
    handle pins at most half the cache's quota (`PIN_SHARE`), its latest reads: a
    file larger than that, read through, would otherwise fill the cache with pins and
    leave nothing else cacheable while it is open.

    Pins are in memory only: a daemon that stops has no handles open."""

    __slots__ = ("_bytes", "_held", "_pins", "arena", "content", "path", "record")

    def __init__(self, content: Content, arena: str, path: Sequence[bytes], record: Entry) -> None:
        self.content, self.arena, self.path, self.record = content, arena, path, record
        self._held: set[bytes] | None = set()  # the chunks pinned; None once closed
        self._pins: deque[tuple[Pin, list[bytes], int]] = deque()  # oldest first, with their bytes
        self._bytes = 0

    async def read(self, offset: int, size: int) -> bytes:
        return await self.content.read(self.arena, self.path, self.record, offset, size, self)

    def hold(self, chunks: Iterable[tuple[bytes, int]]) -> None:
        """Pin those of *chunks* (hash, length) not pinned yet, and let the oldest go beyond
        `PIN_SHARE` of the quota (nothing once closed: a read that ends after)."""
        held = self._held
        if held is None:
            return
        new = dict(chunk for chunk in chunks if chunk[0] not in held)
        if new:
            # inline: `pin` waits only while a cache write is committing the eviction of one
            # of these (rare: the least recently used), and the pin must come before the look
            size = sum(new.values())
            self._pins.append((self.content.cache.pin(list(new)), list(new), size))
            held.update(new)
            self._bytes += size
            limit = self.content.cache.max_size // PIN_SHARE
            while self._bytes > limit and len(self._pins) > 1:
                pin, keys, size = self._pins.popleft()
                pin.release()
                held.difference_update(keys)
                self._bytes -= size

    def close(self) -> None:
        """Unpin every chunk read; a second call does nothing."""
        self._held = None
        pins, self._pins = self._pins, deque()
        for pin, _, _ in pins:
            pin.release()


class Content:
    """Serves chunks to peers and fetches them for reads (see the module doc)."""

    def __init__(
        self,
        index: Index,
        backing_of: Callable[[int], Backing | None],
        cache: ChunkStore,
        connected: Callable[[], dict[bytes, tuple[PeerInfo, Connection]]],
        *,
        corrupt: bool = False,
    ) -> None:
        self.index = index
        self.backing_of = backing_of  # an arena root's node id -> its Real
        self.cache = cache
        self.connected = connected  # peer id -> (who, connection), the peers connected now
        self.corrupt = corrupt  # a test hook: serve every chunk with its first byte flipped
        self.received = 0  # bytes of chunks received from peers, since start
        self._fetching: dict[bytes, trio.Event] = {}
        self._limit = trio.Semaphore(MAX_IN_FLIGHT)
        self._ends: dict[bytes, int] = {}  # content hash -> where the last read of it ended
        self._ahead: dict[bytes, int] = {}  # content hash -> manifest index read ahead up to
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()  # the last chunks fetched
        self._manifests: OrderedDict[bytes, tuple[Manifest, list[int]]] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self._unwritten: dict[bytes, bytes] = {}  # fetched, verified, not in the cache yet
        self._unwritten_bytes = 0  # their total length
        self._to_write = trio.Event()
        self._written = trio.Event()

    def served(self) -> list[Served[ByHash]]:
        return [Served(MANIFEST, self._serve_manifest), Served(CHUNK, self._serve_chunk)]

    async def run(self) -> None:
        """Write fetched chunks to the cache in batches, and hold the read-ahead tasks, until
        cancelled; the cache's access order is flushed every `FLUSH_EVERY` seconds."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._flush_order)
            while True:
                await self._to_write.wait()
                self._to_write = trio.Event()
                batch = list(self._unwritten.items())
                try:
                    await trio.to_thread.run_sync(self._write, batch)
                finally:
                    for chunk, _ in batch:
                        if (data := self._unwritten.pop(chunk, None)) is not None:
                            self._unwritten_bytes -= len(data)
                    self._written.set()
                    self._written = trio.Event()

    def _write(self, batch: list[tuple[bytes, bytes]]) -> None:
        try:
            self.cache.put_many(batch)
        except CacheFull:
            for chunk, data in batch:  # one at a time: those that fit
                with contextlib.suppress(CacheFull):
                    self.cache.put_many([(chunk, data)])

    async def _flush_order(self) -> None:
        while True:
            await trio.sleep(FLUSH_EVERY)
            await trio.to_thread.run_sync(self.cache.flush)

    # ------------------------------------------------------------ serving

    async def _serve_manifest(self, peer: PeerInfo, args: ByHash, reply: Reply) -> Value:
        flat = self.index.manifest_flat(args.hash)
        if flat is None:
            raise RemoteError("not-found", "no such content here")
        return flat

    async def _serve_chunk(self, peer: PeerInfo, args: ByHash, reply: Reply) -> Value:
        data = await self._local(args.hash)
        if data is None:
            raise RemoteError("not-found", "no such chunk here")
        return self._corrupted(data)

    def lane_chunk(self, chunk: bytes) -> bytes | None:
        """The chunk from the cache or the Real, for a peer's bulk lane (in the lane's thread)."""
        data = self._unwritten.get(chunk) or self.cache.get(chunk) or self._from_real(chunk)
        return None if data is None else self._corrupted(data)

    def _corrupted(self, data: bytes) -> bytes:
        """*data*, or with its first byte flipped under the test hook."""
        return bytes([data[0] ^ 0xFF]) + data[1:] if self.corrupt else data

    async def _local(self, chunk: bytes) -> bytes | None:
        """The chunk from the cache or an indexed Real file holding it, verified; None if neither."""
        data = self._unwritten.get(chunk) or self._recent.get(chunk) or self.cache.get(chunk)
        if data is not None:
            return data
        sources = self.index.chunk_sources(chunk)  # one short read: no thread for a chunk held nowhere
        if not sources:
            return None
        return await trio.to_thread.run_sync(self._from_real, chunk, sources)

    def _from_real(self, chunk: bytes, sources: list[ChunkSource] | None = None) -> bytes | None:
        for source in self.index.chunk_sources(chunk) if sources is None else sources:
            if not isinstance(source, RealSource):
                continue
            backing = self.backing_of(source.root)
            data = read_real(backing, source) if backing is not None else None
            if data is not None and verified(chunk, data):
                return data
        return None

    # ------------------------------------------------------------ fetching

    def cached(self, record: Entry) -> int:
        """How many bytes of *record*'s content the cache holds (0 while its manifest is not known)."""
        if record.hash is None:
            return 0
        kept = self._manifests.get(record.hash)
        manifest = kept[0] if kept is not None else self.index.manifest(record.hash)
        if not manifest:
            return 0
        waiting = [c for c in manifest if c[2] in self._unwritten]  # fetched, being written
        if not waiting:
            return self.cache.cached_bytes(manifest)
        return self.cache.cached_bytes([c for c in manifest if c[2] not in self._unwritten]) + sum(
            length for _, length, _ in waiting
        )

    def reader(self, arena: str, path: Sequence[bytes], record: Entry) -> Reader:
        """A reader of the Unreal file *path* at version *record* for one open handle."""
        return Reader(self, arena, path, record)

    async def read(
        self,
        arena: str,
        path: Sequence[bytes],
        record: Entry,
        offset: int,
        size: int,
        reader: Reader | None = None,
    ) -> bytes:
        """*size* bytes at *offset* of the Unreal file *path* at version *record*; the chunks
        read are pinned for *reader*, if given."""
        if record.hash is None:
            raise FsError("the file's content is not known", errno=errno.EIO)
        end = min(offset + size, record.size)
        if offset >= end:
            return b""
        manifest, starts = await self._located(arena, path, record)
        first = max(0, bisect.bisect_right(starts, offset) - 1)
        last = bisect.bisect_left(starts, end)
        wanted = manifest[first:last]
        if reader is not None:
            reader.hold((chunk, length) for _, length, chunk in wanted)
        holders = functools.cache(lambda: self._holders(arena, path, record))  # only if fetching
        # Sequential if it starts where the last read *began* to read ended: the kernel sends
        # a sequential reader's next read before this one is answered.
        sequential = self._ends.get(record.hash) == offset
        self._ends[record.hash] = end
        found: dict[bytes, bytes] = {}
        for _, _, chunk in wanted:  # fetched lately (read ahead, mostly): taken without a task
            if (data := self._recent.get(chunk) or self._unwritten.get(chunk)) is not None:
                found[chunk] = data
        failed: list[FsError] = []
        async with trio.open_nursery() as nursery:
            for _, _, chunk in wanted:
                if chunk not in found:
                    found[chunk] = b""
                    nursery.start_soon(self._gather, chunk, holders, found, failed, nursery.cancel_scope)
            if sequential and self._nursery is not None:
                # Each chunk read ahead once, not again at each read (an earlier pass's mark is stale).
                start = self._ahead.get(record.hash, last)
                start = start if last <= start <= last + READ_AHEAD else last
                for _, _, chunk in manifest[start : last + READ_AHEAD]:
                    self._soon(self._read_ahead, chunk, holders)
                self._ahead[record.hash] = last + READ_AHEAD
        if failed:
            log.info("%s/%s: a read failed: %s", arena, b"/".join(path).decode(errors="replace"), failed[0])
            raise failed[0]
        data = found[wanted[0][2]] if len(wanted) == 1 else b"".join(found[chunk] for _, _, chunk in wanted)
        skip = offset - wanted[0][0]
        return data[skip : skip + end - offset]

    async def _gather(
        self,
        chunk: bytes,
        holders: Callable[[], list[bytes]],
        found: dict[bytes, bytes],
        failed: list[FsError],
        scope: trio.CancelScope,
    ) -> None:
        """Fetch one chunk of a read into *found*; on failure, note it and stop the others."""
        try:
            found[chunk] = await self.chunk(chunk, holders)
        except FsError as exc:
            failed.append(exc)
            scope.cancel()

    async def _read_ahead(self, chunk: bytes, holders: Callable[[], list[bytes]]) -> None:
        if (
            chunk in self._fetching
            or chunk in self._unwritten
            or chunk in self._recent
            or self.cache.has(chunk)
        ):
            return  # (not read, only looked up: the read that needs it will verify it)
        with contextlib.suppress(FsError):  # the read that needs it will say so
            await self.chunk(chunk, holders)

    def _holders(self, arena: str, path: Sequence[bytes], record: Entry) -> list[bytes]:
        """Connected peers to ask, those whose view holds this version first (in their Real first)."""
        real = self.index.holders(arena, list(path), record.vv, record.hash, real=True)
        listed = self.index.holders(arena, list(path), record.vv, record.hash)
        connected = self.connected()
        ordered = [p for p in [*real, *listed, *sorted(connected)] if p in connected]
        return list(dict.fromkeys(ordered))

    async def manifest(self, arena: str, path: Sequence[bytes], record: Entry) -> Manifest:
        """The manifest of *record*'s content: the index's, or a peer's."""
        if record.hash is None:
            raise FsError("the file's content is not known", errno=errno.EIO)
        return (await self._located(arena, path, record))[0]

    async def _located(self, arena: str, path: Sequence[bytes], record: Entry) -> tuple[Manifest, list[int]]:
        """The content's manifest and its chunks' offsets, the last few kept decoded (a read of a
        few KiB must not unpack a large file's whole manifest)."""
        assert record.hash is not None
        known = self._manifests.get(record.hash)
        if known is None:
            manifest = await self._manifest(arena, path, record)
            known = self._manifests[record.hash] = (manifest, [o for o, _, _ in manifest])
            while len(self._manifests) > MANIFESTS:
                forgotten, _ = self._manifests.popitem(last=False)
                self._ends.pop(forgotten, None)
                self._ahead.pop(forgotten, None)
        self._manifests.move_to_end(record.hash)
        return known

    async def _manifest(self, arena: str, path: Sequence[bytes], record: Entry) -> Manifest:
        assert record.hash is not None
        manifest = self.index.manifest(record.hash)
        if manifest is not None:
            return manifest
        with trio.move_on_after(FETCH_TIMEOUT):
            for peer in self._holders(arena, path, record):
                conn = self.connected().get(peer)
                if conn is None:
                    continue
                try:
                    flat = await conn[1].request("manifest", {"hash": record.hash})
                    manifest = check_manifest(flat, record.size)
                except (RemoteError, ConnectionLost, ValueError) as exc:
                    log.info(
                        "%s: no manifest of %s from %s: %s", arena, record.hash.hex()[:16], conn[0].name, exc
                    )
                    continue
                if self._nursery is not None:  # kept in the index meanwhile: the read need not wait for it
                    self._soon(self._keep_manifest, record.hash, manifest)
                else:
                    await self._keep_manifest(record.hash, manifest)
                return manifest
        log.info("%s/%s: no connected peer has its content", arena, b"/".join(path).decode(errors="replace"))
        raise FsError("no connected peer has this file's content", errno=errno.EIO)

    def _soon(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start *task* in the background, unless the daemon is stopping (then it is not needed)."""
        if self._nursery is not None:
            with contextlib.suppress(RuntimeError):  # "closed to new arrivals": shutting down
                self._nursery.start_soon(task, *args)

    async def _keep_manifest(self, content: bytes, manifest: Manifest) -> None:
        try:
            await trio.to_thread.run_sync(self.index.keep_manifest, content, manifest)
        except Exception:  # kept in memory meanwhile; fetched again after a restart
            log.exception("cannot keep the manifest of %s in the index", content.hex()[:16])

    async def chunk(self, chunk: bytes, holders: Callable[[], list[bytes]]) -> bytes:
        """The verified bytes of *chunk*: local, or fetched once however many ask at once."""
        while True:
            busy = self._fetching.get(chunk)
            if busy is not None:
                await busy.wait()  # another reader's transfer: then it is in the cache, or we try
                continue
            data = await self._local(chunk)
            if data is not None:
                return data
            if chunk not in self._fetching:  # (nobody started fetching it while we looked)
                break
        done = self._fetching[chunk] = trio.Event()
        try:
            async with self._limit:
                data = await self._fetch(chunk, holders())
                self.received += len(data)
            self._recent[chunk] = data
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            while self._unwritten_bytes > MAX_UNWRITTEN:
                await self._written.wait()  # the cache's writes fall behind: fetch no faster
            if chunk not in self._unwritten:
                self._unwritten[chunk] = data
                self._unwritten_bytes += len(data)
            self._to_write.set()
            return data
        finally:
            del self._fetching[chunk]
            done.set()

    async def _fetch(self, chunk: bytes, holders: list[bytes]) -> bytes:
        with trio.move_on_after(FETCH_TIMEOUT):
            for peer in holders:
                conn = self.connected().get(peer)
                if conn is None:
                    continue
                who, connection = conn
                try:
                    data = await self._ask(connection, chunk)
                except (RemoteError, ConnectionLost) as exc:
                    log.debug("chunk %s not from %s: %s", chunk.hex()[:16], who.name, exc)
                    continue
                if data is None:
                    log.warning("peer %s sent a chunk that does not match its hash: discarded", who.name)
                    continue
                return data
        raise FsError("no connected peer could supply a chunk", errno=errno.EIO)

    async def _ask(self, connection: Connection, chunk: bytes) -> bytes | None:
        """The chunk from the peer of *connection*, on its lane if it has one; None if the bytes
        it sent are not the chunk."""
        if (lane := connection.lane) is not None:
            try:
                return await lane.fetch(chunk)  # verified in the lane's thread
            except BadChunk:
                return None
            except ConnectionLost as exc:  # the lane ended: the control connection may still serve
                log.debug("chunk %s: %s; asking on the control connection", chunk.hex()[:16], exc)
        data = await connection.request("chunk", {"hash": chunk})
        if type(data) is not bytes or not 0 < len(data) <= MAX_CHUNK or not verified(chunk, data):
            return None
        return data


def check_manifest(flat: object, size: int) -> Manifest:
    """A peer's manifest, checked: contiguous chunks from 0 covering exactly *size* bytes.

    Checked a column at a time, in C (the manifest of a 1 GiB file has about 16,000 chunks, and
    the first byte of a read waits for it)."""
    if type(flat) is not list or len(flat) % 3 or len(flat) > 3 * MAX_MANIFEST:
        raise ValueError("not a manifest")
    offsets, lengths, chunks = flat[0::3], flat[1::3], flat[2::3]
    numbers = set(map(type, offsets)) | set(map(type, lengths))
    if not numbers <= {int} or not set(map(type, chunks)) <= {bytes}:
        raise ValueError("the manifest holds a value of the wrong type")
    if lengths and not (min(lengths) > 0 and max(lengths) <= MAX_CHUNK):
        raise ValueError("the manifest holds a chunk of a bad length")
    if not set(map(len, chunks)) <= {32}:
        raise ValueError("the manifest holds a malformed chunk hash")
    ends = list(itertools.accumulate(lengths))
    if offsets[:1] not in ([], [0]) or offsets[1:] != ends[:-1]:
        raise ValueError("the manifest's chunks are not contiguous from 0")
    if (ends[-1] if ends else 0) != size:
        raise ValueError(f"the manifest covers {ends[-1] if ends else 0} bytes, the file has {size}")
    return list(zip(offsets, lengths, chunks, strict=True))
