"""Benchmark: a home directory's worth of small files, and what the daemon keeps of them.

Starts a real daemon on temporary directories, creates N small files through
the mount in 100 directories (``--files``, 100,000 by default), reporting the
create rate of each tenth against creating the same files directly in a
plain directory in the same run; then ``rm -rf``s them through the mount, and
drops the kernel's caches. The daemon's resident memory (RSS) is printed at
start, after the creates, after the delete, and once the kernel forgot the
inodes and the indexer the deletes (anonymous memory is the daemon's own;
file-backed is mostly the store's pages, which grow with its history). Asserts nothing about time or memory.

    .venv/bin/python bench/scale_bench.py [--files N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import drop_caches, report

from realizefs.memory import TRIM_INTERVAL, TRIM_LAZY
from tests.support import Daemon, cleanup_base, make_base, wait_for

DIRS = 100


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory: in all, anonymous (the heap), and mapped files (the store's pages)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def indexer_idle(daemon: Daemon) -> bool:
    """Nothing waits to be hashed or forgotten (deleted files wait out a rest period)."""
    status = json.loads((daemon.mountpoint / ".realize" / "status.json").read_text())
    return all(a["real"]["pending"] == 0 and a["real"]["gone"] == 0 for a in status["arenas"])


def create(top: Path, files: int) -> list[int]:
    """Create *files* files of 100 bytes under *top*; the rate (files/s) of each tenth."""
    top.mkdir(exist_ok=True)
    for d in range(DIRS):
        (top / f"d{d}").mkdir()
    rates = []
    tenth = max(1, files // 10)
    started = time.perf_counter()
    for i in range(files):
        (top / f"d{i % DIRS}" / f"f{i}").write_bytes(b"x" * 100)
        if (i + 1) % tenth == 0:
            now = time.perf_counter()
            rates.append(round(tenth / (now - started)))
            print(f"{top.name}: {i + 1} files, {rates[-1]} files/s", file=sys.stderr, flush=True)
            started = now
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    base = make_base()
    daemon = Daemon(base)
    daemon.start()
    if daemon._watchdog is not None:  # the tests' hang guard: a long benchmark is no hang
        daemon._watchdog.cancel()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        out: dict[str, object] = {
            "files": args.files,
            "max_queued_events": int(Path("/proc/sys/fs/inotify/max_queued_events").read_text()),
        }
        out["rss_start_mb"] = rss_mb(pid)
        plain = base / "plain"
        plain.mkdir()
        out["direct_rates"] = create(plain, args.files)
        shutil.rmtree(plain)
        out["mount_rates"] = create(daemon.mnt() / "tree", args.files)
        out["rss_after_create_mb"] = rss_mb(pid)
        started = time.perf_counter()
        subprocess.run(["rm", "-rf", str(daemon.mnt() / "tree")], check=True)
        out["rm_rf_s"] = time.perf_counter() - started
        out["rss_after_delete_mb"] = rss_mb(pid)
        drop_caches()
        wait_for(lambda: not (daemon.root() / "tree").exists(), 60, "the tree gone")
        wait_for(lambda: indexer_idle(daemon), 600, "the deletes forgotten")
        time.sleep(TRIM_LAZY + TRIM_INTERVAL)  # the kernel forgets; the daemon trims its heap
        out["rss_after_forget_mb"] = rss_mb(pid)
        report(out, args.json)
        daemon.stop(check_log=False)
    finally:
        daemon.kill()
        cleanup_base(base)


if __name__ == "__main__":
    main()
