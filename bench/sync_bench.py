"""Benchmark: end-to-end sync between two realizefs daemons, rsync and Syncthing, side by side.

The same work for each tool, peer A holding the files and peer B receiving
them, all on loopback in a network namespace of the benchmark's own:

(a) one new file of --size-mib fresh random bytes;
(b) --files files of 1-100 KiB (random sizes, fresh bytes) in directories of 100;
(c) a 4 KiB edit (fresh bytes) in the middle of the file of (a);
(d) each peer's peak RSS during (b) (sampled every 0.1 s from /proc: the
    process and its children).

What is timed, per tool:

- realizefs (two daemons, real TLS, real mounts; arena default mode
  ``real``): the files are placed in A's backing directory; once A has hashed
  them and B lists them with A's hash, ``now`` is written to B's
  ``.realize/consensus``; timed until B's ``consensus.json`` reports the full
  pass started after it finished;
- rsync: ``rsync -a rsync://127.0.0.1:PORT/a/ B/`` against an rsync daemon
  serving A's directory; timed from start to exit (rsync does not fsync);
- Syncthing: two instances, configured before their first start to listen on
  loopback only, with discovery, relays, NAT, STUN, usage and crash reports
  and upgrades off, the GUI (its REST API) on loopback; they share one
  folder, with no watcher and no periodic scan. B's folder is paused while
  A scans (``/rest/db/scan``), then resumed: timed from the resume until B
  holds everything (for (a) and (c) B's file is replaced, seen on disk; for (b)
  B's ``/rest/db/status`` shows no need and every file), so the time includes
  B learning the index, which realizefs's excludes.

Every run ends with a check that B's tree holds A's bytes (BLAKE3 of every
file), outside the timing. Bytes on the wire are the loopback interface's
transmitted bytes (``/proc/net/dev``: every TCP segment with its headers, both
directions) from before the edit to the end of (c); nothing else uses that
interface in the namespace (realizefs's keepalives, Syncthing's pings, go
along). The page cache is dropped before each timed step.

Prints one table, and JSON with --json; asserts nothing about time.

    .venv/bin/python bench/sync_bench.py [--size-mib N] [--files N] [--tools realizefs,rsync,syncthing]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from blake3 import blake3
from common import drop_caches

import tests.support
from tests.fuse.test_peers import Pair
from tests.fuse.test_unreal import connect
from tests.support import Daemon, make_base

MIB = 1 << 20
KIB = 1 << 10
EDIT = 4 * KIB
NETNS_ENV = "SYNC_BENCH_NETNS"
REALIZEFS_EXTRA = '\n[consensus]\nrest = "1h"\ninterval = "1h"\n[cache]\nmax_size = "4G"\nmin_free = "1G"\n'
BIG = "big.bin"
MANY = "many"
FOLDER = "bench"  # Syncthing's folder id
T = TypeVar("T")
POLL = 0.02  # seconds between asks of a daemon whether it is done (a stat of a file: 0.005)
SKIP = (".realize-arena", ".realize-tmp")  # each realizefs peer's own


# ------------------------------------------------------------------ common


def wait(condition: Callable[[], object], timeout: float, what: str, every: float = 0.005) -> float:
    """Seconds until *condition* holds (polled every *every* seconds)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        time.sleep(every)
    return time.perf_counter() - start


def wait_for_value(condition: Callable[[], T | None], timeout: float, what: str, every: float) -> T:
    """What *condition* returns once it is not None (polled every *every* seconds)."""
    start = time.perf_counter()
    while (value := condition()) is None:
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:g} s")
        time.sleep(every)
    return value


