"""Real daemons finding each other on loopback, as a user sees it in ``.realize/peers``."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

from tests.support import Daemon, reserve_port, wait_for

TIMEOUT = 3.0  # [network] timeout
KEEPALIVE = 0.5
NETWORK = "\n[network]\n" + "".join(
    f'{key} = "{value}"\n'
    for key, value in [
        ("keepalive", f"{KEEPALIVE * 1000:g}ms"),
        ("timeout", f"{TIMEOUT:g}s"),
        ("handshake_timeout", "2s"),
        ("reconnect_max", "1s"),
    ]
)


def peers(d: Daemon) -> dict[str, dict[str, Any]]:
    data = json.loads((d.mountpoint / ".realize" / "peers.json").read_text())
    return {p["name"]: p for p in data["peers"]}


def key(d: Daemon) -> str:
    value: str = json.loads((d.mountpoint / ".realize" / "identity.json").read_text())["key"]
    return value


def connected(d: Daemon, name: str) -> bool:
    return peers(d).get(name, {}).get("state") == "connected"


def freeze_until_dropped(d: Daemon, name: str, freeze: Daemon, timeout: float = 120.0) -> tuple[float, float]:
    """SIGSTOP *freeze* and poll *d*'s status of peer *name* until it is no longer connected.

    Returns two `time.monotonic` instants: one before *d* last read anything from the
    peer, and one after *d* dropped it; their difference bounds from above the silence
    *d* waited for. The first is the start of the poll before the one that saw
    ``bytes_in`` last grow (a message counts in ``bytes_in`` before it is marked
    received): so the peer is stopped only once a first growth has been seen.
    """
    deadline = time.monotonic() + timeout
    previous = time.monotonic()
    bytes_in = peers(d)[name]["bytes_in"]
    received_after: float | None = None
    stopped = False
    while True:
        started = time.monotonic()
        status = peers(d)[name]
        if status["bytes_in"] != bytes_in:
            bytes_in, received_after = status["bytes_in"], previous
            if not stopped:
                freeze.signal(signal.SIGSTOP)
                stopped = True
        if status["state"] != "connected":
            assert stopped, f"{name} dropped before it was stopped: {status}"
            assert received_after is not None
            return received_after, time.monotonic()
        assert started < deadline, f"{name} still connected after {timeout}s"
        previous = started
        time.sleep(0.02)  # a poll's interval, not a condition


def messages_over(d: Daemon, name: str, n: int) -> None:
    """Wait until *d*'s ``bytes_in`` from peer *name* has been seen to grow *n* times."""
    seen: list[int] = [peers(d)[name]["bytes_in"], 0]

    def grown() -> bool:
        now: int = peers(d)[name]["bytes_in"]
        if now != seen[0]:
            seen[:] = [now, seen[1] + 1]
        return seen[1] >= n

    wait_for(grown, 120, f"{n} reads from {name}")


class Pair:
    """Daemons named after their position: a listens, b listens unless deaf, c listens."""

    def __init__(self, bases: list[Path], deaf: bool = False, extra: str = "") -> None:
        # Held until the end: a daemon restarted on its port finds it free.
        self.reservations = [reserve_port() for _ in bases]
        self.ports: list[int] = [r.getsockname()[1] for r in self.reservations]
        self.daemons = [
            Daemon(
                base,
                name=name,
                listen=None if deaf and name == "b" else f"127.0.0.1:{port}",
                extra=NETWORK + extra,
            )
            for base, name, port in zip(bases, "abc"[: len(bases)], self.ports, strict=True)
        ]
        for d in self.daemons:
            d.start()
        self.keys = [key(d) for d in self.daemons]

    def entry(self, i: int, address: bool = True) -> tuple[str, str, str | None]:
        d = self.daemons[i]
        listens = "listen" in d.config_text
        return ("abc"[i], self.keys[i], f"127.0.0.1:{self.ports[i]}" if address and listens else None)

    def configure(self, i: int, *entries: tuple[str, str, str | None]) -> None:
        """Set daemon *i*'s peers and wait until it has reloaded them."""
        d = self.daemons[i]
        d.set_peers(entries)
        d.signal(signal.SIGHUP)
        names = sorted(name for name, _, _ in entries)
        wait_for(lambda: sorted(peers(d)) == names, 10, "the reload")

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()

    def kill(self) -> None:
        for name, d in zip("abc", self.daemons, strict=False):
            d.kill()
            if d.stderr_path.exists():  # shown by pytest when the test failed
                print(f"--- {name}'s log (end):\n{d.log()[-6000:]}")
        for reservation in self.reservations:
            reservation.close()


