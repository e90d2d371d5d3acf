"""Framing of the wire: each frame is a 4-byte big-endian length, then that many bytes.

`FrameDecoder` is sans-I/O: bytes are fed in as they arrive, whole frames come
out. A length above the maximum is refused as soon as its 4 bytes are seen,
before anything is allocated for it; an empty frame is refused too (no
message encodes to nothing). Whole frames before a bad length are returned
first, and the error is raised by the next call. Pure: no sockets, no trio.
"""

from __future__ import annotations

import struct

from realizefs.errors import ProtocolError

HEADER = struct.Struct(">I")
MAX_FRAME = 2 << 20  # a chunk (at most 256 KiB) and its envelope fit many times over


def encode_frame(payload: bytes) -> bytes:
    if not 0 < len(payload) <= MAX_FRAME:
        raise ValueError(f"a frame holds 1 to {MAX_FRAME} bytes, not {len(payload)}")
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, frames out; `ProtocolError` on a length it will not accept."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add *data*; the frames it completes, in order."""
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        frames: list[bytes] = []
        start = 0
        with memoryview(buffer) as view:  # slices of it copy once, straight into each frame
            while len(buffer) - start >= HEADER.size:
                (length,) = HEADER.unpack_from(buffer, start)
                if length == 0 or length > self.max_frame:
                    self._error = ProtocolError(f"a frame of {length} bytes (expected 1 to {self.max_frame})")
                    if not frames:
                        raise self._error
                    break  # the frames before it first (a goodbye may say why); the error next call
                end = start + HEADER.size + length
                if len(buffer) < end:
                    break
                frames.append(bytes(view[start + HEADER.size : end]))
                start = end
        del buffer[:start]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buffer)
