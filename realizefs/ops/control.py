"""The files of ``.realize/``: what this peer is and what it is doing, and ``consensus``.

Each status file has a human-readable text form and a ``.json`` twin with the
same facts for scripts; ``history`` shows each arena's latest changes.
Contents are rendered for the user who reads them (see
`realizefs.vfs.virtual`), from the `NodeView` the daemon provides.
``history`` shows a reader only the entries whose every path they may see
(`realizefs.vfs.visibility`), and none whose directories on the way had their
mode changed since (their permissions then are not known); ``status`` lists
the paths in conflict (`realizefs.vfs.conflicts`) the reader may see. ``consensus``
accepts the command ``now``; any other text is refused with EINVAL.

Real file and byte counts come from the content index, which keeps them with
every write (one LMDB read, so in the event loop), with the files still waiting
to be hashed and those that could not be read. An arena whose root lacks its
marker (`realizefs.real.marker`) is said to be not indexed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, Protocol

import trio

from realizefs import __version__
from realizefs.config import Config, format_key
from realizefs.errors import InvalidValue
from realizefs.peers.household import PeerStatus
from realizefs.real.indexer import Indexer
from realizefs.real.marker import MARKER
from realizefs.store.cache import CacheStats
from realizefs.store.history import Entry, Version
from realizefs.vfs import conflicts
from realizefs.vfs.namespace import Namespace
from realizefs.vfs.virtual import Command, Reader, VirtualFile
from realizefs.vfs.visibility import Visibility

log = logging.getLogger(__name__)

HISTORY_LINES = 100


class NodeView(Protocol):
    """What the daemon tells the control files about itself."""

    @property
    def config(self) -> Config: ...
    @property
    def public_key(self) -> bytes: ...
    @property
    def schema_version(self) -> int: ...
    @property
    def store_id(self) -> bytes: ...
    @property
    def started(self) -> float: ...  # time.time() at start
    def peer_status(self) -> list[PeerStatus]: ...
    async def peer_lists(self) -> dict[bytes, dict[str, dict[str, Any]]]: ...  # `FileLists.report`
    def cache_stats(self) -> CacheStats: ...
    def consensus_facts(self) -> dict[str, Any]: ...  # the passes: running, last, last full
    def request_consensus(self) -> None: ...  # a full pass at once
    def jobs(self) -> list[dict[str, Any]]: ...  # consensus's transfers: kind, arena, path, total, done, rate


class Control:
    """Builds the `VirtualFile`s of ``.realize/`` for one daemon."""

    def __init__(self, node: NodeView, indexer: Indexer, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.indexer = indexer
        self.clock = clock
        self.namespace: Namespace | None = None  # set once the namespace exists
        self.consensus_requested: float | None = None

    def files(self) -> list[VirtualFile]:
        files = []
        for name, make in (
            ("identity", self.identity),
            ("status", self.status),
            ("peers", self.peers),
            ("history", self.history),
            ("jobs", self.jobs),
        ):
            files.append(VirtualFile(name.encode(), self._text(make)))
            files.append(VirtualFile(f"{name}.json".encode(), self._json(make)))
        command = Command(self.request_consensus, _could_become_now)
        files.append(VirtualFile(b"consensus", self._text(self.consensus), command))
        files.append(VirtualFile(b"consensus.json", self._json(self.consensus)))
        return files

    @staticmethod
    def _text(make: Callable[[Reader], Any]) -> Callable[[Reader], Any]:
        async def render(reader: Reader) -> bytes:
            facts = await make(reader)
            return str(facts.pop("_text")).encode()

        return render

    @staticmethod
    def _json(make: Callable[[Reader], Any]) -> Callable[[Reader], Any]:
        async def render(reader: Reader) -> bytes:
            facts = await make(reader)
            facts.pop("_text")
            return (json.dumps(facts, indent=2, sort_keys=True) + "\n").encode()

        return render

    # ------------------------------------------------------------ identity

    async def identity(self, reader: Reader) -> dict[str, Any]:
        config = self.node.config
        key = format_key(self.node.public_key)
        listen = config.node.listen
        lines = [
            "# Paste into the config of every other peer of the household:",
            "[[peer]]",
            f'name = "{config.node.name}"',
            f'key = "{key}"',
        ]
        if listen is not None:
            lines.append(f'address = "<this machine\'s address>:{listen.port}"')
        return {
            "name": config.node.name,
            "key": key,
            "listen": str(listen) if listen else None,
            "_text": "\n".join(lines) + "\n",
        }

    # ------------------------------------------------------------ status

    async def status(self, reader: Reader) -> dict[str, Any]:
        config = self.node.config
        now = self.clock()
        arenas: list[dict[str, Any]] = []
        for arena in self.namespace.arenas if self.namespace else []:
            counts = self.indexer.counts(arena.name)
            stored = arena.tree.stored_mode(b"")
            real = asdict(counts) | {
                "unreadable": sum(1 for name, _ in self.indexer.stats.unreadable if name == arena.name),
                "scanned": self.indexer.scanned(arena.name),
                "marker_missing": self.indexer.unmarked(arena.name),
                "gone": self.indexer.gone(arena.name),
            }
            visibility = Visibility(arena.backing, reader)
            in_conflict = [p for p in conflicts.conflicted(arena.tree) if visibility.may_see(p)]
            arenas.append(
                {
                    "name": arena.name,
                    "root": str(arena.config.root),
                    "default_mode": arena.config.mode.value,
                    "mode": (stored or arena.config.mode).value,
                    "mode_set_on": "root" if stored is not None else "config",
                    "real": real,
                    "conflicts": [p.decode(errors="replace") for p in in_conflict],
                }
            )
        uptime = now - self.node.started
        lines = [
            f"realizefs {__version__}, node {config.node.name}, up {_duration(uptime)}",
            f"store {self.node.store_id.hex()} in {config.node.data_dir}, schema {self.node.schema_version}",
            f"mounted on {config.node.mountpoint}",
            "",
            f"arenas: {len(arenas)}",
        ]
        for a in arenas:
            real = a["real"]
            where = "set on the arena root" if a["mode_set_on"] == "root" else "config default"
            lines.append(f"  {a['name']}  root {a['root']}  {a['mode']} ({where})")
            directories = _count(real["directories"], "directory", "directories")
            line = (
                f"    real: {_count(real['files'], 'file')}, {_size(real['bytes'])}, "
                f"{directories}, {_count(real['links'], 'symlink')}"
            )
            if real["pending"]:
                line += f"; {_count(real['pending'], 'file')} waiting to be hashed"
            if real["gone"]:
                line += f"; {_count(real['gone'], 'file')} deleted, recorded after a second"
            if real["unreadable"]:
                line += f"; {_count(real['unreadable'], 'file')} that cannot be read"
            if not real["scanned"] and not real["marker_missing"]:
                line += " (still scanning)"
            lines.append(line)
            if real["marker_missing"]:
                lines.append(
                    f"    NOT INDEXED: the root has no {MARKER.decode()} marker: its disk is not mounted, or "
                    "the directory was replaced; the counts are from before. Put it back, then reload "
                    "(SIGHUP) or restart"
                )
            if a["conflicts"]:
                lines.append(
                    f"    in conflict: {_count(len(a['conflicts']), 'path')} (versions kept in "
                    f".realize/conflicts/{a['name']}/; user.realize.versions lists them)"
                )
                lines.extend(f"      {path}" for path in a["conflicts"])
        cache = self.node.cache_stats()
        asked = cache.hits + cache.misses
        hit_rate = cache.hits / asked if asked else None
        lines += [
            "",
            f"cache: {_size(cache.used)} of {_size(cache.max_size)} ({_count(cache.chunks, 'chunk')}), "
            f"keeping {_size(cache.min_free)} of the disk free; since start: "
            f"{cache.hits} hits, {cache.misses} misses"
            + (f" ({hit_rate:.0%} hits)" if hit_rate is not None else "")
            + f", {cache.evictions} evicted"
            + (f", {cache.damaged} found damaged" if cache.damaged else "")
            + (f", {_count(cache.pinned, 'chunk')} kept for open files" if cache.pinned else ""),
        ]
        return {
            "version": __version__,
            "node": config.node.name,
            "uptime_s": round(uptime, 3),
            "cache": asdict(cache) | {"hit_rate": hit_rate},
            "store_id": self.node.store_id.hex(),
            "schema_version": self.node.schema_version,
            "data_dir": str(config.node.data_dir),
            "mountpoint": str(config.node.mountpoint),
            "arenas": arenas,
            "_text": "\n".join(lines) + "\n",
        }

    # ------------------------------------------------------------ peers

    async def peers(self, reader: Reader) -> dict[str, Any]:
        statuses = self.node.peer_status()
        lists = await self.node.peer_lists()
        peers = [_peer_facts(p, lists.get(p.key, {}) if p.state == "connected" else {}) for p in statuses]
        connected = sum(1 for p in statuses if p.state == "connected")
        lines = [f"peers: {len(peers)} configured, {connected} connected"]
        for p in peers:
            state = p["state"] + (f" ({p['direction']})" if p["direction"] else "")
            lines.append(
                f"  {p['name']}  {p['key'][:20]}…  {p['address'] or 'deaf'}  {state} since {p['since']}"
            )
            if p["state"] != "connected":
                last = f"last connected {p['connected_at']}" if p["connected_at"] else "never connected"
                lines.append(f"    {last}" + (f"; last error: {p['last_error']}" if p["last_error"] else ""))
                if p["next_attempt"]:
                    lines.append(f"    next attempt: {p['next_attempt']}")
                continue
            rtt = f"{p['rtt_ms']:.1f} ms" if p["rtt_ms"] is not None else "-"
            lines.append(
                f"    rtt {rtt}; control connections since start: received {_size(p['bytes_in'])}, "
                f"sent {_size(p['bytes_out'])}"
            )
            lines.extend(
                f"    arena {arena}: {_following_line(f)}" for arena, f in sorted(p["lists"].items())
            )
            lines.extend(_transfer_lines(p["transfers"]))
        if connected:
            lines += [
                "",
                "(A peer tells its records by number. What it has that this peer has not taken is not",
                "sent over the wire: its own .realize/peers shows it, as ours not sent yet. A peer",
                "acknowledges what it took after each batch; history it acknowledged may be pruned.)",
            ]
        return {"peers": peers, "_text": "\n".join(lines) + "\n"}

    # ------------------------------------------------------------ history

    async def history(self, reader: Reader) -> dict[str, Any]:
        me = self.indexer.index.me
        arenas = {}
        lines = []
        for arena in self.namespace.arenas if self.namespace else []:
            entries = await trio.to_thread.run_sync(self.indexer.history, arena.name, HISTORY_LINES)
            entries = _visible(entries, Visibility(arena.backing, reader))
            arenas[arena.name] = [_entry_facts(e, me) for e in entries]
            lines.append(f"{arena.name}: {_count(len(entries), 'most recent change')}")
            lines.extend(_entry_line(facts) for facts in arenas[arena.name])
        return {"arenas": arenas, "_text": "\n".join(lines) + "\n"}

    # ------------------------------------------------------------ jobs

    async def jobs(self, reader: Reader) -> dict[str, Any]:
        """Consensus's running and queued transfers, those whose path the reader may see."""
        arenas = {a.name: a for a in self.namespace.arenas} if self.namespace else {}
        jobs = []
        for job in self.node.jobs():
            arena = arenas.get(job["arena"])
            if arena is None or not Visibility(arena.backing, reader).may_see(job["path"]):
                continue
            jobs.append({**job, "path": job["path"].decode(errors="replace")})
        running = [j for j in jobs if j["state"] == "running"]
        lines = [f"jobs: {len(running)} running, {len(jobs) - len(running)} queued"]
        for j in jobs:
            share = j["done"] * 100 // j["total"] if j["total"] else 100
            line = f"  {j['kind']:<24} {share:>3}%  {_size(j['done'])} of {_size(j['total'])}"
            if j["state"] == "running" and j["rate"]:
                line += f"  {_size(int(j['rate']))}/s"
                if j["eta"] is not None:
                    line += f"  ETA {j['eta']:.0f} s"
            lines.append(
                f"{line}  {j['arena']}/{j['path']}" + ("" if j["state"] == "running" else "  (queued)")
            )
        return {"jobs": jobs, "_text": "\n".join(lines) + "\n"}

    # ------------------------------------------------------------ consensus

    async def consensus(self, reader: Reader) -> dict[str, Any]:
        connected = sum(1 for p in self.node.peer_status() if p.state == "connected")
        requested = self.consensus_requested
        facts = {k: self._seen(r, reader) for k, r in self.node.consensus_facts().items()}
        lines = [f"connected peers: {connected}"]
        if requested is not None:
            lines.append(f"last request: {_when(requested)}")
        for key, label in (("running", "running"), ("last", "last pass"), ("last_full", "last full pass")):
            report = facts.get(key)
            if report is not None:
                lines.extend(_pass_lines(label, report))
        lines.append('write "now" to this file to run consensus now')
        return {
            **facts,
            "connected_peers": connected,
            "last_request": requested,
            "_text": "\n".join(lines) + "\n",
        }

    def _seen(self, report: dict[str, Any] | None, reader: Reader) -> dict[str, Any] | None:
        """A pass's report with only the failed and conflict paths the reader may see."""
        if report is None:
            return None
        arenas = {a.name: a for a in self.namespace.arenas} if self.namespace else {}

        def may_see(arena: str, path: str) -> bool:
            known = arenas.get(arena)
            return known is not None and Visibility(known.backing, reader).may_see(path.encode())

        failed = [f for f in report["failed"] if may_see(f[0], f[1])]
        conflicts = [c for c in report["conflicts"] if may_see(c[0], c[1])]
        return {**report, "failed": failed, "conflicts": conflicts}

    def request_consensus(self, line: bytes) -> None:
        if line.strip() != b"now":
            raise InvalidValue('expected "now"')
        self.consensus_requested = self.clock()
        log.info("consensus requested")
        self.node.request_consensus()