def test_two_listening_daemons_connect_once(bases: list[Path]) -> None:
    pair = Pair(bases[:2])
    a, b = pair.daemons
    for d in pair.daemons:  # whichever reloads first refuses the other's first dial
        d.allowed_log.append("refused")
    try:
        assert peers(a) == {}
        pair.configure(0, pair.entry(1))
        pair.configure(1, pair.entry(0))  # both dial
        wait_for(lambda: connected(a, "b") and connected(b, "a"), 15, "a and b to connect")
        wait_for(
            lambda: peers(a)["b"]["rtt_ms"] is not None and peers(b)["a"]["rtt_ms"] is not None, 10, "rtt"
        )
        seen_a, seen_b = peers(a)["b"], peers(b)["a"]
        assert {seen_a["direction"], seen_b["direction"]} == {"inbound", "outbound"}
        assert seen_a["key"] == pair.keys[1] and seen_a["address"] == f"127.0.0.1:{pair.ports[1]}"
        assert seen_a["bytes_in"] > 0 and seen_a["bytes_out"] > 0
        assert seen_a["connected_at"] is not None and seen_a["transfers"]["lane_chunks_in"] == 0
        text = (a.mountpoint / ".realize" / "peers").read_text()
        assert "1 configured, 1 connected" in text and "connected (" in text and "rtt " in text
        assert "chunks since it connected" in text and "pending history: -" not in text
        consensus = json.loads((a.mountpoint / ".realize" / "consensus.json").read_text())
        assert consensus["connected_peers"] == 1
        since = seen_a["since"]
        # No flapping: the connection outlives the timeout, counted in b's keepalive traffic
        # (two messages at most per keepalive period: b's ping and b's pong).
        messages_over(a, "b", int(2 * (TIMEOUT + 1) / KEEPALIVE))
        assert peers(a)["b"]["since"] == since and peers(a)["b"]["state"] == "connected"
        pair.stop()
    finally:
        pair.kill()


def test_a_deaf_daemon_is_reachable_over_its_own_connection(bases: list[Path]) -> None:
    pair = Pair(bases[:2], deaf=True)
    a, b = pair.daemons
    try:
        pair.configure(0, pair.entry(1, address=False))
        pair.configure(1, pair.entry(0))
        wait_for(lambda: connected(a, "b") and connected(b, "a"), 15, "the deaf peer to connect")
        # a pings b over the connection b opened: the round trip proves b answers on it.
        wait_for(lambda: peers(a)["b"]["rtt_ms"] is not None, 10, "a round trip from a to the deaf b")
        seen = peers(a)["b"]
        assert seen["address"] is None and seen["direction"] == "inbound"
        assert "deaf" in (a.mountpoint / ".realize" / "peers").read_text()
        pair.stop()
    finally:
        pair.kill()


def test_a_killed_daemon_is_reconnected_after_restart(bases: list[Path]) -> None:
    pair = Pair(bases[:2])
    a, b = pair.daemons
    try:
        pair.configure(1, pair.entry(0, address=False))  # b knows a before a dials it
        pair.configure(0, pair.entry(1))
        wait_for(lambda: connected(a, "b"), 15, "a to connect to b")
        assert b.proc is not None
        b.proc.kill()
        b.proc.wait()
        wait_for(lambda: not connected(a, "b"), 10, "a to notice b is gone")
        b.kill()  # detaches the dead mount
        b.start()
        wait_for(lambda: connected(a, "b") and connected(b, "a"), 15, "a to reconnect to b")
        pair.stop()
    finally:
        pair.kill()


def test_a_frozen_daemon_is_dropped_by_keepalive_and_reconnected(bases: list[Path]) -> None:
    pair = Pair(bases[:2])
    a, b = pair.daemons
    try:
        pair.configure(1, pair.entry(0, address=False))
        pair.configure(0, pair.entry(1))
        wait_for(lambda: connected(a, "b") and connected(b, "a"), 15, "a and b to connect")
        try:  # b's mount is not touched while it is stopped
            received_after, dropped_by = freeze_until_dropped(a, "b", b)
        finally:
            b.signal(signal.SIGCONT)
        # Not before the timeout: measured from a lower bound of when a last read from b.
        assert dropped_by - received_after >= TIMEOUT, (received_after, dropped_by)
        last_error = peers(a)["b"]["last_error"] or ""
        silent = re.fullmatch(r"no answer for (\d+)s \(keepalive timeout\)", last_error)
        assert silent and int(silent[1]) >= TIMEOUT, last_error  # a's own measure of the silence
        wait_for(lambda: connected(a, "b") and connected(b, "a"), 15, "a and b to reconnect")
        pair.stop()
    finally:
        pair.kill()


def test_sighup_adds_and_removes_peers(bases: list[Path]) -> None:
    pair = Pair(bases)
    a, b, c = pair.daemons
    a.allowed_log.append("refused")  # b keeps dialing a once a has removed it
    b.allowed_log.append("refused")
    c.allowed_log.append("refused")  # c dials a before a knows it
    try:
        pair.configure(1, pair.entry(0))
        pair.configure(2, pair.entry(0))
        pair.configure(0, pair.entry(1, address=False))
        wait_for(lambda: connected(a, "b"), 15, "a and b to connect")
        wait_for(lambda: peers(c)["a"]["state"].startswith("refused"), 15, "a to refuse c, unknown yet")
        pair.configure(0, pair.entry(1, address=False), pair.entry(2, address=False))
        wait_for(lambda: connected(a, "c") and connected(c, "a"), 15, "c, added, to connect")
        pair.configure(0, pair.entry(2, address=False))
        wait_for(lambda: "b" not in peers(a) and not connected(b, "a"), 15, "b, removed, to be disconnected")
        wait_for(lambda: peers(b)["a"]["state"].startswith("refused"), 15, "a to refuse b")
        assert "does not accept our key" in peers(b)["a"]["state"]
        assert connected(a, "c")
        assert "refused" in a.log() and pair.keys[1] in a.log()  # the offered key is logged
        pair.stop()
    finally:
        pair.kill()


def test_a_listen_address_in_use_is_a_clear_error(bases: list[Path]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = Daemon(bases[0], listen=f"127.0.0.1:{port}")
        d.start(wait=False)
        assert d.proc is not None
        assert d.proc.wait(timeout=30) == 1
        assert f"node.listen: cannot listen on 127.0.0.1:{port}" in d.log()
        d.kill()
