"""Benchmark: the store's size per file and per history entry, before and after pruning.

Two stores in temporary directories, a and b, follow each other in-process as
the daemon's file lists do (`Index.changes` -> `Index.receive`, then
`Index.acknowledge`). a creates N files (100 per directory, 4 chunks each),
edits every one (a new content: the old manifest is no file's now), then
deletes half; b takes everything and acknowledges it, a takes b's records (the
deletes relayed back) and acknowledges them. Then a prunes (`Pruning.step`
until done, then the manifest sweep), timed. Prints, per named database, the
bytes its pages take and its entries, before and after, and the bytes per live
file and per history entry; asserts nothing about time or size.

    .venv/bin/python bench/prune_bench.py [--files N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

from realizefs.store.index import KIND_DIR, KIND_FILE, Index, Record
from realizefs.store.pruning import Pruning
from realizefs.store.schema import DATABASES, Store

PER_DIRECTORY = 100
CHUNKS = 4
A, B = b"bench-a.", b"bench-b."
SID_A, SID_B = b"a" * 16, b"b" * 16


def sizes(store: Store) -> dict[str, tuple[int, int]]:
    """Per named database: (bytes of its pages, entries)."""
    out = {}
    with store.env.begin() as txn:
        for name in DATABASES:
            st = txn.stat(store.dbs[name])
            pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
            out[name.decode()] = (pages * st["psize"], st["entries"])
    return out


def follow(taker: Index, giver: Index, giver_id: bytes, giver_store: bytes) -> None:
    after = taker.following("a", giver_id, giver_store)
    while told := giver.changes("a", after, 2000):
        taker.receive("a", giver_id, giver_store, told)
        after = told[-1].seq
        giver.acknowledge("a", taker.me, after)


def content(i: int, version: int) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    chunks = [(c * 65536, 65536, os.urandom(32)) for c in range(CHUNKS)]
    return os.urandom(32), chunks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n = args.files
    base = Path(tempfile.mkdtemp(prefix="realizefs-bench-", dir="/tmp"))
    try:
        (base / "a").mkdir()
        (base / "b").mkdir()
        with Store(base / "a") as sa, Store(base / "b") as sb:
            a, b = Index(sa, A), Index(sb, B)
            root = a.arena_root("a")
            b.arena_root("a")

            def path(i: int) -> list[bytes]:
                return [f"d{i // PER_DIRECTORY}".encode(), f"f{i}".encode()]

            with a.batch():
                for d in range((n + PER_DIRECTORY - 1) // PER_DIRECTORY):
                    a.put(root, [f"d{d}".encode()], Record(KIND_DIR, 0, 1, 0o755), op="mkdir")
                for version in (0, 1):
                    for i in range(n):
                        digest, chunks = content(i, version)
                        record = Record(KIND_FILE, CHUNKS * 65536, 1 + version, 0o644, digest)
                        a.put(root, path(i), record, chunks, op="edit" if version else "create")
                for i in range(0, n, 2):
                    a.delete(root, path(i))
            follow(b, a, A, SID_A)
            follow(a, b, B, SID_B)
            entries = len(a.history(root, 1 << 40))
            live = a.counts(root).files
            before = sizes(sa)
            pruning = Pruning(sa, a)
            start = time.perf_counter()
            steps = 0
            dropped = [0, 0, 0]
            while True:
                step = pruning.step("a", [B], 100_000, 1000)
                steps += 1
                dropped = [dropped[0] + step.history, dropped[1] + step.tombstones, dropped[2] + step.views]
                if not step.more:
                    break
            pruned_s = time.perf_counter() - start
            start = time.perf_counter()
            with a.track_contents() as touched:
                keep = pruning.referenced()
                at: bytes | None = b""
                swept = 0
                while at is not None:
                    gone, at = pruning.sweep(keep, touched, at, 1000)
                    swept += gone
            swept_s = time.perf_counter() - start
            after = sizes(sa)
            kept = len(a.history(root, 1 << 40))
    finally:
        shutil.rmtree(base)

    def total(s: dict[str, tuple[int, int]]) -> int:
        return sum(size for size, _ in s.values())

    print(f"{n} files created, each edited once, half deleted: {live} live, {entries} history entries")
    print(f"{'database':<10} {'before (KiB)':>13} {'entries':>9} {'after (KiB)':>12} {'entries':>9}")
    for name in before:
        (bs, be), (as_, ae) = before[name], after[name]
        print(f"{name:<10} {bs / 1024:>13,.0f} {be:>9,} {as_ / 1024:>12,.0f} {ae:>9,}")
    print(f"{'total':<10} {total(before) / 1024:>13,.0f} {'':>9} {total(after) / 1024:>12,.0f}")
    history_bytes = before["history"][0] / max(before["history"][1], 1)
    print(
        f"pruned {dropped[0]} history entries, {dropped[1]} tombstones ({dropped[2]} in b's view) "
        f"in {steps} steps, {pruned_s:.2f} s; swept {swept} manifests in {swept_s:.2f} s; {kept} entries kept"
    )
    print(
        f"per live file: {total(before) / live:,.0f} bytes before, {total(after) / live:,.0f} after; "
        f"per history entry: {history_bytes:,.0f} bytes"
    )
    result: dict[str, Any] = {
        "files": n,
        "live": live,
        "history_entries": entries,
        "before": before,
        "after": after,
        "bytes_per_live_file_before": total(before) / live,
        "bytes_per_live_file_after": total(after) / live,
        "bytes_per_history_entry": history_bytes,
        "prune_seconds": pruned_s,
        "sweep_seconds": swept_s,
    }
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
