"""Benchmark: the chunk cache (`realizefs.store.cache`) on the disk holding a temporary directory.

Times, for 64 KiB chunks: `ChunkCache.get` of a cached chunk (LMDB read, BLAKE3
verification, copy, access recorded) and BLAKE3 of the chunk alone, `has`, `cached_bytes` per chunk of a
manifest, `flush` of the recorded accesses; and the put throughput, one chunk
per write transaction (`put`) and 16 per transaction (`put_many`, 1 MiB), with
and without eviction (a full cache evicts one chunk per new one). Prints
microseconds and MB/s; asserts nothing about time.

    .venv/bin/python bench/cache_bench.py [--chunks N] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from blake3 import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

from realizefs.store.cache import ChunkCache

CHUNK = 64 << 10
BATCH = 16


def chunks(n: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(start, start + n):
        data = i.to_bytes(8, "big") + os.urandom(CHUNK - 8)
        out.append((blake3(data).digest(), data))
    return out


def per_call_us(fn: Callable[[bytes], object], keys: list[bytes], rounds: int = 5) -> float:
    """Median over *rounds* of the mean microseconds of fn(key) over *keys*."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for key in keys:
            fn(key)
        samples.append((time.perf_counter() - start) / len(keys) * 1e6)
    return statistics.median(samples)


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1024, help="chunks of 64 KiB per phase")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the cache (default: a tmp dir)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    n = args.chunks
    base = Path(tempfile.mkdtemp(prefix="realizefs-cache-bench-", dir=args.dir))
    try:
        result: dict[str, float | int] = {"chunk_bytes": CHUNK, "chunks": n}
        first = chunks(n)
        cache = ChunkCache(_dir(base / "a"), max_size=1 << 40, min_free=0)
        start = time.perf_counter()
        for key, data in first:
            cache.put(key, data)
        result["put_one_per_txn_mb_s"] = mb_per_s(n * CHUNK, time.perf_counter() - start)
        second = chunks(n, n)
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            cache.put_many(second[i : i + BATCH])
        result["put_many_16_mb_s"] = mb_per_s(n * CHUNK, time.perf_counter() - start)
        keys = [key for key, _ in first]
        result["get_us"] = per_call_us(cache.get, keys)
        contents = dict(first)
        result["of_which_blake3_us"] = per_call_us(lambda key: blake3(contents[key]).digest(), keys)
        start = time.perf_counter()
        cache.flush()
        result["flush_of_accesses_ms"] = (time.perf_counter() - start) * 1e3
        result["has_us"] = per_call_us(cache.has, keys)
        manifest = [(i * CHUNK, CHUNK, key) for i, key in enumerate(keys)]
        start = time.perf_counter()
        for _ in range(5):
            cache.cached_bytes(manifest)
        result["cached_bytes_us_per_chunk"] = (time.perf_counter() - start) / 5 / n * 1e6
        used = cache.stats().used
        cache.close()
        # a full cache: every new chunk evicts the least recently used one
        cache = ChunkCache(base / "a", max_size=used, min_free=0)
        third = chunks(n, 2 * n)
        start = time.perf_counter()
        for key, data in third:
            cache.put(key, data)
        result["put_one_evicting_mb_s"] = mb_per_s(n * CHUNK, time.perf_counter() - start)
        fourth = chunks(n, 3 * n)
        start = time.perf_counter()
        for i in range(0, n, BATCH):
            cache.put_many(fourth[i : i + BATCH])
        result["put_many_16_evicting_mb_s"] = mb_per_s(n * CHUNK, time.perf_counter() - start)
        result["evictions"] = cache.stats().evictions
        result["file_bytes_over_quota"] = cache.file_bytes() - used
        cache.close()
        report(result, args.json)
    finally:
        shutil.rmtree(base)


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


if __name__ == "__main__":
    main()
