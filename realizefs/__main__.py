"""Command line: ``realizefs [--config PATH] [--log-level LEVEL]``; the mount is the interface."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from realizefs import __version__, memory
from realizefs.config import DEFAULT_PATH


def main(argv: list[str] | None = None) -> int:
    from realizefs import daemon, log  # noqa: PLC0415 (after `entry` re-executed: imported once)

    parser = argparse.ArgumentParser(
        prog="realizefs",
        description="Mount the arenas of a realizefs peer and keep them in sync with the household.",
        epilog="Everything else is done through the mount: see its .realize/ directory.",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})"
    )
    parser.add_argument("--log-level", choices=log.LEVELS, default="info", help="default: info")
    parser.add_argument("--version", action="version", version=f"realizefs {__version__}")
    args = parser.parse_args(argv)
    log.setup(args.log_level)
    return daemon.run(args.config)


def entry() -> None:
    """The ``realizefs`` console script."""
    memory.use_system_allocator()
    sys.exit(main())


if __name__ == "__main__":
    entry()