def lo_bytes() -> int:
    """Bytes transmitted on the loopback interface so far (each segment once, headers included)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[8])
    raise RuntimeError("no lo in /proc/net/dev")


def tree_rss_mb(pid: int) -> tuple[float, float]:
    """Resident memory of *pid* and its descendants, all and anonymous only (MB; 0 once gone)."""
    total = anon = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1e6, anon / 1e6


class Peaks(threading.Thread):
    """Every 0.1 s, the RSS of each side's processes (*sides*: name -> its pids now): the peaks
    of all resident memory and of the anonymous part (the rest: mapped files, such as LMDB's)."""

    def __init__(self, sides: dict[str, Callable[[], list[int]]]) -> None:
        super().__init__(daemon=True)
        self.sides, self.stopped = sides, threading.Event()
        self.peak = {name: [0.0, 0.0] for name in sides}

    def run(self) -> None:
        while True:
            for name, pids in self.sides.items():
                sizes = [tree_rss_mb(p) for p in pids()]
                peak = self.peak[name]
                peak[0] = max(peak[0], sum(total for total, _ in sizes))
                peak[1] = max(peak[1], sum(anon for _, anon in sizes))
            if self.stopped.wait(0.1):
                return

    def stop(self) -> dict[str, list[float]]:
        self.stopped.set()
        self.join()
        return self.peak


@contextmanager
def sampling(sides: dict[str, Callable[[], list[int]]], into: dict[str, Any]) -> Iterator[None]:
    peaks = Peaks(sides)
    peaks.start()
    try:
        yield
    finally:
        into["rss_peak_mb"] = peaks.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def digest(path: Path) -> bytes:
    h = blake3()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.digest()


def files_under(top: Path, skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """Relative path -> path of every regular file under *top* (names in *skip* left out)."""
    out: dict[str, Path] = {}
    for here, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in names:
            if name not in skip:
                path = Path(here) / name
                out[str(path.relative_to(top))] = path
    return out


def same_tree(a: Path, b: Path, skip: tuple[str, ...] = ()) -> str:
    """'yes' if *b* holds exactly *a*'s files with *a*'s bytes; else what differs."""
    left, right = files_under(a, skip), files_under(b, skip)
    if left.keys() != right.keys():
        missing, extra = sorted(left.keys() - right.keys()), sorted(right.keys() - left.keys())
        return f"no: {len(missing)} missing (e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]})"
    wrong = [rel for rel in sorted(left) if digest(left[rel]) != digest(right[rel])]
    return f"no: {len(wrong)} differ (e.g. {wrong[:3]})" if wrong else "yes"


class Source:
    """The work, made once: a big file, many small ones, and the edit (all fresh random bytes)."""

    def __init__(self, top: Path, size_mib: int, files: int, seed: int) -> None:
        self.top, self.size, self.files = top, size_mib * MIB, files
        rng = random.Random(seed)
        with open(top / BIG, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(MIB))
        self.many_bytes = 0
        for i in range(files):
            d = top / MANY / f"d{i // 100:03d}"
            d.mkdir(parents=True, exist_ok=True)
            size = rng.randint(KIB, 100 * KIB)
            (d / f"f{i % 100:02d}").write_bytes(os.urandom(size))
            self.many_bytes += size
        self.edit_at, self.edit = self.size // 2, os.urandom(EDIT)

    def place(self, name: str, into: Path) -> None:
        """Copy *name* (BIG or MANY) into *into*, keeping mtimes."""
        subprocess.run(["cp", "-a", str(self.top / name), str(into)], check=True)

    def apply_edit(self, root: Path) -> None:
        fd = os.open(root / BIG, os.O_WRONLY)
        try:
            os.pwrite(fd, self.edit, self.edit_at)
            os.fsync(fd)
        finally:
            os.close(fd)


def timed(step: Callable[[], None]) -> tuple[float, int]:
    """Seconds *step* took, and the loopback bytes meanwhile."""
    before = lo_bytes()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start, lo_bytes() - before


# ------------------------------------------------------------------ realizefs


def xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name)
    except OSError:
        return None


def status(d: Daemon) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((d.mountpoint / ".realize" / "status.json").read_text())
    return data["arenas"][0]["real"]  # type: ignore[no-any-return]


def listed(b: Daemon, top: Path) -> int:
    """Files *b* lists under *top* of its arena and the directories right below it (-1: not yet)."""
    try:
        return sum(len(os.listdir(d)) if d.is_dir() else 1 for d in (b.mnt() / top).iterdir())
    except FileNotFoundError:
        return -1


def told(a: Daemon, b: Daemon, rel: str, size: int) -> bool:
    """Whether *a* has hashed *rel* and *b* lists it with that size (a peer is told of
    settled content only, so *b* knows *a*'s hash)."""
    try:
        return (
            xattr(a.mnt() / rel, "user.realize.hash") is not None and (b.mnt() / rel).stat().st_size == size
        )
    except FileNotFoundError:
        return False


def full_pass(b: Daemon, profile: Path | None = None) -> tuple[float, dict[str, Any]]:
    """Write ``now`` to *b* and wait for the full pass it starts to finish: seconds, its report."""
    spy = None
    if profile is not None:
        assert b.proc is not None
        spy = subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(b.proc.pid),
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(profile),
                "--threads",
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1)  # py-spy attaching
    asked = time.time()
    start = time.perf_counter()
    (b.mountpoint / ".realize" / "consensus").write_text("now\n")

    def finished() -> dict[str, Any] | None:
        data = json.loads((b.mountpoint / ".realize" / "consensus.json").read_text())
        report: dict[str, Any] | None = data["last_full"]
        return report if report and report["started"] >= asked - 0.01 and report["finished"] else None

    report = wait_for_value(finished, 3600, "the full pass", every=POLL)
    seconds = time.perf_counter() - start
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait()
    return seconds, report