def _could_become_now(start: bytes) -> bool:
    """Whether an unterminated line may still become a valid ``now``."""
    word = start.lstrip()
    return b"now".startswith(word) or (word.startswith(b"now") and not word[3:].strip())


def _visible(entries: list[Entry], visibility: Visibility) -> list[Entry]:
    """The *entries* (oldest first, the latest of the arena) whose paths the reader may see.

    Permissions are judged as they are now, which is sound only for directories
    that stayed as they were: an entry is left out when a later entry names a
    directory on the way to one of its paths (its mode changed, or it was
    renamed, removed or made anew: what it was then is not known; later entries
    are all in *entries*).
    """
    if visibility.reader.uid == 0:
        return entries
    shown: list[Entry] = []
    later: set[bytes] = set()  # the paths named by entries after the one at hand
    for e in reversed(entries):
        paths = [e.path] if e.old_path is None else [e.path, e.old_path]
        if all(visibility.may_see(p) and not _passes(p, later) for p in paths):
            shown.append(e)
        later.update(paths)
    shown.reverse()
    return shown


def _passes(path: bytes, dirs: set[bytes]) -> bool:
    """Whether *path* lies inside one of *dirs* (the arena root, ``b""``, included)."""
    parts = path.split(b"/")
    return any(b"/".join(parts[:depth]) in dirs for depth in range(len(parts)))


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _peer_facts(p: PeerStatus, lists: dict[str, dict[str, Any]]) -> dict[str, Any]:
    transfers = None
    if p.transfers is not None:
        transfers = p.transfers.facts() | {"lanes": p.lanes, "lane_in_flight": p.lane_in_flight}
    return {
        "name": p.name,
        "key": format_key(p.key),
        "address": str(p.address) if p.address else None,
        "state": p.state,
        "since": _when(p.since),
        "connected_at": _when(p.connected_at) if p.connected_at is not None else None,
        "direction": p.direction,
        "rtt_ms": round(p.rtt * 1000, 3) if p.rtt is not None else None,
        "bytes_in": p.bytes_in,
        "bytes_out": p.bytes_out,
        "last_error": p.last_error,
        "next_attempt": _when(p.next_attempt) if p.next_attempt else None,
        "lists": lists,  # per arena, `FileLists.report`: what we took of its records, what we sent it
        "transfers": transfers,  # chunks since it connected (`realizefs.peers.transfers`), while it is
    }


