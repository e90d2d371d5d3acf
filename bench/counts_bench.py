"""Benchmark: reading an arena's counts from the index (what ``.realize/status`` shows).

Indexes N files (100,000 by default, 100 per directory) in a temporary LMDB
store, then times `Index.counts` (the counts kept in ``meta`` by every write:
one read) against `Index.recount` (a walk of every record, which is what
``counts`` did before schema 3), and the one-off migration from schema 2 that
computes the kept counts. Prints milliseconds per call; asserts nothing about
time.

    .venv/bin/python bench/counts_bench.py [--files N] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

from realizefs.store.index import KIND_DIR, KIND_FILE, Index, Record
from realizefs.store.schema import Store

PER_DIRECTORY = 100


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of *repeat* calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="realizefs-bench-", dir="/tmp"))
    try:
        with Store(directory) as store:
            index = Index(store, b"bench-me")
            root = index.arena_root("a")
            with index.batch():
                for i in range(args.files):
                    d = f"d{i // PER_DIRECTORY}".encode()
                    if i % PER_DIRECTORY == 0:
                        index.put(root, [d], Record(KIND_DIR))
                    index.put(root, [d, f"f{i}".encode()], Record(KIND_FILE, 1000, hash=bytes(32)))
            assert index.counts(root) == index.recount(root)
            rows = [
                {
                    "what": "counts (kept, one read)",
                    "ms": timed(lambda: index.counts(root), args.repeat * 100),
                },
                {
                    "what": "recount (walk every record)",
                    "ms": timed(lambda: index.recount(root), args.repeat),
                },
            ]
        env = lmdb.open(str(directory / "store"), max_dbs=16)
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:  # back to schema 2, whose migration counts once
            txn.put(b"schema_version", struct.pack(">I", 2), db=meta)
        env.close()
        start = time.perf_counter()
        Store(directory).close()
        rows.append({"what": "migration 2 -> 3 (one recount)", "ms": (time.perf_counter() - start) * 1000})
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n{args.files} files in {args.files // PER_DIRECTORY} directories")
    print(f"{'what':34} {'ms':>10}")
    for row in rows:
        print(f"{row['what']:34} {row['ms']:10.3f}")
    report({"files": args.files, "repeat": args.repeat, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