def py_spy() -> str:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy") or "/work/main/.venv/bin/py-spy"


def run_realizefs(src: Source, work: Path, profile: Path | None) -> dict[str, Any]:
    tests.support.WATCHDOG_SECONDS = 24 * 3600  # the bench runs longer than a test
    bases = [make_base() for _ in range(2)]
    pair = Pair(bases, extra=REALIZEFS_EXTRA)
    a, b = pair.daemons
    out: dict[str, Any] = {}
    try:
        connect(pair)
        # (a)
        src.place(BIG, a.root())
        wait(lambda: told(a, b, BIG, src.size), 600, "the big file hashed on A and listed on B", 0.05)
        drop_caches()
        out["a_s"], out["a_report"] = full_pass(b, profile and profile.with_suffix(".a.txt"))
        out["a_ok"] = same_tree(a.root(), b.root(), SKIP)
        # (c)
        old = xattr(a.mnt() / BIG, "user.realize.hash")
        before = lo_bytes()
        src.apply_edit(a.root())
        wait(
            lambda: (
                xattr(a.mnt() / BIG, "user.realize.hash") not in (None, old)
                and xattr(b.mnt() / BIG, "user.realize.peers") == b""
            ),
            600,
            "the edit hashed on A and told to B",
            0.05,
        )
        drop_caches()
        out["c_s"], out["c_report"] = full_pass(b)
        out["c_wire"] = lo_bytes() - before
        out["c_ok"] = same_tree(a.root(), b.root(), SKIP)
        # (b) and (d)
        pids = {"A": lambda: [a.proc.pid] if a.proc else [], "B": lambda: [b.proc.pid] if b.proc else []}
        with sampling(pids, out):
            src.place(MANY, a.root())
            wait(
                lambda: (s := status(a))["pending"] == 0 and s["files"] == src.files + 1,
                1200,
                "the files hashed on A",
                0.2,
            )
            wait(lambda: listed(b, Path(MANY)) == src.files, 1200, "the files listed on B", 0.2)
            drop_caches()
            out["b_s"], out["b_report"] = full_pass(b, profile and profile.with_suffix(".b.txt"))
        out["b_ok"] = same_tree(a.root(), b.root(), SKIP)
        pair.stop()
    finally:
        for d in pair.daemons:  # not pair.kill(): it prints the logs
            d.kill()
        for reservation in pair.reservations:
            reservation.close()
        for base in bases:
            shutil.rmtree(base, ignore_errors=True)
    return out


# ------------------------------------------------------------------ rsync


