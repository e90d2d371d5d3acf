"""Test helpers: a real realizefs daemon in a subprocess on temporary directories.

`Daemon` writes a config, starts ``python -m realizefs`` on it, waits until the
mount answers, and on `stop` asserts the daemon exited 0, unmounted, and
logged no unexpected WARNING or ERROR line. `wait_for` polls a condition
with a deadline instead of sleeping. `reserve_port` holds a TCP port for a
listener that may stop and start again. `examples` scales a property test's
count of examples with the hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from hypothesis import settings

T = TypeVar("T")

FUSE_AVAILABLE = os.path.exists("/dev/fuse") and os.geteuid() == 0
NOBODY = 65534
WATCHDOG_SECONDS = 240.0  # below pytest's 300 s timeout
# A deadline only bounds how long a failing test takes: no condition gets less than
# this, so that a busy machine makes tests slower, not failed.
MIN_DEADLINE = 30.0


def wait_for(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll *condition* until it returns something truthy; fail after *timeout* s (at least 30)."""
    timeout = max(timeout, MIN_DEADLINE)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def reserve_port(host: str = "127.0.0.1") -> socket.socket:
    """A socket holding a free TCP port on *host* for the caller's listeners; close it when done.

    Bound with SO_REUSEADDR and never listening, it keeps the port from everyone else on
    the machine: Linux gives it to no bind(0) and uses it as the source port of no
    outgoing connection. Yet a listener that sets SO_REUSEADDR too (trio's do) can bind
    it, and bind it again after a restart. A port merely found free (bound, then
    closed) is taken by whoever comes first while its listener is down.
    """
    reservation = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reservation.bind((host, 0))
    return reservation


def examples(n: int) -> int:
    """*n* hypothesis examples, scaled as the active profile scales its default of 100."""
    return max(1, n * settings().max_examples // 100)


def make_base() -> Path:
    """A fresh directory every local user can traverse (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="realizefs-test-", dir="/tmp"))
    base.chmod(0o755)
    return base


def toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Daemon:
    """One realizefs daemon on its own directories below *base*."""

    def __init__(
        self,
        base: Path,
        arenas: Iterable[tuple[str, str]] = (("a", "real"),),
        extra: str = "",
        name: str = "test",
        listen: str | None = None,
    ) -> None:
        self.base = base
        self.mountpoint = base / "mnt"
        self.data_dir = base / "data"
        self.roots: dict[str, Path] = {}
        lines = [
            "[node]",
            f"name = {toml_string(name)}",
            f"data_dir = {toml_string(str(self.data_dir))}",
            f"mountpoint = {toml_string(str(self.mountpoint))}",
            *([f"listen = {toml_string(listen)}"] if listen else []),
            "",
        ]
        for arena, mode in arenas:
            root = base / "real" / arena.replace("/", "_")
            root.mkdir(parents=True, exist_ok=True)
            root.chmod(0o755)
            self.roots[arena] = root
            lines += [
                "[[arena]]",
                f"name = {toml_string(arena)}",
                f"root = {toml_string(str(root))}",
                f"mode = {toml_string(mode)}",
                "",
            ]
        self.config_path = base / "realizefs.toml"
        self.config_text = "\n".join(lines) + extra
        self.config_path.write_text(self.config_text)
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path = base / "daemon.log"
        self.allowed_log: list[str] = []
        self._watchdog: threading.Timer | None = None

    def set_peers(self, peers: Iterable[tuple[str, str, str | None]]) -> None:
        """Rewrite the config with these ``(name, key, address)`` peers (apply with SIGHUP)."""
        tables = []
        for name, key, address in peers:
            tables.append(f"\n[[peer]]\nname = {toml_string(name)}\nkey = {toml_string(key)}\n")
            if address is not None:
                tables.append(f"address = {toml_string(address)}\n")
        self.config_path.write_text(self.config_text + "".join(tables))

    def root(self, arena: str = "a") -> Path:
        return self.roots[arena]

    def mnt(self, arena: str = "a") -> Path:
        return self.mountpoint / arena

    def start(self, env: dict[str, str] | None = None, wait: bool = True) -> None:
        stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "realizefs", "--config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
        stderr.close()
        # A hung daemon leaves the test blocked in the kernel where no signal reaches it
        # (pytest-timeout included); killing the daemon aborts its requests.
        self._watchdog = threading.Timer(WATCHDOG_SECONDS, self._abort)
        self._watchdog.daemon = True
        self._watchdog.start()
        if wait:
            self.wait_mounted()

    def _abort(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            print(f"watchdog: killing daemon {self.proc.pid} after {WATCHDOG_SECONDS}s", file=sys.stderr)
            self.proc.kill()

    def wait_mounted(self, timeout: float = 20.0) -> None:
        def mounted() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:  # a dead mount left by a killed daemon is a mount too: make it answer
                return ".realize" in os.listdir(self.mountpoint)
            except OSError:
                return False

        wait_for(mounted, timeout, "the mount")

    def log(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, check_log: bool = True) -> int:
        """SIGTERM, wait, and check a clean exit; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            raise AssertionError(f"daemon did not stop on SIGTERM:\n{self.log()}") from None
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
        assert not os.path.ismount(self.mountpoint), "still mounted after the daemon exited"
        if check_log:
            self.check_log()
        return code

    def check_log(self) -> None:
        bad = [
            line
            for line in self.log().splitlines()
            if (" WARNING " in line or " ERROR " in line or "Traceback" in line)
            and not any(allowed in line for allowed in self.allowed_log)
        ]
        assert not bad, "unexpected warnings or errors in the daemon's log:\n" + "\n".join(bad)

    def kill(self) -> None:
        """Cleanup after a failure: no checks, leave no mount behind."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.ismount(self.mountpoint) or _dead_mount(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False, capture_output=True)


def _dead_mount(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == 107  # ENOTCONN
    return False


def cleanup_base(base: Path) -> None:
    shutil.rmtree(base, ignore_errors=True)


def run_as(
    args: list[str], uid: int = NOBODY, gid: int = NOBODY, umask: int = 0o022, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command as another user (no supplementary groups)."""
    return subprocess.run(
        args, user=uid, group=gid, extra_groups=[], umask=umask, capture_output=True, text=True, check=check
    )


def serving(d: Daemon) -> Iterator[Daemon]:
    """Start *d*, hand it over, then stop it and check its exit and log (for fixtures: ``yield from``)."""
    d.start()
    try:
        yield d
        d.stop()
    finally:
        d.kill()


def run_daemon(d: Daemon) -> subprocess.CompletedProcess[str]:
    """Run *d*'s daemon in the foreground to its end (one that refuses to start, say): its outcome."""
    return subprocess.run(
        [sys.executable, "-m", "realizefs", "--config", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
