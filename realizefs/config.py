"""The configuration file: TOML read with `tomllib`, validated into frozen objects.

Every mistake is reported as one `ConfigError` whose message names the file,
the key and what was expected, before anything is created or mounted (except
that `data_dir` and `mountpoint` are created if missing, and failing to create
them is itself a config error). Relative paths are taken relative to the
directory holding the config file.

Sizes accept ``10G``, ``512M``, ``1.5T``, ``4096`` (bytes; units are binary,
``K`` = 1024) or a percentage of the filesystem, ``5%``. Durations accept
``500ms``, ``30s``, ``15m``, ``2h``, ``1d`` and sums such as ``1h30m``.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from realizefs import mounttable
from realizefs.errors import ConfigError
from realizefs.types import Address, Mode

DEFAULT_PATH = Path("/etc/realizefs.toml")
RESERVED_NAMES = frozenset({".realize"})
KEY_PREFIX = "ed25519:"

T = TypeVar("T")


@dataclass(frozen=True)
class Size:
    """A byte count, or a percentage of the filesystem it applies to."""

    bytes: int | None = None
    percent: float | None = None

    def resolve(self, total: int) -> int:
        """The size in bytes on a filesystem of *total* bytes."""
        if self.percent is not None:
            return int(total * self.percent / 100)
        assert self.bytes is not None
        return self.bytes

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.bytes} bytes"


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: Path
    mountpoint: Path
    listen: Address | None


@dataclass(frozen=True)
class CacheConfig:
    max_size: Size
    min_free: Size


@dataclass(frozen=True)
class ConsensusConfig:
    interval: float
    rest: float
    history_bound: int = 100_000  # records a peer may fall behind before history goes anyway


@dataclass(frozen=True)
class NetworkConfig:
    keepalive: float  # seconds between pings on a connection
    timeout: float  # a peer silent this long is taken for dead
    handshake_timeout: float  # TCP connect, TLS handshake and hellos
    reconnect_max: float  # the cap of the exponential backoff between dials


@dataclass(frozen=True)
class ArenaConfig:
    name: str
    root: Path
    mode: Mode


@dataclass(frozen=True)
class PeerConfig:
    name: str
    key: bytes
    address: Address | None


@dataclass(frozen=True)
class Config:
    path: Path
    node: NodeConfig
    cache: CacheConfig
    consensus: ConsensusConfig
    network: NetworkConfig
    arenas: tuple[ArenaConfig, ...]
    peers: tuple[PeerConfig, ...]


# ---------------------------------------------------------------- value parsers
# Each parser takes the raw TOML value and returns the typed value or raises
# ValueError with "expected ..." text; `_Section` adds file and key names.

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$", re.IGNORECASE)
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PEER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_size(value: object) -> Size:
    expected = 'a size such as "20G", "512M", "4096" or "5%"'
    if isinstance(value, bool):
        raise ValueError(f"expected {expected}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {expected}, got a negative number")
        return Size(bytes=value)
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}, got {_kind(value)}")
    if match := _PERCENT_RE.match(value):
        percent = float(match.group(1))
        if not 0 <= percent <= 100:
            raise ValueError(f"expected a percentage between 0% and 100%, got {value!r}")
        return Size(percent=percent)
    if match := _SIZE_RE.match(value):
        return Size(bytes=int(float(match.group(1)) * _UNITS[match.group(2).upper()]))
    raise ValueError(f"expected {expected}, got {value!r}")


def parse_duration(value: object) -> float:
    expected = 'a duration such as "30s", "15m", "1h30m"'
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected {expected}, got {_kind(value)}")
    if isinstance(value, int | float):
        raise ValueError(f"expected {expected} with a unit, got the bare number {value!r}")
    text = value.replace(" ", "")
    parts = list(_DURATION_PART.finditer(text))
    if not text or "".join(p.group(0) for p in parts) != text:
        raise ValueError(f"expected {expected}, got {value!r}")
    seconds = sum(float(p.group(1)) * _DURATION_UNITS[p.group(2)] for p in parts)
    if seconds <= 0:
        raise ValueError(f"expected a positive duration, got {value!r}")
    return seconds


def parse_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number of changes such as 100000, got {_kind(value)}")
    if value < 1:
        raise ValueError(f"expected a positive number of changes, got {value}")
    return value


def parse_address(value: object) -> Address:
    expected = 'an address "host:port" or "[ipv6]:port"'
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}, got {_kind(value)}")
    if match := re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)", value):
        host, port_text = match.group(1), match.group(2)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected {expected}, got the invalid IPv6 address {host!r}") from None
    elif match := re.fullmatch(r"([A-Za-z0-9.-]+):(\d+)", value):
        host, port_text = match.group(1), match.group(2)
    else:
        raise ValueError(f"expected {expected}, got {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a port between 1 and 65535, got {port}")
    return Address(host, port)


def parse_key(value: object) -> bytes:
    expected = f'"{KEY_PREFIX}<base64 of 32 bytes>" as printed by .realize/identity'
    if not isinstance(value, str) or not value.startswith(KEY_PREFIX):
        raise ValueError(f"expected {expected}, got {_short(value)}")
    try:
        raw = base64.b64decode(value[len(KEY_PREFIX) :], validate=True)
    except ValueError:
        raise ValueError(f"expected {expected}, got invalid base64") from None
    if len(raw) != 32:
        raise ValueError(f"expected {expected}, got {len(raw)} bytes")
    return raw


def format_key(raw: bytes) -> str:
    """The config spelling of a raw Ed25519 public key."""
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_mode(value: object) -> Mode:
    mode = Mode.parse(value) if isinstance(value, str) else None
    if mode is None:
        raise ValueError(f'expected "real" or "unreal", got {_short(value)}')
    return mode


def parse_arena_name(value: object) -> str:
    expected = 'a name such as "photos" or "family/photos"'
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected {expected}, got {_short(value)}")
    for part in value.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"expected {expected} (no empty, '.' or '..' parts), got {value!r}")
        if "\0" in part or len(part.encode()) > 255:
            raise ValueError(f"expected {expected}, got an invalid component {part!r}")
    if value.split("/")[0] in RESERVED_NAMES:
        raise ValueError(f"expected a name not starting with a reserved name, got {value!r}")
    return value


def parse_peer_name(value: object) -> str:
    if not isinstance(value, str) or not _PEER_NAME_RE.match(value):
        raise ValueError(
            f"expected a name of letters, digits, '.', '_' or '-' (at most 64), got {_short(value)}"
        )
    return value


def _kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- sections


class _Section:
    """One table of the file: typed access by key, errors naming file and key."""

    def __init__(self, file: Path, where: str, table: object, known: tuple[str, ...]) -> None:
        self.file = file
        self.where = where
        if not isinstance(table, dict):
            self.fail(None, f"expected a table, got {_kind(table)}")
        self.table: Mapping[str, Any] = table
        for key in table:
            if key not in known:
                self.fail(key, f"unknown key (expected one of: {', '.join(known)})")

    def key_name(self, key: str | None) -> str:
        return self.where if key is None else f"{self.where}.{key}" if self.where else key

    def fail(self, key: str | None, message: str) -> NoReturn:
        raise ConfigError(f"{self.file}: {self.key_name(key)}: {message}")

    def get(self, key: str, parse: Callable[[object], T], default: T | None = None) -> T:
        if key not in self.table:
            if default is None:
                self.fail(key, "missing (required)")
            assert default is not None
            return default
        try:
            return parse(self.table[key])
        except ValueError as exc:
            self.fail(key, str(exc))

    def optional(self, key: str, parse: Callable[[object], T]) -> T | None:
        return self.get(key, parse) if key in self.table else None

    def path(self, key: str, default: str | None = None) -> Path:
        def parse(value: object) -> Path:
            if not isinstance(value, str) or not value or "\0" in value:
                raise ValueError(f"expected a path, got {_short(value)}")
            return self.file.parent / Path(value).expanduser()

        return Path(os.path.abspath(self.get(key, parse, None if default is None else parse(default))))


def _string(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {_short(value)}")
    return value


def _list_of_tables(file: Path, top: Mapping[str, Any], key: str) -> list[object]:
    value = top.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{file}: {key}: expected [[{key}]] tables, got {_kind(value)}")
    return value


# ---------------------------------------------------------------- whole file


def load(path: Path) -> Config:
    """Read, parse and validate the config at *path*; create data_dir and mountpoint."""
    path = Path(os.path.abspath(path))
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (pass --config PATH)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse(path, raw)
    check_filesystem(config)
    return config


def parse(path: Path, raw: Mapping[str, Any]) -> Config:
    """Validate the TOML document *raw*; pure apart from path normalisation."""
    top = _Section(path, "", raw, ("node", "cache", "consensus", "network", "arena", "peer"))
    node_t = _Section(path, "node", raw.get("node", {}), ("name", "data_dir", "mountpoint", "listen"))
    node = NodeConfig(
        name=node_t.get("name", parse_peer_name, socket.gethostname().split(".")[0] or "realize"),
        data_dir=node_t.path("data_dir", "/var/lib/realizefs"),
        mountpoint=node_t.path("mountpoint"),
        listen=node_t.optional("listen", parse_address),
    )
    cache_t = _Section(path, "cache", raw.get("cache", {}), ("max_size", "min_free"))
    cache = CacheConfig(
        max_size=cache_t.get("max_size", parse_size, Size(percent=10)),
        min_free=cache_t.get("min_free", parse_size, Size(percent=5)),
    )
    cons_t = _Section(path, "consensus", raw.get("consensus", {}), ("interval", "rest", "history_bound"))
    consensus = ConsensusConfig(
        interval=cons_t.get("interval", parse_duration, 15 * 60.0),
        rest=cons_t.get("rest", parse_duration, 30.0),
        history_bound=cons_t.get("history_bound", parse_count, 100_000),
    )
    net_t = _Section(
        path,
        "network",
        raw.get("network", {}),
        ("keepalive", "timeout", "handshake_timeout", "reconnect_max"),
    )
    network = NetworkConfig(
        keepalive=net_t.get("keepalive", parse_duration, 15.0),
        timeout=net_t.get("timeout", parse_duration, 45.0),
        handshake_timeout=net_t.get("handshake_timeout", parse_duration, 10.0),
        reconnect_max=net_t.get("reconnect_max", parse_duration, 60.0),
    )
    if network.timeout <= network.keepalive:
        net_t.fail("timeout", f"expected more than network.keepalive ({network.keepalive:g}s)")
    arenas = tuple(_arena(path, i, t) for i, t in enumerate(_list_of_tables(path, raw, "arena")))
    peers = tuple(_peer(path, i, t) for i, t in enumerate(_list_of_tables(path, raw, "peer")))
    config = Config(path, node, cache, consensus, network, arenas, peers)
    _check_arenas(top, config)
    _check_peers(top, config)
    return config


def _arena(path: Path, index: int, table: object) -> ArenaConfig:
    section = _Section(path, f"arena[{index + 1}]", table, ("name", "root", "mode"))
    return ArenaConfig(
        name=section.get("name", parse_arena_name),
        root=section.path("root"),
        mode=section.get("mode", parse_mode, Mode.REAL),
    )


def _peer(path: Path, index: int, table: object) -> PeerConfig:
    section = _Section(path, f"peer[{index + 1}]", table, ("name", "key", "address"))
    return PeerConfig(
        name=section.get("name", parse_peer_name),
        key=section.get("key", parse_key),
        address=section.optional("address", parse_address),
    )


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_arenas(top: _Section, config: Config) -> None:
    names: dict[str, int] = {}
    for i, arena in enumerate(config.arenas, 1):
        key = f"arena[{i}].name"
        if arena.name in names:
            top.fail(key, f"duplicate arena name {arena.name!r} (also arena[{names[arena.name]}])")
        for other, j in names.items():
            a, b = sorted((arena.name, other), key=len)
            if b.startswith(a + "/"):
                top.fail(
                    key,
                    f"arena {arena.name!r} and arena[{j}] {other!r} overlap: "
                    f"{a!r} would be a directory holding {b!r}",
                )
        names[arena.name] = i
    node = config.node
    for i, arena in enumerate(config.arenas, 1):
        key = f"arena[{i}].root"
        for j, earlier in enumerate(config.arenas[: i - 1], 1):
            if _inside(arena.root, earlier.root) or _inside(earlier.root, arena.root):
                top.fail(key, f"{arena.root} overlaps arena[{j}].root {earlier.root}")
        if _inside(node.mountpoint, arena.root):
            top.fail("node.mountpoint", f"{node.mountpoint} is inside arena[{i}].root {arena.root}")
        if _inside(arena.root, node.mountpoint):
            top.fail(key, f"{arena.root} is inside node.mountpoint {node.mountpoint}")
        if _inside(node.data_dir, arena.root):
            top.fail("node.data_dir", f"{node.data_dir} is inside arena[{i}].root {arena.root}")
    if _inside(node.data_dir, node.mountpoint) or _inside(node.mountpoint, node.data_dir):
        top.fail("node.data_dir", f"{node.data_dir} and node.mountpoint overlap")


def _check_peers(top: _Section, config: Config) -> None:
    names: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for i, peer in enumerate(config.peers, 1):
        if peer.name == config.node.name:
            top.fail(f"peer[{i}].name", f"{peer.name!r} is this node's own name (node.name)")
        if peer.name in names:
            top.fail(
                f"peer[{i}].name",
                f"duplicate peer name {peer.name!r} (also peer[{names[peer.name]}])",
            )
        if peer.key in keys:
            top.fail(f"peer[{i}].key", f"the same key as peer[{keys[peer.key]}]")
        names[peer.name] = i
        keys[peer.key] = i


def check_filesystem(config: Config) -> None:
    """Check what the config names on disk; create data_dir and mountpoint if missing."""
    file = config.path
    for i, arena in enumerate(config.arenas, 1):
        if not arena.root.exists():
            raise ConfigError(f"{file}: arena[{i}].root: {arena.root} does not exist (expected a directory)")
        if not arena.root.is_dir():
            raise ConfigError(f"{file}: arena[{i}].root: {arena.root} is not a directory")
    _check_resolved(config)
    for key, directory, mode in (
        ("node.data_dir", config.node.data_dir, 0o700),
        ("node.mountpoint", config.node.mountpoint, 0o755),
    ):
        if key == "node.mountpoint" and mounttable.is_mount_point(directory):
            continue  # mounted: the daemon checks it from the mount table, without waiting on it
        try:
            if not stat.S_ISDIR(os.stat(directory).st_mode):
                raise ConfigError(f"{file}: {key}: {directory} exists and is not a directory")
            continue
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno == errno.ENOTCONN and key == "node.mountpoint":
                continue  # a dead FUSE mount left by a crash: the daemon clears it
            raise ConfigError(f"{file}: {key}: cannot use {directory}: {exc.strerror}") from None
        try:
            directory.mkdir(mode=mode, parents=True)
        except OSError as exc:
            raise ConfigError(f"{file}: {key}: cannot create {directory}: {exc.strerror}") from None


def _check_resolved(config: Config) -> None:
    """The overlap checks of `parse` again, with symlinks resolved.

    A root that is a symlink into the mountpoint would make the daemon serve
    its own mount, and wait on itself.
    """
    file = config.path
    mountpoint = mounttable.canonical(config.node.mountpoint)  # a stopped daemon's mount: never touched
    data_dir = Path(os.path.realpath(config.node.data_dir))
    roots: list[Path] = []
    for i, arena in enumerate(config.arenas, 1):
        root = Path(os.path.realpath(arena.root))
        key = f"{file}: arena[{i}].root: {arena.root} (resolved: {root})"
        if _inside(root, mountpoint) or _inside(mountpoint, root):
            raise ConfigError(f"{key} overlaps node.mountpoint {mountpoint}")
        if _inside(data_dir, root):
            raise ConfigError(f"{key} holds node.data_dir {data_dir}")
        for j, other in enumerate(roots, 1):
            if _inside(root, other) or _inside(other, root):
                raise ConfigError(f"{key} overlaps arena[{j}].root")
        roots.append(root)
