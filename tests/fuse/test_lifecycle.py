"""Starting, stopping, crashing and refusing to start."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
from pathlib import Path

import lmdb

from tests.support import Daemon, run_daemon, wait_for


def test_sigint_unmounts_cleanly(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        (d.mnt() / "f").write_text("x")
        d.signal(signal.SIGINT)
        wait_for(lambda: d.proc is not None and d.proc.poll() is not None, 10, "the daemon to exit")
        assert d.stop() == 0
        assert (d.root() / "f").read_text() == "x"
        assert "unmounted" in d.log()
    finally:
        d.kill()


def test_restart_after_sigkill_clears_the_dead_mount(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        (d.mnt() / "f").write_text("kept")
        d.signal(signal.SIGKILL)
        assert d.proc is not None
        d.proc.wait()
        d.allowed_log.append("detached a dead mount")
        d.start()
        assert (d.mnt() / "f").read_text() == "kept"
        assert d.stop() == 0
    finally:
        d.kill()


def test_second_daemon_on_the_same_data_dir_is_refused(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        other = Daemon(base / "other")
        other.config_path.write_text(
            other.config_path.read_text().replace(str(other.data_dir), str(d.data_dir))
        )
        result = run_daemon(other)
        assert result.returncode == 1
        assert "in use by another realizefs" in result.stderr
        assert not os.path.ismount(other.mountpoint)
        (d.mnt() / "still").write_text("works")
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_live_mountpoint_is_refused(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        other = Daemon(base / "other")
        other.config_path.write_text(
            other.config_path.read_text().replace(str(other.mountpoint), str(d.mountpoint))
        )
        result = run_daemon(other)
        assert result.returncode == 1
        assert "already a mount point" in result.stderr
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_newer_schema_is_refused(base: Path) -> None:
    d = Daemon(base)
    d.start()
    d.stop()
    env = lmdb.open(str(d.data_dir / "store"), max_dbs=16)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema_version", struct.pack(">I", 999), db=meta)
    env.close()
    result = run_daemon(d)
    assert result.returncode == 1
    assert "newer realizefs" in result.stderr and "999" in result.stderr
    assert not os.path.ismount(d.mountpoint)


def test_a_key_readable_by_others_is_refused(base: Path) -> None:
    d = Daemon(base)
    d.start()
    d.stop()
    os.chmod(d.data_dir / "identity.key", 0o644)
    result = run_daemon(d)
    assert result.returncode == 1
    assert "identity.key" in result.stderr and "chmod 600" in result.stderr
    assert not os.path.ismount(d.mountpoint)


def test_a_config_mistake_exits_2_before_mounting(base: Path) -> None:
    d = Daemon(base)
    d.config_path.write_text(d.config_path.read_text() + '\n[cache]\nmax_size = "lots"\n')
    result = run_daemon(d)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "cache.max_size" in result.stderr and str(d.config_path) in result.stderr
    assert not os.path.ismount(d.mountpoint)


def test_unmounted_from_outside_the_daemon_stops(base: Path) -> None:
    d = Daemon(base)
    d.start()
    try:
        subprocess.run(["umount", str(d.mountpoint)], check=True)
        assert d.proc is not None
        wait_for(lambda: d.proc is not None and d.proc.poll() is not None, 10, "the daemon to exit")
        d.allowed_log.append("went away")
        assert d.stop() == 0
    finally:
        d.kill()
