"""systemd's notification protocol (``sd_notify``): datagrams to ``$NOTIFY_SOCKET``.

A few lines of the standard library instead of a dependency. Does nothing
when the daemon was not started by systemd (no ``NOTIFY_SOCKET``). A failure
to notify is logged, never fatal.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``READY=1``, ``STATUS=...``, ``STOPPING=1``...; whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True
