"""Chunk frames: golden header bytes, incremental decoding in any split, refusals."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import (
    FRAME_HEADER,
    BadFrameMagic,
    Codec,
    Frame,
    FrameDecoder,
    FrameError,
    FrameFlags,
    FrameTooLarge,
    ProtocolError,
    TruncatedFrame,
    UnsupportedVersion,
    encode_frame,
)
from protocol._errors import MessageTooLarge

BLOB = "0123456789abcdef" * 4
FRAMES = [
    Frame(BLOB, 0, b"hello", Codec.ZSTD),
    Frame(BLOB, 1, b""),
    Frame("f" * 64, 2**32 - 1, bytes(range(256)) * 3, Codec.LZ4_BLOCK, FrameFlags.LAST),
]


def test_header_layout_is_golden() -> None:
    data = encode_frame(Frame(BLOB, 7, b"xyz", Codec.ZSTD, FrameFlags.LAST))
    assert FRAME_HEADER.size == 48
    assert data[:8] == b"NYCF\x01\x01\x01\x00"
    assert data[8:40] == bytes.fromhex(BLOB)
    assert data[40:44] == b"\x00\x00\x00\x07"
    assert data[44:48] == b"\x00\x00\x00\x03"
    assert data[48:] == b"xyz"


def test_whole_stream_at_once() -> None:
    stream = b"".join(encode_frame(frame) for frame in FRAMES)
    decoder = FrameDecoder()
    assert decoder.feed(stream) == FRAMES
    assert FRAMES[2].last and not FRAMES[0].last
    decoder.close()


def test_byte_by_byte() -> None:
    stream = b"".join(encode_frame(frame) for frame in FRAMES)
    decoder = FrameDecoder()
    frames = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i : i + 1])
    assert frames == FRAMES
    assert decoder.pending == 0


payloads = st.binary(max_size=300)
frames_st = st.builds(
    Frame,
    blob_id=st.text("0123456789abcdef", min_size=64, max_size=64),
    chunk_index=st.integers(0, 2**32 - 1),
    payload=payloads,
    codec=st.sampled_from(Codec),
    flags=st.sampled_from([FrameFlags.NONE, FrameFlags.LAST]),
)


@settings(max_examples=150, deadline=None)
@given(frames=st.lists(frames_st, max_size=6), cuts=st.lists(st.integers(0, 3000), max_size=12))
def test_random_splits(frames: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(frame) for frame in frames)
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    out = []
    for start, end in itertools.pairwise(points):
        out += decoder.feed(stream[start:end])
    assert out == frames
    decoder.close()


def test_bad_magic_is_refused_and_sticks() -> None:
    data = bytearray(encode_frame(FRAMES[0]))
    data[:4] = b"HTTP"
    decoder = FrameDecoder()
    with pytest.raises(BadFrameMagic) as caught:
        decoder.feed(data)
    assert caught.value.found == b"HTTP"
    with pytest.raises(BadFrameMagic):
        decoder.feed(encode_frame(FRAMES[0]))


def test_oversized_payload_is_refused_from_the_header_alone() -> None:
    header = encode_frame(Frame(BLOB, 0, b"x" * 11))[:48]
    decoder = FrameDecoder(max_payload=10)
    with pytest.raises(FrameTooLarge) as caught:
        decoder.feed(header)
    assert (caught.value.size, caught.value.limit) == (11, 10)
    assert isinstance(caught.value, MessageTooLarge)


@pytest.mark.parametrize(
    ("offset", "value", "error"),
    [(4, 2, UnsupportedVersion), (5, 0x80, FrameError), (6, 9, FrameError)],
    ids=["version", "flags", "codec"],
)
def test_bad_header_fields(offset: int, value: int, error: type[ProtocolError]) -> None:
    data = bytearray(encode_frame(FRAMES[0]))
    data[offset] = value
    with pytest.raises(error):
        FrameDecoder().feed(data)


def test_stream_ending_inside_a_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(FRAMES[0])[:50])
    with pytest.raises(TruncatedFrame) as caught:
        decoder.close()
    assert caught.value.buffered == 50


@pytest.mark.parametrize("blob_id", ["A" * 64, "ab", "zz" * 32])
def test_encoding_refuses_bad_blob_ids(blob_id: str) -> None:
    with pytest.raises(FrameError):
        encode_frame(Frame(blob_id, 0, b""))


def test_encoding_refuses_huge_index() -> None:
    with pytest.raises(FrameError):
        encode_frame(Frame(BLOB, 2**32, b""))