def _following_line(f: dict[str, Any]) -> str:
    """One arena's following, both ways, as `FileLists.report` tells it."""
    parts = []
    if (taken := f["taken"]) is not None:
        parts.append(f"took its records up to #{taken['last']} ({taken['records']} since it connected)")
    else:
        parts.append("not following its records (it does not serve this arena to us, or not yet)")
    if (sent := f["sent"]) is not None:
        behind = f"{sent['not_sent']} not sent yet" if sent["not_sent"] else "nothing more to send"
        parts.append(
            f"sent it ours up to #{sent['last']} of #{sent['latest']} ({sent['records']} since it connected, "
            f"after #{sent['acknowledged']} it acknowledged), {behind}"
        )
    else:
        parts.append("it does not follow ours (yet)")
    return "; ".join(parts)


def _transfer_lines(t: dict[str, Any] | None) -> list[str]:
    """The chunks moved since the peer connected, on its bulk lanes and its control connection."""
    if t is None:
        return []

    def moved(prefix: str, way: str) -> str:
        return f"{t[f'{prefix}_chunks_{way}']} ({_size(t[f'{prefix}_bytes_{way}'])})"

    lane = (
        f"bulk lanes ({t['lanes']} open): {t['lane_in_flight']} in flight, "
        f"received {moved('lane', 'in')}, sent {moved('lane', 'out')}"
    )
    control = (
        f"control connection: {t['control_asking']} in flight, "
        f"received {moved('control', 'in')}, sent {moved('control', 'out')}"
    )
    return [f"    chunks since it connected: {lane}", f"      {control}"]


