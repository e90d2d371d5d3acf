"""Log line formats, and systemd's notification datagrams."""

from __future__ import annotations

import io
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from realizefs import log, systemd


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def emit(stream: io.StringIO) -> list[str]:
    logger = logging.getLogger("realizefs.x")
    logger.debug("debug")
    logger.info("info")
    logger.warning("two\nlines")
    logger.error("error")
    return stream.getvalue().splitlines()


@pytest.mark.expect_log(r"^two\nlines$", r"^error$")
def test_journal_lines_carry_priorities_and_no_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    stream = io.StringIO()
    log.setup("debug", stream)
    assert emit(stream) == [
        "<7>realizefs.x: debug",
        "<6>realizefs.x: info",
        "<4>realizefs.x: two\\nlines",
        "<3>realizefs.x: error",
    ]


@pytest.mark.expect_log(r"^two\nlines$", r"^error$")
def test_console_lines_carry_time_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    log.setup("info", stream)
    lines = emit(stream)
    assert len(lines) == 3  # debug filtered out
    assert lines[1].endswith(" WARNING realizefs.x: two\\nlines")
    assert lines[0][:4].isdigit() and " INFO " in lines[0]


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"realizefs-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            sock.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        sock.settimeout(5)
        assert systemd.notify("READY=1", "STATUS=serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"


def test_notify_without_systemd_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


@pytest.mark.expect_log("^cannot notify systemd at ")
def test_notify_to_nowhere_is_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    assert systemd.notify("READY=1") is False
    assert "cannot notify systemd" in caplog.text
    assert os.environ["NOTIFY_SOCKET"]