def run_rsync(src: Source, work: Path) -> dict[str, Any]:
    a, b = work / "rsync-a", work / "rsync-b"
    a.mkdir()
    b.mkdir()
    port = free_port()
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"port = {port}\naddress = 127.0.0.1\nuse chroot = no\npid file = {work / 'rsyncd.pid'}\n"
        f"log file = {work / 'rsyncd.log'}\n[a]\npath = {a}\nread only = yes\nuid = root\ngid = root\n"
    )
    daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}"])
    clients: list[int] = []

    def pull() -> None:
        proc = subprocess.Popen(["rsync", "-a", f"rsync://127.0.0.1:{port}/a/", f"{b}/"])
        clients[:] = [proc.pid]
        if proc.wait() != 0:
            raise RuntimeError(f"rsync exited {proc.returncode}")
        clients.clear()

    out: dict[str, Any] = {}
    try:
        wait(lambda: port_open(port), 10, "the rsync daemon")
        src.place(BIG, a)
        drop_caches()
        out["a_s"], _ = timed(pull)
        out["a_ok"] = same_tree(a, b)
        src.apply_edit(a)
        drop_caches()
        out["c_s"], out["c_wire"] = timed(pull)
        out["c_ok"] = same_tree(a, b)
        with sampling({"A": lambda: [daemon.pid], "B": lambda: list(clients)}, out):
            src.place(MANY, a)
            drop_caches()
            out["b_s"], _ = timed(pull)
        out["b_ok"] = same_tree(a, b)
    finally:
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(a, ignore_errors=True)
        shutil.rmtree(b, ignore_errors=True)
    return out


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ Syncthing


