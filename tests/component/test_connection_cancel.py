"""A request cancelled before it was sent must not be cancelled at the peer (found by breaking the Unreal).

A chunk fetch cancelled while its request waits for the connection's send lock
(another message being written) was followed by a `Cancel` for an id the peer
never saw: the peer took it for a protocol violation ("a message about request
N, which was never made") and closed the connection, failing every other
transfer on it. Seen through two mounts reading an Unreal file being rewritten
on its peer (reads failing with EIO cancel the chunk requests still queued).

Here the peer is driven by hand over a lockstep stream (a send waits until the
other side reads), so the connection's first ping holds the send lock while a
request is queued behind it and cancelled.
"""

from __future__ import annotations

import trio
import trio.testing

from realizefs.peers.connection import Connection, Timing
from realizefs.peers.messages import Cancel, Hello, Message, Ping, Pong, Request
from realizefs.peers.methods import Methods
from realizefs.peers.transport import Transport

TIMING = Timing(keepalive=10.0, timeout=30.0, hello_timeout=5.0)
HELLO = Hello("them", b"\x01" * 16, ("a",))


def test_a_request_cancelled_before_it_was_sent_is_not_cancelled_at_the_peer() -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()
    conn = Connection(
        Transport(ours, b"k" * 32, "test", dialed=False),
        "them",
        Hello("us", b"\x02" * 16, ()),
        Methods(),
        TIMING,
    )
    peer = Transport(theirs, b"u" * 32, "test", dialed=True)
    received: list[Message] = []

    async def main() -> None:
        with trio.fail_after(600):  # virtual seconds
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.open)
                assert isinstance(await peer.receive(), Hello)
                await peer.send(HELLO)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(conn.run)
                await trio.testing.wait_all_tasks_blocked()  # the first ping waits for us to read
                asking = trio.CancelScope()
                nursery.start_soon(_ask, conn, asking)
                await trio.testing.wait_all_tasks_blocked()  # queued behind the ping
                asking.cancel()
                await trio.testing.wait_all_tasks_blocked()
                with trio.move_on_after(5):
                    while True:
                        message = await peer.receive()
                        received.append(message)
                        if isinstance(message, Ping):
                            await peer.send(Pong(message.token))
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    requested = {m.id for m in received if isinstance(m, Request)}
    cancelled = {m.id for m in received if isinstance(m, Cancel)}
    assert cancelled <= requested, received


async def _ask(conn: Connection, scope: trio.CancelScope) -> None:
    with scope:
        await conn.request("echo", "never sent")
