"""The methods a peer serves, each declared with the schema of its arguments.

A `Method` names a method and its arguments' `Schema` (`realizefs.peers.schema`);
both sides can share the declaration. The layer above pairs each method it
serves with the function serving it (`Served`), and hands a `Methods` table to
the household as its `Handler`. For each request, `Methods.handle`:

- answers ``unknown-method`` if the table has no such method;
- checks the arguments against the method's schema, and answers
  ``bad-arguments`` (``bad arguments: args.offset: expected ...``) without
  calling the function if they do not fit;
- otherwise calls the function with the peer, the typed arguments and the
  reply (for streaming).

Either error is an answer to that one request: the connection stays up.
(A malformed *frame* is a protocol error and closes the connection: see
`realizefs.peers.connection`.) Runs in the connection's request task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from realizefs.errors import RemoteError
from realizefs.peers.connection import PeerInfo, Reply
from realizefs.peers.messages import MAX_NAME, Request, Value
from realizefs.peers.schema import BadArguments, Schema

log = logging.getLogger(__name__)

A = TypeVar("A")


@dataclass(frozen=True)
class Method(Generic[A]):
    """A method of the protocol: its name and the schema of its arguments."""

    name: str
    args: Schema[A]

    def __post_init__(self) -> None:
        if not 0 < len(self.name) <= MAX_NAME:
            raise ValueError(f"a method name has 1 to {MAX_NAME} characters: {self.name!r}")


@dataclass(frozen=True)
class Served(Generic[A]):
    """A method and the function that serves it: ``serve(peer, args, reply) -> answer``."""

    method: Method[A]
    serve: Callable[[PeerInfo, A, Reply], Awaitable[Value]]


class Methods:
    """A `Handler` serving the methods *served*, each after checking its arguments."""

    def __init__(self, *served: Served[Any]) -> None:
        self._served: dict[str, Served[Any]] = {}
        for entry in served:
            if entry.method.name in self._served:
                raise ValueError(f"method {entry.method.name!r} is served twice")
            self._served[entry.method.name] = entry

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._served)

    async def handle(self, peer: PeerInfo, request: Request, reply: Reply) -> Value:
        entry = self._served.get(request.method)
        if entry is None:
            raise RemoteError("unknown-method", f"this peer does not serve {request.method!r}")
        try:
            args = entry.method.args.check(request.args)
        except BadArguments as exc:
            log.info("peer %s: %r with bad arguments: %s", peer.name, request.method, exc)
            raise RemoteError("bad-arguments", f"bad arguments: {exc}") from None
        return await entry.serve(peer, args, reply)
