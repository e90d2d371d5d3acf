"""Benchmark: hashing and chunking a Real file, against hashing alone and reading alone.

Writes one file (1 GiB by default) on the same filesystem as /tmp, then, with
the page cache warm (the content is what is measured, not the disk) and again
cold, times: `realizefs.real.hashing.hash_fd` (FastCDC + BLAKE3 per chunk +
BLAKE3 of the whole, one pass), BLAKE3 alone over the same bytes (the blake3
package, one thread), `b3sum` (multi-threaded, if installed) and
`cat FILE > /dev/null`. Prints MB/s and each as a share of the plain read.
Asserts nothing about time.

    .venv/bin/python bench/index_bench.py [--size-mib N] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from blake3 import blake3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import drop_caches, report

from realizefs.real.hashing import hash_fd

MIB = 1 << 20


def with_fd(path: Path, fn: Callable[[int], object]) -> Callable[[], object]:
    def run() -> object:
        fd = os.open(path, os.O_RDONLY)
        try:
            return fn(fd)
        finally:
            os.close(fd)

    return run


def blake3_only(fd: int) -> bytes:
    hasher = blake3(max_threads=1)
    while block := os.read(fd, MIB):
        hasher.update(block)
    return hasher.digest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the benchmark drops caches: run it as root", file=sys.stderr)
        return 1
    directory = Path(tempfile.mkdtemp(prefix="realizefs-bench-", dir="/tmp"))
    path = directory / "big"
    try:
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))
        mb = args.size_mib * MIB / 1e6
        candidates: dict[str, Callable[[], object]] = {
            "read (cat > /dev/null)": lambda: subprocess.run(
                ["cat", str(path)], stdout=subprocess.DEVNULL, check=True
            ),
            "BLAKE3 alone (blake3, 1 thread)": with_fd(path, blake3_only),
            "realizefs hash_fd (FastCDC + BLAKE3 per chunk + whole)": with_fd(path, hash_fd),
        }
        if shutil.which("b3sum"):
            candidates["b3sum (all threads)"] = lambda: subprocess.run(
                ["b3sum", str(path)], stdout=subprocess.DEVNULL, check=True
            )
        rows = []
        for cache in ("warm", "cold"):
            for name, fn in candidates.items():
                times = []
                for _ in range(args.repeat):
                    if cache == "cold":
                        drop_caches()
                    else:
                        fn()
                    start = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - start)
                rows.append({"what": name, "cache": cache, "MB/s": mb / statistics.median(times)})
                print(f"  {cache:4} {name}: {rows[-1]['MB/s']:.0f} MB/s", flush=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"\n{args.size_mib} MiB, median of {args.repeat} runs")
    print(f"{'page cache':10} {'what':58} {'MB/s':>8} {'of read':>8}")
    for row in rows:
        read = next(r["MB/s"] for r in rows if r["cache"] == row["cache"] and r["what"].startswith("read"))
        row["of_read"] = row["MB/s"] / read
        print(f"{row['cache']:10} {row['what']:58} {row['MB/s']:8.0f} {row['of_read']:8.2f}")
    result = {"size_mib": args.size_mib, "repeat": args.repeat, "rows": rows}
    report(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
