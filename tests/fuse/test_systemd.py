"""realizefs under systemd: the unit file, readiness notification, reload on SIGHUP.

The notification tests play systemd's part: they bind the ``NOTIFY_SOCKET``
datagram socket themselves (a path or an abstract name), start the daemon
with it, and read what it sends, with the sender's credentials, as systemd
does with ``NotifyAccess=main``.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Daemon, toml_string, wait_for

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "realizefs.service"

# Each of these gives the service a mount namespace of its own: the FUSE mount
# would be made inside it and nobody else on the system would see it.
PRIVATE_MOUNT_OPTIONS = (
    "PrivateTmp",
    "ProtectSystem",
    "ProtectHome",
    "PrivateDevices",
    "ReadOnlyPaths",
    "ReadWritePaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "ProtectKernelTunables",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectKernelLogs",
    "ProtectKernelModules",
    "ProtectProc",
    "ProcSubset",
    "TemporaryFileSystem",
    "BindPaths",
    "BindReadOnlyPaths",
    "PrivateMounts",
    "MountAPIVFS",
    "RootDirectory",
    "RootImage",
    "DynamicUser",  # implies ProtectSystem=strict and PrivateTmp
    "PrivateUsers",  # a user namespace: its CAP_SYS_ADMIN cannot mount for the host
)

# ---------------------------------------------------------------- the unit file


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment in a unit file, in order."""
    settings: list[tuple[str, str, str]] = []
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment in {UNIT.name}: {line!r}"
        settings.append((section, key.strip(), value.strip()))
    return settings


def service_setting(key: str) -> str:
    values = [v for section, k, v in unit_settings(UNIT.read_text()) if section == "Service" and k == key]
    assert len(values) == 1, f"{UNIT.name}: expected exactly one {key}= in [Service], found {values}"
    return values[0]


def exec_command(value: str) -> list[str]:
    """An Exec*= line as argv (systemd's prefixes such as ``-`` or ``+`` removed)."""
    return shlex.split(value.lstrip("-@:+!|"))


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd)")
    text = UNIT.read_text()
    argv = exec_command(service_setting("ExecStart"))
    assert argv[0] == "/usr/local/bin/realizefs", argv
    realizefs = Path(sys.executable).parent / "realizefs"
    assert os.access(realizefs, os.X_OK), f"{realizefs} is not installed"
    start_lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(start_lines) == 1
    local = tmp_path / UNIT.name
    local.write_text(text.replace(start_lines[0], start_lines[0].replace(argv[0], str(realizefs), 1)))

    # Documentation=man:... is checked by running man(1), absent from minimal images.
    man = [] if shutil.which("man") else ["--man=no"]
    result = subprocess.run(
        ["systemd-analyze", "verify", *man, str(local)], capture_output=True, text=True, timeout=60
    )
    own = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0, result.stderr
    assert not own, "systemd-analyze verify complains about the unit:\n" + "\n".join(own)


