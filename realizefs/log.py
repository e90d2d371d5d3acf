"""Logging setup: one line per event on stderr, journald-friendly under systemd.

When ``JOURNAL_STREAM`` is set (systemd connected stderr to the journal) lines
carry a ``<N>`` syslog priority prefix and no timestamp, since the journal adds
its own. Otherwise lines carry a local timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

LEVELS = ("debug", "info", "warning", "error")

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``, one line (newlines in the message are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        return f"<{priority}>{_one_line(super().format(record))}"


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _one_line(super().format(record))


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n")


def setup(level: str = "info", stream: TextIO | None = None) -> None:
    """Route the ``realizefs`` loggers to *stream* (stderr) at *level*."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter: logging.Formatter
    if os.environ.get("JOURNAL_STREAM"):
        formatter = JournalFormatter("%(name)s: %(message)s")
    else:
        formatter = ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # trio and pyfuse3 are chatty at DEBUG; keep them at INFO unless asked.
    for noisy in ("pyfuse3",):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))
