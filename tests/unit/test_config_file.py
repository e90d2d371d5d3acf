"""The config file: every mistake is one line naming the file and the key."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from realizefs import config
from realizefs.config import Size, parse_address, parse_duration, parse_key, parse_size
from realizefs.errors import ConfigError
from realizefs.types import Address, Mode

KEY = "ed25519:" + base64.b64encode(bytes(range(32))).decode()
KEY2 = "ed25519:" + base64.b64encode(bytes(32)).decode()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    for name in ("photos", "docs"):
        (tmp_path / "real" / name).mkdir(parents=True)
    return tmp_path


def write(home: Path, text: str) -> Path:
    path = home / "realizefs.toml"
    path.write_text(text)
    return path


def good(home: Path, extra: str = "") -> str:
    return f"""
[node]
name = "laptop"
data_dir = "{home}/data"
mountpoint = "{home}/mnt"
listen = "0.0.0.0:7733"

[cache]
max_size = "20G"
min_free = "5%"

[consensus]
interval = "15m"
rest = "30s"

[network]
keepalive = "10s"
timeout = "30s"

[[arena]]
name = "photos"
root = "{home}/real/photos"
mode = "unreal"

[[arena]]
name = "family/docs"
root = "real/docs"

[[peer]]
name = "server"
key = "{KEY}"
address = "server.lan:7733"
{extra}"""


def test_the_documented_example_parses(home: Path) -> None:
    c = config.load(write(home, good(home)))
    assert c.node.name == "laptop"
    assert c.node.data_dir == home / "data" and c.node.mountpoint == home / "mnt"
    assert c.node.listen == Address("0.0.0.0", 7733)
    assert c.cache.max_size == Size(bytes=20 << 30) and c.cache.min_free == Size(percent=5)
    assert (c.consensus.interval, c.consensus.rest) == (900.0, 30.0)
    assert (c.network.keepalive, c.network.timeout, c.network.handshake_timeout) == (10.0, 30.0, 10.0)
    assert [(a.name, a.root, a.mode) for a in c.arenas] == [
        ("photos", home / "real" / "photos", Mode.UNREAL),
        ("family/docs", home / "real" / "docs", Mode.REAL),  # relative to the file; real by default
    ]
    assert c.peers[0].key == bytes(range(32)) and c.peers[0].address == Address("server.lan", 7733)
    assert (home / "data").is_dir() and (home / "mnt").is_dir()
    assert os.stat(home / "data").st_mode & 0o777 == 0o700


def test_defaults(home: Path) -> None:
    c = config.load(write(home, f'[node]\nmountpoint = "{home}/mnt"\ndata_dir = "{home}/d"\n'))
    assert c.node.listen is None and c.arenas == () and c.peers == ()
    assert c.cache.max_size == Size(percent=10) and c.consensus.rest == 30.0
    assert c.consensus.history_bound == 100_000
    assert c.network == config.NetworkConfig(
        keepalive=15.0, timeout=45.0, handshake_timeout=10.0, reconnect_max=60.0
    )


MISTAKES = [
    # (text to append or replace, key named in the message, words expected)
    ("bogus = 1\n", "bogus", "unknown key"),
    ('[[arena]]\nname = "x"\nroot = "real/docs"\ncolour = "red"\n', "arena[3].colour", "unknown key"),
    ('[[peer]]\nname = "p"\nkey = "KEY2"\nport = 1\n', "peer[2].port", "unknown key"),
    ('[[arena]]\nname = 3\nroot = "real/docs"\n', "arena[3].name", "expected"),
    ('[[arena]]\nname = "photos"\nroot = "real/docs"\n', "arena[3].name", "duplicate arena name"),
    ('[[arena]]\nname = "photos/2024"\nroot = "real/docs"\n', "arena[3].name", "overlap"),
    ('[[arena]]\nname = "a//b"\nroot = "real/docs"\n', "arena[3].name", "expected"),
    ('[[arena]]\nname = "../x"\nroot = "real/docs"\n', "arena[3].name", "expected"),
    ('[[arena]]\nname = ".realize"\nroot = "real/docs"\n', "arena[3].name", "reserved"),
    ('[[arena]]\nname = ""\nroot = "real/docs"\n', "arena[3].name", "expected"),
    ('[[arena]]\nname = "x"\nroot = "real/missing"\n', "arena[3].root", "does not exist"),
    ('[[arena]]\nname = "x"\nroot = "realizefs.toml"\n', "arena[3].root", "not a directory"),
    ('[[arena]]\nname = "x"\nroot = "real/photos/sub"\n', "arena[3].root", "overlaps"),
    ('[[arena]]\nname = "x"\n', "arena[3].root", "missing"),
    (
        '[[arena]]\nname = "x"\nroot = "real/docs2"\nmode = "sometimes"\n',
        "arena[3].mode",
        '"real" or "unreal"',
    ),
    ('[[peer]]\nname = "p"\nkey = "ssh-ed25519 AAAA"\n', "peer[2].key", "ed25519:"),
    ('[[peer]]\nname = "p"\nkey = "ed25519:!!!"\n', "peer[2].key", "base64"),
    ('[[peer]]\nname = "p"\nkey = "ed25519:AAAA"\n', "peer[2].key", "3 bytes"),
    ('[[peer]]\nname = "server"\nkey = "KEY2"\n', "peer[2].name", "duplicate peer name"),
    ('[[peer]]\nname = "other"\nkey = "KEY"\n', "peer[2].key", "same key"),
    ('[[peer]]\nname = "laptop"\nkey = "KEY2"\n', "peer[2].name", "own name"),
    ('[[peer]]\nname = "p"\nkey = "KEY2"\naddress = "host:99999"\n', "peer[2].address", "port"),
    ('[[peer]]\nname = "p"\nkey = "KEY2"\naddress = "host"\n', "peer[2].address", "host:port"),
    ('[[peer]]\nkey = "KEY2"\n', "peer[2].name", "missing"),
]


@pytest.mark.parametrize(("extra", "key", "words"), MISTAKES)
def test_each_mistake_names_the_file_and_key(home: Path, extra: str, key: str, words: str) -> None:
    (home / "real" / "docs2").mkdir()
    (home / "real" / "photos" / "sub").mkdir()
    extra = extra.replace("KEY2", KEY2).replace('"KEY"', f'"{KEY}"')
    # a top-level key must come before the tables
    text = extra + good(home) if extra.startswith("bogus") else good(home, extra)
    path = write(home, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}: "), message
    assert words in message, message


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("node", "nmae", '"x"', "unknown key (expected one of: name, data_dir"),
        ("node", "name", "3", "expected a name"),
        ("node", "name", '"has space"', "expected a name"),
        ("node", "listen", '"[::1:7733"', "host:port"),
        ("node", "listen", '"[fffff::1]:7733"', "invalid IPv6"),
        ("cache", "max_size", '"lots"', "a size"),
        ("cache", "max_size", "-5", "negative"),
        ("cache", "min_free", '"150%"', "between 0% and 100%"),
        ("cache", "max_size", "true", "a size"),
        ("consensus", "rest", "30", "with a unit"),
        ("consensus", "rest", '"30 parsecs"', "a duration"),
        ("consensus", "interval", '"0s"', "positive"),
        ("consensus", "interval", "[1]", "a duration"),
        ("consensus", "history_bound", "0", "a positive number of changes"),
        ("consensus", "history_bound", '"100k"', "a whole number of changes"),
        ("consensus", "history_bound", "true", "a whole number of changes"),
        ("network", "keepalive", '"soon"', "a duration"),
        ("network", "timeout", '"5s"', "more than network.keepalive"),
        ("network", "reconnect_max", "60", "with a unit"),
        ("network", "retries", "3", "unknown key"),
    ],
)
def test_bad_values(home: Path, section: str, key: str, value: str, words: str) -> None:
    text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", good(home), count=1, flags=re.M)
    if not found:
        text = text.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n", 1)
    path = write(home, text)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    message = str(info.value)
    assert f": {section}.{key}: " in message and words in message, message
    assert str(path) in message


def test_paths_that_would_loop(home: Path) -> None:
    cases = {
        "node.mountpoint": good(home).replace(
            f'mountpoint = "{home}/mnt"', f'mountpoint = "{home}/real/photos/m"'
        ),
        "arena[1].root": good(home).replace(f'mountpoint = "{home}/mnt"', f'mountpoint = "{home}/real"'),
        "node.data_dir": good(home).replace(f'data_dir = "{home}/data"', f'data_dir = "{home}/real/docs/d"'),
    }
    for key, text in cases.items():
        with pytest.raises(ConfigError) as info:
            config.load(write(home, text))
        assert f": {key}: " in str(info.value), str(info.value)


def test_arena_must_be_tables(home: Path) -> None:
    path = write(home, f'arena = 5\n[node]\nmountpoint = "{home}/mnt"\ndata_dir = "{home}/d"\n')
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value) == f"{path}: arena: expected [[arena]] tables, got a number"


def test_a_data_dir_that_cannot_be_created(home: Path) -> None:
    (home / "file").write_text("x")
    text = good(home).replace(f'data_dir = "{home}/data"', f'data_dir = "{home}/file/data"')
    with pytest.raises(ConfigError) as info:
        config.load(write(home, text))
    assert ": node.data_dir: cannot " in str(info.value) and "Not a directory" in str(info.value)


def test_syntax_errors_and_missing_files(home: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(home, "[node\nname = 1"))
    assert "not valid TOML" in str(info.value) and "line 1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        config.load(home / "absent.toml")
    assert "no such file" in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", Size(bytes=4096)),
        ("512M", Size(bytes=512 << 20)),
        ("1.5T", Size(bytes=3 << 39)),
        ("20GiB", Size(bytes=20 << 30)),
        ("10 k", Size(bytes=10240)),
        ("5%", Size(percent=5.0)),
        ("0.5%", Size(percent=0.5)),
    ],
)
def test_sizes(text: str, size: Size) -> None:
    assert parse_size(text) == size
    assert parse_size(4096) == Size(bytes=4096)
    assert Size(percent=5).resolve(1000) == 50


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("15m", 900.0), ("1h30m", 5400.0), ("500ms", 0.5), ("1d", 86400.0), ("2h 5s", 7205.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_addresses_and_keys() -> None:
    assert parse_address("[::1]:7733") == Address("::1", 7733)
    assert str(Address("::1", 7733)) == "[::1]:7733"
    assert parse_key(config.format_key(bytes(range(32)))) == bytes(range(32))


def test_the_command_line_exits_2_with_one_line(home: Path) -> None:
    path = write(home, good(home) + '\n[cache]\nmax_size = "lots"\n')
    result = subprocess.run(
        [sys.executable, "-m", "realizefs", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and str(path) in result.stderr


def test_version_and_help() -> None:
    version = subprocess.run([sys.executable, "-m", "realizefs", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("realizefs ")
    usage = subprocess.run([sys.executable, "-m", "realizefs", "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "--config" in usage.stdout and "--log-level" in usage.stdout