def _version_facts(v: Version | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {
        "hash": v.hash.hex() if v.hash else None,
        "size": v.size,
        "mtime_ns": v.mtime_ns,
        "mode": f"{v.mode:04o}",
        "target": v.target.decode("utf-8", "backslashreplace") if v.target is not None else None,
    }


def _entry_facts(e: Entry, me: bytes) -> dict[str, Any]:
    def show(path: bytes | None) -> str | None:
        return path.decode("utf-8", "backslashreplace") if path is not None else None

    return {
        "seq": e.seq,
        "op": e.op,
        "path": show(e.path),
        "old_path": show(e.old_path),
        "old": _version_facts(e.old),
        "new": _version_facts(e.new),
        "vv": {("this peer" if peer == me else peer.hex()): count for peer, count in e.vv.items()},
        "time": _when(e.time_ns / 1e9),
        "time_ns": e.time_ns,
    }


def _entry_line(f: dict[str, Any]) -> str:
    arrow = "<->" if f["op"] == "exchange" else "->"
    what = f"{f['old_path']} {arrow} {f['path']}" if f["old_path"] else f["path"]
    version = f["new"] or f["old"] or {}
    detail = f"  {_size(version['size'])}" if version.get("size") is not None else ""
    if version.get("hash"):
        detail += f"  {version['hash'][:12]}"
    vv = ", ".join(f"{peer}:{count}" for peer, count in f["vv"].items())
    return f"  #{f['seq']}  {f['time']}  {f['op']:9} {what}{detail}  [{vv}]"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _pass_lines(label: str, report: dict[str, Any]) -> list[str]:
    """A consensus pass's report (`realizefs.sync.consensus.Report`'s fields) as text lines."""
    kind = "full" if report["full"] else "prompt (deletes, moves)"
    applied = ", ".join(f"{n} {what}" for what, n in sorted(report["applied"].items())) or "nothing applied"
    end = f", finished {_when(report['finished'])}" if report["finished"] else ", under way"
    lines = [f"{label}: {kind}, started {_when(report['started'])}{end}: {applied}"]
    if report["placed_bytes"] or report["received_bytes"]:
        lines.append(
            f"  placed {_size(report['placed_bytes'])} of files; received {_size(report['received_bytes'])}"
            " of chunks from peers meanwhile"
        )
    if report["waiting"]:
        lines.append(f"  {report['waiting']} waiting for a full pass or for a local change to settle")
    lines.extend(f"  failed: {arena}/{path}: {why}" for arena, path, why in report["failed"])
    if report.get("retry_in") is not None:
        retry_at = (report["finished"] or report["started"]) + report["retry_in"]
        lines.append(f"  what failed is tried again at {_when(retry_at)}")
    lines.extend(f"  conflict (kept as it is here): {arena}/{path}" for arena, path in report["conflicts"])
    return lines


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