class Syncthing:
    """One Syncthing instance on *home*, sharing *folder* (configured before its first start)."""

    def __init__(self, home: Path, folder: Path) -> None:
        self.home, self.folder = home, folder
        self.gui_port, self.port = free_port(), free_port()
        subprocess.run(
            ["syncthing", "generate", f"--home={home}", "--no-default-folder", "--skip-port-probing"],
            check=True,
            capture_output=True,
        )
        self.id = subprocess.run(
            ["syncthing", "serve", f"--home={home}", "--device-id"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.key = os.urandom(16).hex()
        self.proc: subprocess.Popen[bytes] | None = None
        (folder / ".stfolder").mkdir(parents=True, exist_ok=True)

    def configure(self, other: Syncthing) -> None:
        path = self.home / "config.xml"
        tree = ET.parse(path)
        root = tree.getroot()
        gui = root.find("gui")
        assert gui is not None
        gui.set("enabled", "true")
        gui.set("tls", "false")
        set_text(gui, "address", f"127.0.0.1:{self.gui_port}")
        set_text(gui, "apikey", self.key)
        options = root.find("options")
        assert options is not None
        for name, value in [
            ("listenAddress", f"tcp://127.0.0.1:{self.port}"),
            ("globalAnnounceEnabled", "false"),
            ("localAnnounceEnabled", "false"),
            ("relaysEnabled", "false"),
            ("natEnabled", "false"),
            ("urAccepted", "-1"),
            ("crashReportingEnabled", "false"),
            ("autoUpgradeIntervalH", "0"),
            ("startBrowser", "false"),
            ("stunKeepaliveStartS", "0"),  # no STUN
            ("stunServer", ""),
            ("announceLANAddresses", "false"),
            ("reconnectionIntervalS", "1"),
            ("setLowPriority", "false"),  # realizefs and rsync run at normal priority too
            ("progressUpdateIntervalS", "-1"),
        ]:
            set_text(options, name, value)
        for device in root.findall("device"):
            root.remove(device)
        defaults = root.find("defaults")
        assert defaults is not None
        template = defaults.find("folder")
        assert template is not None
        folder = ET.fromstring(ET.tostring(template))
        for element in folder.findall("device"):
            folder.remove(element)
        folder.attrib.update(
            {
                "id": FOLDER,
                "label": FOLDER,
                "path": str(self.folder),
                "type": "sendreceive",
                "rescanIntervalS": "0",
                "fsWatcherEnabled": "false",
            }
        )
        for i, st in enumerate((self, other)):
            device = ET.Element(
                "device", {"id": st.id, "name": "AB"[i], "compression": "metadata", "introducer": "false"}
            )
            ET.SubElement(device, "address").text = "dynamic" if st is self else f"tcp://127.0.0.1:{st.port}"
            ET.SubElement(device, "paused").text = "false"
            root.insert(0, device)
            ET.SubElement(folder, "device", {"id": st.id, "introducedBy": ""})
        root.insert(0, folder)
        tree.write(path)

    def start(self) -> None:
        with open(self.home / "syncthing.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["syncthing", "serve", f"--home={self.home}", "--no-browser", "--no-restart", "--no-upgrade"],
                stdout=log,
                stderr=log,
                env={**os.environ, "HOME": str(self.home), "STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1"},
            )
        wait(lambda: self.ok("/rest/system/ping"), 60, "Syncthing's REST API", 0.1)

    def ok(self, path: str) -> bool:
        try:
            self.get(path)
        except OSError:
            return False
        return True

    def call(self, method: str, path: str, body: object = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.gui_port}{path}",
            data=data,
            method=method,
            headers={"X-API-Key": self.key},
        )
        with urllib.request.urlopen(request, timeout=3600) as response:
            text = response.read()
        return json.loads(text) if text.strip() else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def connected(self, other: Syncthing) -> bool:
        connection = self.get("/rest/system/connections")["connections"].get(other.id, {})
        return bool(connection.get("connected"))

    def folder_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.get(f"/rest/db/status?folder={FOLDER}")
        return status

    def pause(self, paused: bool) -> None:
        self.call("PATCH", f"/rest/config/folders/{FOLDER}", {"paused": paused})

    def scan(self, files: int) -> None:
        """Scan the folder now; wait until it is idle holding *files* files."""
        self.call("POST", f"/rest/db/scan?folder={FOLDER}")
        wait(
            lambda: (s := self.folder_status())["state"] == "idle" and s["localFiles"] == files,
            1200,
            "Syncthing's scan",
            0.1,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def set_text(parent: ET.Element, name: str, value: str) -> None:
    element = parent.find(name)
    if element is None:
        element = ET.SubElement(parent, name)
    element.text = value


def replaced(path: Path, old: int | None, size: int) -> bool:
    """Whether *path* is a new inode (not *old*) of *size* bytes."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return st.st_ino != old and st.st_size == size


def run_syncthing(src: Source, work: Path) -> dict[str, Any]:
    a_dir, b_dir = work / "st-a-data", work / "st-b-data"
    a = Syncthing(work / "st-a", a_dir)
    b = Syncthing(work / "st-b", b_dir)
    a.configure(b)
    b.configure(a)
    out: dict[str, Any] = {
        "version": subprocess.run(["syncthing", "--version"], capture_output=True, text=True)
    }
    out["version"] = out["version"].stdout.split()[1]
    skip = (".stfolder", ".stversions")
    try:
        a.start()
        b.start()
        wait(lambda: a.connected(b) and b.connected(a), 120, "the Syncthing instances to connect", 0.1)

        def resume_until(done: Callable[[], bool], every: float = 0.005) -> None:
            b.pause(False)
            wait(done, 3600, "Syncthing's transfer", every)

        # (a)
        b.pause(True)
        src.place(BIG, a_dir)
        a.scan(1)
        drop_caches()
        out["a_s"], _ = timed(lambda: resume_until(lambda: replaced(b_dir / BIG, None, src.size)))
        out["a_ok"] = same_tree(a_dir, b_dir, skip)
        # (c)
        old = (b_dir / BIG).stat().st_ino
        before = lo_bytes()
        b.pause(True)
        src.apply_edit(a_dir)
        a.scan(1)
        drop_caches()
        out["c_s"], _ = timed(lambda: resume_until(lambda: replaced(b_dir / BIG, old, src.size)))
        out["c_wire"] = lo_bytes() - before
        out["c_ok"] = same_tree(a_dir, b_dir, skip)
        # (b)
        pids = {"A": lambda: [a.proc.pid] if a.proc else [], "B": lambda: [b.proc.pid] if b.proc else []}
        with sampling(pids, out):
            b.pause(True)
            src.place(MANY, a_dir)
            a.scan(src.files + 1)

            def all_there() -> bool:
                s = b.folder_status()
                return bool(s["localFiles"] == src.files + 1 and s["needTotalItems"] == 0)

            drop_caches()
            out["b_s"], _ = timed(lambda: resume_until(all_there, POLL))
        out["b_ok"] = same_tree(a_dir, b_dir, skip)
    finally:
        a.stop()
        b.stop()
        for d in (a_dir, b_dir, a.home, b.home):
            shutil.rmtree(d, ignore_errors=True)
    return out


# ------------------------------------------------------------------ report


def table(result: dict[str, Any]) -> str:
    tools = [t for t in ("realizefs", "rsync", "syncthing") if t in result["tools"]]
    figures = result["tools"]

    def cell(tool: str, key: str, fmt: Callable[[float], str]) -> str:
        value = figures[tool].get(key)
        return fmt(value) if isinstance(value, float | int) else "-"

    def ratio(tool: str, key: str) -> str:
        mine, theirs = figures.get("realizefs", {}).get(key), figures[tool].get(key)
        if tool == "realizefs" or not mine or not theirs:
            return ""
        return f" ({mine / theirs:.2f}x)"

    seconds, megabytes = (lambda v: f"{v:.2f} s"), (lambda v: f"{v / 1e6:.3f} MB")
    rows = [
        (f"(a) new {result['size_mib']} MiB file", "a_s", seconds),
        (f"(b) {result['files']} files, {result['files_mib']:.0f} MiB", "b_s", seconds),
        ("(c) 4 KiB edit: time", "c_s", seconds),
        ("(c) 4 KiB edit: on the wire", "c_wire", megabytes),
    ]
    header = ["case", *tools]
    lines = [header]
    for label, key, fmt in rows:
        lines.append([label] + [cell(t, key, fmt) + ratio(t, key) for t in tools])
    for side in ("A", "B"):
        lines.append(
            [f"(d) peak RSS during (b), {side}"]
            + [
                "{:.0f} MB ({:.0f} anon)".format(*figures[t]["rss_peak_mb"][side])
                + rss_ratio(figures, t, side)
                if "rss_peak_mb" in figures[t]
                else "-"
                for t in tools
            ]
        )
    lines.append(["B holds A's bytes (a, c, b)"] + [verdicts(figures[t]) for t in tools])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    text.append("")
    text.append("(x): realizefs's figure over that tool's. Wire: bytes sent on lo (TCP/IP headers included,")
    text.append("both directions) from the edit to B holding it, in a network namespace of the bench's own.")
    return "\n".join(text)


def rss_ratio(figures: dict[str, Any], tool: str, side: str) -> str:
    mine = figures.get("realizefs", {}).get("rss_peak_mb", {}).get(side)
    if tool == "realizefs" or not mine:
        return ""
    return f" {mine[0] / figures[tool]['rss_peak_mb'][side][0]:.2f}x"


def verdicts(figures: dict[str, Any]) -> str:
    return ", ".join(
        "ok" if figures.get(k) == "yes" else str(figures.get(k, "-")) for k in ("a_ok", "c_ok", "b_ok")
    )


def in_own_netns() -> None:
    """Re-run this script in a new network namespace (lo only, up) unless already there."""
    if os.environ.get(NETNS_ENV):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    env = {**os.environ, NETNS_ENV: "1"}
    os.execvpe("unshare", ["unshare", "--net", "--", sys.executable, *sys.argv], env)


def ensure_syncthing() -> None:
    if shutil.which("syncthing") is None:
        print("installing the Debian package syncthing", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "syncthing"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="the file of (a) and (c)")
    parser.add_argument("--files", type=int, default=10000, help="the files of (b)")
    parser.add_argument("--tools", default="realizefs,rsync,syncthing")
    parser.add_argument("--seed", type=int, default=1, help="the sizes of (b)")
    parser.add_argument(
        "--py-spy",
        type=Path,
        help="record realizefs's B during (a) and (b) as raw stacks: PATH.a.txt, PATH.b.txt",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: FUSE mounts, dropping caches, a network namespace")
    tools = args.tools.split(",")
    if "syncthing" in tools:
        ensure_syncthing()  # before the namespace: apt needs the network
    in_own_netns()
    work = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    try:
        (work / "source").mkdir()
        src = Source(work / "source", args.size_mib, args.files, args.seed)
        result: dict[str, Any] = {
            "size_mib": args.size_mib,
            "files": args.files,
            "files_mib": src.many_bytes / MIB,
            "cpus": os.cpu_count(),
            "wire": "lo tx bytes in a private network namespace (/proc/net/dev)",
            "tools": {},
        }
        runners: dict[str, Callable[[], dict[str, Any]]] = {
            "realizefs": lambda: run_realizefs(src, work, args.py_spy),
            "rsync": lambda: run_rsync(src, work),
            "syncthing": lambda: run_syncthing(src, work),
        }
        for tool in tools:
            print(f"running {tool}...", file=sys.stderr)
            result["tools"][tool] = runners[tool]()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
