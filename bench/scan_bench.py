"""Benchmark: the startup scan of an arena of many small files.

Creates 100,000 files of 1 KiB (100 directories of 1,000) under /tmp, then, in
a fresh process each time so that peak memory is the indexer's own:

- first start: the walk against an empty index, hashing every file;
- second start: the walk when nothing changed (nothing is read again);

and reports files/s, the process's peak RSS and the LMDB size per file, next to
`find -printf` (a walk that stats every file) and `b3sum` over every file as
baselines measured in the same run. Asserts nothing about time.

    .venv/bin/python bench/scan_bench.py [--files N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import report

from realizefs.real.backing import Backing
from realizefs.real.indexer import Indexer
from realizefs.store.index import Index
from realizefs.store.schema import Store

PER_DIR = 1000


def child(root: Path, data: Path) -> None:
    """One daemon start's worth of indexing; prints seconds, files and peak RSS."""

    async def settle() -> int:
        with Store(data) as store:
            indexer = Indexer(Index(store, b"benchmrk"), rest=0.0)
            indexer.set_arenas({"a": Backing(root)})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(indexer.run)
                while not indexer.scanned("a") or indexer.busy:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
            return indexer.counts("a").files

    start = time.perf_counter()
    files = trio.run(settle)
    seconds = time.perf_counter() - start
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "files": files, "peak_rss_mib": rss_kib / 1024}))


def run_child(root: Path, data: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(root), str(data)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.splitlines()[-1]))


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0
    base = Path(tempfile.mkdtemp(prefix="realizefs-scan-", dir="/tmp"))
    try:
        root, data = base / "real", base / "data"
        data.mkdir()
        payload = os.urandom(1024)
        for d in range(max(1, args.files // PER_DIR)):
            directory = root / f"d{d:04d}"
            directory.mkdir(parents=True)
            for i in range(PER_DIR):
                (directory / f"f{i:05d}").write_bytes(payload[:-8] + i.to_bytes(8, "big"))
        files = sum(1 for _ in root.rglob("f*"))
        find = timed(["find", str(root), "-type", "f", "-printf", "%s %T@\\n"])
        b3sum = None
        if shutil.which("b3sum"):
            b3sum = timed(["sh", "-c", f"find {root} -type f -print0 | xargs -0 b3sum > /dev/null"])
        first = run_child(root, data)
        store_bytes = sum(p.stat().st_size for p in (data / "store").iterdir())
        second = run_child(root, data)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = [
        ("first start: walk + hash every file", first["seconds"], first["peak_rss_mib"]),
        ("second start: nothing changed", second["seconds"], second["peak_rss_mib"]),
        ("find -printf (stat only)", find, None),
    ]
    if b3sum is not None:
        rows.append(("find | xargs b3sum (read and hash)", b3sum, None))
    print(f"{files} files of 1 KiB in {files // PER_DIR} directories")
    print(f"{'what':42} {'seconds':>8} {'files/s':>9} {'peak RSS':>9}")
    for name, seconds, rss in rows:
        rss_text = f"{rss:.0f} MiB" if rss is not None else ""
        print(f"{name:42} {seconds:8.2f} {files / seconds:9.0f} {rss_text:>9}")
    print(f"LMDB size: {store_bytes / 1e6:.1f} MB, {store_bytes / files:.0f} bytes per file")
    result = {
        "files": files,
        "rows": [{"what": n, "seconds": s, "files_per_s": files / s, "peak_rss_mib": r} for n, s, r in rows],
        "lmdb_bytes": store_bytes,
        "lmdb_bytes_per_file": store_bytes / files,
    }
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
