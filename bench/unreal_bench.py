"""Benchmark: the Unreal between two real daemons on loopback, against baselines in the same run.

Starts peers a and b (temporary directories, real TLS, real mounts), then:

- propagation: how long a create, an edit, a rename and a delete made through
  a's mount take to show in b's listing (median of --repeat);
- a file of --size-mib written on a (its Real), then read on b, uncached:
  time to the first byte, sequential MB/s, and the p50/p99 of a ``stat``
  through b's mount made every 10 ms meanwhile; both daemons' peak RSS;
- the same file read on b again from b's cache (page cache dropped), against
  reading it through a's mount from a's Real (the baseline the issue names);
- random 4 KiB reads on b from the cache, against the same on a's Real.

Prints a table and JSON; asserts nothing about time.

    .venv/bin/python bench/unreal_bench.py [--size-mib N] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import drop_caches, report

from tests.fuse.test_peers import Pair, connected
from tests.support import Daemon, cleanup_base, make_base

MIB = 1 << 20
REST = '\n[consensus]\nrest = "1h"\n[cache]\nmax_size = "4G"\nmin_free = "1G"\n'


def wait(condition: Callable[[], object], timeout: float = 120.0) -> float:
    """Seconds until *condition* holds (polled every millisecond)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("the condition never held")
        time.sleep(0.001)
    return time.perf_counter() - start


def exists(path: Path) -> bool:
    try:
        path.stat()
    except FileNotFoundError:
        return False
    return True


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def rss_mb(d: Daemon) -> float:
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def propagation(a: Daemon, b: Daemon, repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"create": [], "edit": [], "rename": [], "delete": []}
    for i in range(repeat):
        for op, seconds in one_round(a, b, f"p{i}", f"q{i}").items():
            times[op].append(seconds)
    return {op: statistics.median(values) for op, values in times.items()}


def one_round(a: Daemon, b: Daemon, name: str, renamed: str) -> dict[str, float]:
    """Seconds until b lists a's create, edit, rename and delete of *name*."""
    src, there, moved = a.mnt() / name, b.mnt() / name, b.mnt() / renamed
    out = {}
    start = time.perf_counter()
    src.write_bytes(b"x" * 1000)
    wait(lambda: exists(there))
    out["create"] = time.perf_counter() - start
    start = time.perf_counter()
    src.write_bytes(b"y" * 2000)
    wait(lambda: size_of(there) == 2000)
    out["edit"] = time.perf_counter() - start
    start = time.perf_counter()
    os.rename(src, a.mnt() / renamed)
    wait(lambda: not exists(there) and exists(moved))
    out["rename"] = time.perf_counter() - start
    start = time.perf_counter()
    os.remove(a.mnt() / renamed)
    wait(lambda: not exists(moved))
    out["delete"] = time.perf_counter() - start
    return out


def count(top: Path) -> int:
    """Files in the directories of *top* (-1 while it is not listed)."""
    try:
        return sum(len(os.listdir(d)) for d in top.iterdir())
    except FileNotFoundError:
        return -1


def ls_lr(path: Path) -> float:
    """Seconds for ``ls -lR`` of *path*, caches dropped first."""
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["ls", "-lR", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def listing(a: Daemon, b: Daemon, files: int) -> dict[str, float]:
    """``ls -lR`` of *files* small files: Real on a, Unreal on b (both through their mounts)."""
    top = a.mnt() / "many"
    for d in range(files // 100):
        (top / f"d{d}").mkdir(parents=True)
        for i in range(100):
            (top / f"d{d}" / f"f{i}").write_bytes(b"x" * 100)
    wait(lambda: count(b.mnt() / "many") == files, 600)
    real, unreal = ls_lr(a.mnt() / "many"), ls_lr(b.mnt() / "many")
    return {"files": files, "real_s": real, "unreal_s": unreal, "ratio": unreal / real}


def read_all(path: Path, block: int = MIB) -> tuple[float, float]:
    """(seconds to the first byte, seconds for the whole file) reading *path* in *block*s."""
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.read(fd, 1)
        first_byte = time.perf_counter() - start
        assert first
        while os.read(fd, block):
            pass
    finally:
        os.close(fd)
    return first_byte, time.perf_counter() - start


class Prober(threading.Thread):
    """``stat`` of *path* every 10 ms until stopped: the latencies, in ms."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stopped = path, threading.Event()
        self.latencies: list[float] = []

    def run(self) -> None:
        while not self.stopped.wait(0.01):
            start = time.perf_counter()
            os.stat(self.path)
            self.latencies.append((time.perf_counter() - start) * 1000)


def random_reads(path: Path, size: int, count: int, seed: int) -> float:
    """4 KiB reads at random offsets: reads per second."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        for _ in range(count):
            os.pread(fd, 4096, rng.randrange(0, size - 4096))
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--random", type=int, default=3000, help="random 4 KiB reads")
    parser.add_argument("--files", type=int, default=10000, help="files listed with ls -lR")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bases = [make_base() for _ in range(2)]
    pair = Pair(bases, extra=REST)
    a, b = pair.daemons
    result: dict[str, Any] = {"size_mib": args.size_mib, "cpus": os.cpu_count()}
    try:
        for d in pair.daemons:
            d.allowed_log.append("refused")
        pair.configure(0, pair.entry(1))
        pair.configure(1, pair.entry(0))
        wait(lambda: connected(a, "b") and connected(b, "a"), 60)
        result["propagation_s"] = propagation(a, b, args.repeat)
        result["ls_lR"] = listing(a, b, args.files)

        size = args.size_mib * MIB
        src, there = a.mnt() / "big.bin", b.mnt() / "big.bin"
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(MIB))  # fresh bytes: no chunk repeats (a rotated block's chunks would)
        listed = wait(lambda: size_of(there) == size, 600)
        result["listed_after_write_s"] = listed
        drop_caches()
        prober = Prober(b.mountpoint / ".realize" / "identity")  # never cached: each asks the daemon
        peak = {"a": rss_mb(a), "b": rss_mb(b)}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.1):
                peak["a"] = max(peak["a"], rss_mb(a))
                peak["b"] = max(peak["b"], rss_mb(b))

        sampler = threading.Thread(target=sample, daemon=True)
        prober.start()
        sampler.start()
        first, whole = read_all(there)
        prober.stopped.set()
        sampling.set()
        prober.join()
        sampler.join()
        lat = sorted(prober.latencies)
        result["uncached"] = {
            "first_byte_ms": first * 1000,
            "read_MBps": size / whole / 1e6,
            "stat_p50_ms": lat[len(lat) // 2] if lat else None,
            "stat_p99_ms": lat[int(len(lat) * 0.99)] if lat else None,
            "stats": len(lat),
            "peak_rss_mb": peak,
        }
        drop_caches()
        _, cached = read_all(there)
        drop_caches()
        _, real = read_all(src)
        result["sequential_cold_page_cache"] = {
            "unreal_cached_MBps": size / cached / 1e6,
            "real_through_mount_MBps": size / real / 1e6,
            "ratio": real / cached,
        }
        drop_caches()
        unreal_random = random_reads(there, size, args.random, 1)
        drop_caches()
        real_random = random_reads(src, size, args.random, 1)
        result["random_4k_cold_page_cache"] = {
            "unreal_cached_per_s": unreal_random,
            "real_through_mount_per_s": real_random,
            "ratio": unreal_random / real_random,
        }
        pair.stop()
    finally:
        pair.kill()
        for base in bases:
            cleanup_base(base)
    report(result, args.json)


if __name__ == "__main__":
    main()