def test_systemd_analyze_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: an unknown key is reported on a line naming the unit."""
    local = tmp_path / UNIT.name
    local.write_text(UNIT.read_text().replace("[Service]", "[Service]\nNoSuchOption=yes", 1))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert any(UNIT.name in line and "NoSuchOption" in line for line in result.stderr.splitlines())


def test_the_unit_notifies_reloads_restarts_and_keeps_the_mount_visible() -> None:
    assert service_setting("Type") == "notify"
    reload = exec_command(service_setting("ExecReload"))
    assert os.path.basename(reload[0]) == "kill", reload
    assert reload[1:] in (["-HUP", "$MAINPID"], ["-s", "HUP", "$MAINPID"], ["-SIGHUP", "$MAINPID"]), reload
    assert service_setting("Restart") == "on-failure"
    present = {key for _, key, _ in unit_settings(UNIT.read_text())}
    hiding = sorted(present.intersection(PRIVATE_MOUNT_OPTIONS))
    assert not hiding, f"{UNIT.name}: {hiding} would hide the FUSE mount in a private mount namespace"


def test_the_units_reload_command_reloads_the_daemon(daemon: Daemon) -> None:
    assert daemon.proc is not None
    value = service_setting("ExecReload").replace("${MAINPID}", "$MAINPID")
    argv = [arg.replace("$MAINPID", str(daemon.proc.pid)) for arg in exec_command(value)]
    subprocess.run(argv, check=True, timeout=10)
    wait_for(lambda: "config reloaded" in daemon.log(), 5, "the daemon to reload its config")


# ---------------------------------------------------------------- readiness


class NotifySocket:
    """systemd's end of ``$NOTIFY_SOCKET``: datagrams with the sender's pid."""

    def __init__(self, address: str, mountpoint: Path) -> None:
        self.address = address  # as given in NOTIFY_SOCKET: a path, or "@name"
        self.mountpoint = mountpoint
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[tuple[int, str]] = []  # (sender pid, line)
        self.mounted: dict[str, bool] = {}  # line -> whether it was mounted when the line arrived

    def close(self) -> None:
        self.sock.close()

    def _receive(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        except TimeoutError:
            return False
        mounted = os.path.ismount(self.mountpoint)  # first thing: the daemon runs on meanwhile
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = struct.unpack("3i", payload[: struct.calcsize("3i")])
        lines = [line for line in data.decode().split("\n") if line]
        self.received += [(pid, line) for line in lines]
        for line in lines:
            self.mounted.setdefault(line, mounted)
        return True

    def expect(self, pattern: str, daemon: Daemon, timeout: float = 10.0) -> tuple[int, str]:
        """Receive until a line matching *pattern* arrives; (sender pid, line). Fails on a deadline."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for pid, line in self.received[seen:]:
                if re.fullmatch(pattern, line):
                    return pid, line
            seen = len(self.received)
            assert daemon.proc is not None
            if daemon.proc.poll() is not None:
                self._receive(0.01)  # what it sent before it exited
                if len(self.received) > seen:
                    continue
                raise AssertionError(
                    f"daemon exited {daemon.proc.returncode} before {pattern!r}:\n{daemon.log()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout}s; received {self.received}")
            self._receive(min(remaining, 0.1))

    def drain(self) -> None:
        while self._receive(0.01):
            pass

    def lines(self) -> list[str]:
        return [line for _, line in self.received]


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, base: Path) -> Iterator[NotifySocket]:
    if request.param == "path":
        address = str(base / "notify.sock")
    else:
        address = f"@realizefs-test-{secrets.token_hex(8)}"
    sock = NotifySocket(address, base / "mnt")
    yield sock
    sock.close()


def test_ready_once_the_mount_answers_then_status_and_stopping(
    base: Path, notify_socket: NotifySocket
) -> None:
    d = Daemon(base)
    d.start(env={"NOTIFY_SOCKET": notify_socket.address}, wait=False)
    try:
        assert d.proc is not None and notify_socket.mountpoint == d.mountpoint
        pid, _ = notify_socket.expect("READY=1", d)
        # at the moment systemd hears READY=1, the mount must already work
        assert notify_socket.mounted["READY=1"], "READY=1 sent before the mount"
        assert os.path.ismount(d.mountpoint)
        listing = os.listdir(d.mountpoint)
        assert ".realize" in listing and "a" in listing, listing
        assert pid == d.proc.pid, "READY=1 must come from the main process (NotifyAccess=main)"
        notify_socket.expect("STATUS=.+", d)
        assert "STOPPING=1" not in notify_socket.lines()

        d.signal(signal.SIGTERM)
        pid, _ = notify_socket.expect("STOPPING=1", d)
        assert pid == d.proc.pid
        assert d.stop() == 0
        notify_socket.drain()
        lines = notify_socket.lines()
        assert lines.count("READY=1") == 1, lines
        assert lines.index("READY=1") < lines.index("STOPPING=1"), lines
    finally:
        d.kill()


def test_an_unreachable_notify_socket_does_not_stop_the_daemon(base: Path) -> None:
    d = Daemon(base)
    d.allowed_log.append("cannot notify systemd")
    d.start(env={"NOTIFY_SOCKET": str(base / "nobody-listens.sock")})
    try:
        (d.mnt() / "f").write_text("still served")
        assert (d.root() / "f").read_text() == "still served"
        assert d.stop() == 0
    finally:
        d.kill()


# ---------------------------------------------------------------- reload


def arena_block(name: str, root: Path) -> str:
    return f'\n[[arena]]\nname = {toml_string(name)}\nroot = {toml_string(str(root))}\nmode = "real"\n'


def reload(daemon: Daemon, config: str) -> None:
    """Reload *config* and wait until the daemon has taken it (or refused it)."""
    done = daemon.log().count("config reloaded") + daemon.log().count("reload refused")
    daemon.config_path.write_text(config)
    daemon.signal(signal.SIGHUP)
    wait_for(
        lambda: daemon.log().count("config reloaded") + daemon.log().count("reload refused") > done,
        what="the reload to finish",
    )


