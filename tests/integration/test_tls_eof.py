"""A peer closing its TLS stream politely (close_notify) is an end of stream, at once.

Before, `TlsStream.receive_some` took the empty read that follows a close_notify
for "no data yet" and read the closed socket again, for ever, at full CPU,
until the keepalive dropped the connection.
"""

from __future__ import annotations

import trio

from realizefs.peers import tls
from realizefs.peers.transport import Acceptor, Transport, dial
from realizefs.types import Address
from tests.integration.support import new_identity, run_trio


def test_a_polite_close_ends_the_other_side_s_stream() -> None:
    async def test(nursery: trio.Nursery) -> None:
        server_id, client_id = new_identity(), new_identity()
        acceptor = Acceptor(server_id.private_key, frozenset({client_id.public_key}))
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        accepted: list[Transport] = []

        async def serve(tcp: trio.SocketStream) -> None:
            accepted.append(await acceptor.accept(tcp, "client", 10))
            await trio.sleep_forever()

        nursery.start_soon(trio.serve_listeners, serve, listeners)
        context = tls.client_context(client_id.private_key)
        client = await dial(
            Address("127.0.0.1", port), context, client_id.public_key, server_id.public_key, 10
        )
        while not accepted:
            await trio.sleep(0.01)
        await client.stream.send_all(b"last words")
        await client.aclose()  # sends close_notify
        server = accepted[0].stream
        received = b""
        with trio.fail_after(10):  # ends at once; before the fix, never
            while data := await server.receive_some():
                received += data
        assert received == b"last words"

    run_trio(test)
