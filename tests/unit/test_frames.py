"""The wire's framing (realizefs.peers.frames): exact bytes out, whole frames back however the bytes arrive.

A frame is a 4-byte big-endian length and that many bytes. The decoder is fed
the stream in every way it can be split: all at once, byte by byte, at every
single cut, and at random cuts (hypothesis). A length it will not take is
refused from its 4 header bytes alone, before any payload is sent.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realizefs.errors import ProtocolError
from realizefs.peers.frames import MAX_FRAME, FrameDecoder, encode_frame
from tests.support import examples

# ---------------------------------------------------------------- encoding

# (payload, the exact frame as hex)
VECTORS: list[tuple[bytes, str]] = [
    (b"\x00", "00000001" + "00"),
    (b"abc", "00000003" + "616263"),
    (b"\xff" * 5, "00000005" + "ff" * 5),
    (bytes(range(256)), "00000100" + bytes(range(256)).hex()),
    (b"z" * 0x10203, "00010203" + "7a" * 0x10203),
]


@pytest.mark.parametrize(("payload", "frame"), VECTORS, ids=[f"{len(p)} bytes" for p, _ in VECTORS])
def test_known_answer_frames(payload: bytes, frame: str) -> None:
    assert encode_frame(payload).hex() == frame
    assert FrameDecoder().feed(bytes.fromhex(frame)) == [payload]


def test_the_largest_frame_has_the_largest_header() -> None:
    frame = encode_frame(b"m" * MAX_FRAME)
    assert MAX_FRAME == 2 * 1024 * 1024
    assert frame[:4].hex() == "00200000" and len(frame) == 4 + MAX_FRAME
    assert FrameDecoder().feed(frame) == [b"m" * MAX_FRAME]


@pytest.mark.parametrize("size", [0, MAX_FRAME + 1, MAX_FRAME + 4096])
def test_encode_frame_refuses_sizes_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match=f"a frame holds 1 to {MAX_FRAME} bytes, not {size}"):
        encode_frame(b"x" * size)


@pytest.mark.parametrize("size", [1, MAX_FRAME])
def test_encode_frame_accepts_the_bounds(size: int) -> None:
    assert len(encode_frame(b"x" * size)) == 4 + size


# ---------------------------------------------------------------- decoding, however split

PAYLOADS = [b"hello", b"\x00", b"\x00\x00\x00\x00", bytes(range(200)), b"w" * 1000, b"!"]
STREAM = b"".join(encode_frame(p) for p in PAYLOADS)


def feed_pieces(decoder: FrameDecoder, pieces: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for piece in pieces:
        out += decoder.feed(piece)
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


SPLITS: dict[str, list[bytes]] = {
    "all at once": [STREAM],
    "byte by byte": [STREAM[i : i + 1] for i in range(len(STREAM))],
    "three bytes at a time": [STREAM[i : i + 3] for i in range(0, len(STREAM), 3)],
    "with empty feeds between": [
        piece for i in range(0, len(STREAM), 7) for piece in (b"", STREAM[i : i + 7])
    ],
    "header apart from payload": [part for p in PAYLOADS for part in (encode_frame(p)[:4], p)],
}


@pytest.mark.parametrize("pieces", SPLITS.values(), ids=SPLITS.keys())
def test_frames_come_out_whole_and_in_order(pieces: list[bytes]) -> None:
    assert b"".join(pieces) == STREAM
    decoder = FrameDecoder()
    out = feed_pieces(decoder, pieces)
    assert out == PAYLOADS and decoder.pending == 0
    assert all(type(frame) is bytes for frame in out)


def test_every_single_cut() -> None:
    for cut in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(STREAM[:cut])
        assert first == PAYLOADS[: len(first)], cut  # a prefix of the frames, never part of one
        assert first + decoder.feed(STREAM[cut:]) == PAYLOADS, cut
        assert decoder.pending == 0


def test_a_frame_is_released_only_by_its_last_byte() -> None:
    frame = encode_frame(b"payload")
    decoder = FrameDecoder()
    for i, byte in enumerate(frame[:-1]):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.pending == i + 1
    assert decoder.feed(frame[-1:]) == [b"payload"] and decoder.pending == 0


@settings(max_examples=examples(200))
@given(
    st.lists(st.binary(min_size=1, max_size=600), max_size=10),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_random_splits(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    pieces = split(stream, [c % (len(stream) + 1) for c in cuts])
    decoder = FrameDecoder()
    assert feed_pieces(decoder, pieces) == payloads
    assert decoder.pending == 0


@settings(max_examples=examples(200))
@given(st.binary(min_size=1, max_size=300), st.binary(min_size=1, max_size=300), st.integers(0, 10_000))
def test_a_partial_frame_stays_pending(whole: bytes, partial: bytes, cut: int) -> None:
    tail = encode_frame(partial)
    kept = cut % len(tail)  # 0 to len-1 bytes of the second frame
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(whole) + tail[:kept]) == [whole]
    assert decoder.pending == kept
    assert decoder.feed(tail[kept:]) == [partial] and decoder.pending == 0


# ---------------------------------------------------------------- lengths refused


@pytest.mark.parametrize(
    ("header", "length"),
    [
        ("00200001", MAX_FRAME + 1),
        ("00300000", 3 << 20),
        ("7fffffff", 2**31 - 1),
        ("ffffffff", 2**32 - 1),
    ],
)
def test_an_oversize_length_is_refused_from_its_header_alone(header: str, length: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=f"a frame of {length} bytes \\(expected 1 to {MAX_FRAME}\\)"):
        decoder.feed(bytes.fromhex(header))  # no payload follows: nothing is waited for


def test_an_oversize_header_byte_by_byte_is_refused_at_its_fourth_byte() -> None:
    header = bytes.fromhex("00200001")
    decoder = FrameDecoder()
    for i in range(3):
        assert decoder.feed(header[i : i + 1]) == []
    assert decoder.pending == 3
    with pytest.raises(ProtocolError):
        decoder.feed(header[3:])


def test_an_oversize_header_after_good_frames_is_refused_after_them() -> None:
    decoder = FrameDecoder()
    # The frames before it come out first (a goodbye among them may say why)...
    assert decoder.feed(encode_frame(b"fine") + bytes.fromhex("00200001")) == [b"fine"]
    # ...and the error is raised by the next call, with or without new bytes.
    for more in (b"", encode_frame(b"late")):
        with pytest.raises(ProtocolError, match=f"a frame of {MAX_FRAME + 1} bytes"):
            decoder.feed(more)


def test_the_largest_length_is_waited_for_not_refused() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(bytes.fromhex("00200000")) == []
    assert decoder.pending == 4


@pytest.mark.parametrize("before", [b"", encode_frame(b"fine")], ids=["first", "after a frame"])
def test_a_zero_length_is_refused(before: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="a frame of 0 bytes"):
        assert decoder.feed(before + b"\x00\x00\x00\x00") == ([b"fine"] if before else [])
        decoder.feed(b"")


def test_a_smaller_maximum_is_enforced() -> None:
    decoder = FrameDecoder(max_frame=10)
    assert decoder.feed(encode_frame(b"x" * 10)) == [b"x" * 10]
    with pytest.raises(ProtocolError, match="a frame of 11 bytes \\(expected 1 to 10\\)"):
        decoder.feed(encode_frame(b"x" * 11)[:4])


# ---------------------------------------------------------------- pending

# (pieces fed, in order; bytes pending after each)
PENDING: list[tuple[list[bytes], list[int]]] = [
    ([b""], [0]),
    ([b"\x00"], [1]),
    ([b"\x00\x00\x00"], [3]),
    ([b"\x00\x00\x00\x05"], [4]),
    ([b"\x00\x00\x00\x05ab"], [6]),
    ([b"\x00\x00\x00\x05abcde"], [0]),
    ([b"\x00\x00\x00\x05abcde\x00\x00"], [2]),
    ([b"\x00\x00", b"\x00\x02", b"a", b"b"], [2, 4, 5, 0]),
    ([encode_frame(b"one") + encode_frame(b"two")[:5], b"wo"], [5, 0]),
]


@pytest.mark.parametrize(("pieces", "pending"), PENDING)
def test_pending_counts_the_bytes_of_an_unfinished_frame(pieces: list[bytes], pending: list[int]) -> None:
    decoder = FrameDecoder()
    after = []
    for piece in pieces:
        decoder.feed(piece)
        after.append(decoder.pending)
    assert after == pending