def test_sighup_adds_keeps_and_removes_arenas(daemon: Daemon) -> None:
    daemon.allowed_log.append("reload refused")
    mountpoint = daemon.mountpoint
    original = daemon.config_path.read_text()
    b_root = daemon.base / "real" / "b"
    b_root.mkdir()
    (b_root / "hello").write_text("from b")
    with_b = original + arena_block("b", b_root)

    reload(daemon, with_b)
    wait_for(lambda: "b" in os.listdir(mountpoint), 5, "arena b in the mount root")
    assert (mountpoint / "b" / "hello").read_text() == "from b"
    (b_root / "later").write_text("placed after the reload")
    wait_for(lambda: (mountpoint / "b" / "later").exists(), 5, "a file placed in b's backing dir")
    assert (mountpoint / "b" / "later").read_text() == "placed after the reload"
    (mountpoint / "b" / "through").write_text("written through the mount")
    assert (b_root / "through").read_text() == "written through the mount"

    # a config that is not TOML is refused and the running one kept
    refusals = daemon.log().count("reload refused")
    reload(daemon, with_b + "\n[[arena\nname = \n")
    wait_for(lambda: daemon.log().count("reload refused") > refusals, 5, "the reload to be refused")
    refused = [line for line in daemon.log().splitlines() if "reload refused" in line][-1]
    assert " ERROR " in refused and str(daemon.config_path) in refused, refused
    assert sorted(os.listdir(mountpoint)) == [".realize", "a", "b"]
    assert (mountpoint / "b" / "hello").read_text() == "from b"
    (mountpoint / "b" / "still").write_text("b still serves")
    assert (b_root / "still").read_text() == "b still serves"

    # so is valid TOML with a bad value (an arena whose root does not exist)
    refusals = daemon.log().count("reload refused")
    reload(daemon, with_b + arena_block("c", daemon.base / "real" / "missing"))
    wait_for(lambda: daemon.log().count("reload refused") > refusals, 5, "the reload to be refused")
    assert sorted(os.listdir(mountpoint)) == [".realize", "a", "b"]

    # removing b from the config removes it from the mount, and nothing else
    (daemon.mnt() / "in-a").write_text("a is untouched")
    reload(daemon, original)
    wait_for(lambda: "b" not in os.listdir(mountpoint), 5, "arena b to leave the mount root")
    assert not (mountpoint / "b").exists()  # the kernel forgot it before the reload was done
    assert not (mountpoint / "b" / "hello").exists()
    assert (daemon.mnt() / "in-a").read_text() == "a is untouched"
    assert (b_root / "hello").read_text() == "from b", "the backing directory is left alone"


def test_sighup_moves_an_arena_to_its_new_root(daemon: Daemon) -> None:
    # a new root without the old one's marker is another tree: served, not indexed (docs/design.md)
    daemon.allowed_log.append("NOT INDEXED: the root")
    (daemon.root() / "old").write_text("in the old root")
    assert (daemon.mnt() / "old").read_text() == "in the old root"
    new_root = daemon.base / "new-root"
    new_root.mkdir()
    (new_root / "new").write_text("in the new root")
    config = daemon.config_path.read_text()
    reload(daemon, config.replace(toml_string(str(daemon.root())), toml_string(str(new_root))))
    wait_for(lambda: os.listdir(daemon.mnt()) == ["new"], 5, "the arena to show its new root")
    assert not (daemon.mnt() / "old").exists()
    assert (daemon.mnt() / "new").read_text() == "in the new root"
    (daemon.mnt() / "written").write_text("after the move")
    assert (new_root / "written").read_text() == "after the move"
    assert not (daemon.root() / "written").exists()


def mount_answers(mountpoint: Path) -> list[str] | None:
    """The mount root's listing, from a child that is killed if the daemon does not answer."""
    result = subprocess.run(
        ["timeout", "-s", "KILL", "5", "ls", "-A", str(mountpoint)], capture_output=True, text=True
    )
    return result.stdout.split() if result.returncode == 0 else None


def test_a_reload_naming_an_arena_root_inside_the_mount_is_refused(base: Path) -> None:
    """A root that leads into the mount (here through a symlink) would make the daemon wait on itself."""
    d = Daemon(base)
    d.allowed_log.append("reload refused")
    d.start()
    try:
        (d.mnt() / "sub").mkdir()
        link = base / "into-the-mount"
        link.symlink_to(d.mnt() / "sub")
        reload(d, d.config_path.read_text() + arena_block("b", link))
        try:
            wait_for(lambda: "reload refused" in d.log(), 5, "the reload to be refused")
            refused = True
        except AssertionError:
            refused = False
        assert mount_answers(d.mountpoint) == [".realize", "a"], "the daemon stopped answering:\n" + d.log()
        assert refused, "no 'reload refused' in the log:\n" + d.log()
        assert d.stop() == 0
    finally:
        d.kill()
