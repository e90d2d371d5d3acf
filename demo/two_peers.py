"""`make demo`: two peers on this machine, sharing one arena, to try the Unreal by hand.

Makes /tmp/realizefs-demo2/{laptop,desktop}/ (each a data_dir, a Real
directory and a mountpoint), creates both identity keys and writes each
peer's config with the other as its peer (loopback, two free ports), starts
both daemons, puts a few files in the laptop's arena, and prints what to try
on the desktop's mount. Ctrl-C stops both daemons, which unmount cleanly.
Run as root (FUSE mounts).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from realizefs.config import format_key
from realizefs.peers.identity import load_or_create

BASE = Path("/tmp/realizefs-demo2")
PEERS = ("laptop", "desktop")
MODES = {"laptop": "real", "desktop": "unreal"}  # the desktop keeps nothing local by default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(name: str, port: int, other: str, other_key: str, other_port: int) -> str:
    home = BASE / name
    return f"""[node]
name = "{name}"
data_dir = "{home / "data"}"
mountpoint = "{home / "mnt"}"
listen = "127.0.0.1:{port}"

[consensus]
rest = "5s"

[network]
keepalive = "5s"
timeout = "15s"

[[arena]]
name = "shared"
root = "{home / "real"}"
mode = "{MODES[name]}"

[[peer]]
name = "{other}"
key = "{other_key}"
address = "127.0.0.1:{other_port}"
"""


def mounted(path: Path) -> bool:
    return any(line.split()[1] == str(path) for line in Path("/proc/mounts").read_text().splitlines())


def alive(path: Path) -> bool:
    """Whether the mount at *path* is answered by a running daemon (not left dead by a crash)."""
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a plain kill, a closed terminal) stops both peers too


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it mounts two FUSE filesystems)", file=sys.stderr)
        return 1
    for name in PEERS:
        mnt = BASE / name / "mnt"
        if mounted(mnt) and alive(mnt):
            print(f"a demo is running already ({mnt} is mounted): stop it first", file=sys.stderr)
            return 1
        if mounted(mnt):  # left dead by a crash
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    signal.signal(signal.SIGTERM, stop)
    shutil.rmtree(BASE, ignore_errors=True)
    keys, ports = {}, {}
    for name in PEERS:
        for sub in ("data", "real", "mnt"):
            (BASE / name / sub).mkdir(parents=True)
        (BASE / name / "data").chmod(0o700)
        keys[name] = format_key(load_or_create(BASE / name / "data").public_key)
        ports[name] = free_port()
    daemons = {}
    for name, other in zip(PEERS, reversed(PEERS), strict=True):
        path = BASE / name / "realizefs.toml"
        path.write_text(config(name, ports[name], other, keys[other], ports[other]))
        log = open(BASE / name / "daemon.log", "ab")  # noqa: SIM115 (the daemon's for its life)
        daemons[name] = subprocess.Popen(
            [sys.executable, "-m", "realizefs", "--config", str(path)], stdout=log, stderr=log
        )
    try:
        laptop, desktop = (BASE / name / "mnt" / "shared" for name in PEERS)
        deadline = time.monotonic() + 30
        while not (laptop.is_dir() and desktop.is_dir()):
            if time.monotonic() > deadline or any(d.poll() is not None for d in daemons.values()):
                print(f"a daemon did not start: see {BASE}/*/daemon.log", file=sys.stderr)
                return 1
            time.sleep(0.1)
        (laptop / "notes").mkdir()
        (laptop / "notes" / "todo.txt").write_text("water the plants\ncall the plumber\n")
        (laptop / "README").write_text("Written on the laptop; read on the desktop on demand.\n")
        with open(laptop / "photo.raw", "wb") as f:
            f.write(os.urandom(20 << 20))
        wanted = {"README", "notes", "photo.raw"}
        while not wanted <= set(os.listdir(desktop)):  # listed there within about a second
            if time.monotonic() > deadline + 30:  # the mounts came up by *deadline*
                print("the desktop did not list the laptop's files: see the logs", file=sys.stderr)
                return 1
            time.sleep(0.1)
        print(
            f"""
Two peers are running on this machine, each with the arena "shared":
  laptop   {laptop}   (keeps everything Real)
  desktop  {desktop}   (mode unreal: lists everything, fetches on demand)
Logs: {BASE}/laptop/daemon.log, {BASE}/desktop/daemon.log

The laptop just wrote three files. From another shell, try on the desktop:
  cd {desktop}
  ls -lR                                        # the laptop's files, with their sizes and times
  du -sh .                                      # a few KiB: their content is not on the desktop's disk
  cat README notes/todo.txt                     # fetched from the laptop as you read
  getfattr -n user.realize.status photo.raw     # unreal 0% cached
  head -c 5000000 photo.raw > /dev/null; getfattr -n user.realize.status photo.raw
  cat ../.realize/peers                         # the laptop: connected, round trip, bytes
  echo more >> notes/todo.txt                   # writing makes it Real here first
  getfattr -n user.realize.status notes/todo.txt   # real
  echo new > {laptop}/later.txt; ls             # listed here about a second later
  mv {laptop}/README {laptop}/README.txt; ls    # renames follow; so do deletes
  cp /etc/hostname .                            # listed on the laptop too, as Unreal there

Changes made on the desktop to files the laptop holds (edits, renames,
deletes) are listed on the laptop but not yet applied to its Real files:
that is consensus, the next step of realizefs.

Ctrl-C stops both peers and unmounts them.
"""
        )
        while all(d.poll() is None for d in daemons.values()):
            time.sleep(0.5)
        print(f"a daemon stopped: see {BASE}/*/daemon.log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave them running
        for d in daemons.values():
            if d.poll() is None:
                d.send_signal(signal.SIGTERM)
        for d in daemons.values():
            try:
                d.wait(30)
            except subprocess.TimeoutExpired:
                d.kill()
        print("stopped; the directories stay in", BASE)


if __name__ == "__main__":
    sys.exit(main())
