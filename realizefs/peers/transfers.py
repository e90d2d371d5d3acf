"""Counts of the chunks one control connection and its bulk lanes moved since it connected.

One `Transfers` per `realizefs.peers.connection.Connection`, shown by
``.realize/peers``. Each field has one writer: the ``lane_*_in`` fields the
fetching lane's thread, the ``lane_*_out`` fields the serving lane's thread
(`realizefs.peers.bulk`), the ``control_*`` fields the trio thread (the
connection's ``chunk`` requests, both ways). Plain int increments, no lock:
under the GIL a reader in the trio thread sees each field whole, perhaps one
chunk behind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(eq=False, slots=True)
class Transfers:
    lane_chunks_in: int = 0  # received and verified on our fetching lane
    lane_bytes_in: int = 0
    lane_chunks_out: int = 0  # sent on our serving lane
    lane_bytes_out: int = 0
    control_chunks_in: int = 0  # received as answers to our ``chunk`` requests on the connection
    control_bytes_in: int = 0
    control_chunks_out: int = 0  # sent as answers to the peer's
    control_bytes_out: int = 0
    control_asking: int = 0  # our ``chunk`` requests on the connection not answered yet

    def facts(self) -> dict[str, int]:
        return asdict(self)
