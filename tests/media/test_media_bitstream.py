"""Pure H.264 Annex B and MJPEG splitting: bytes in, access units out."""

from __future__ import annotations

import random
from fractions import Fraction

import av
import pytest

from agent.media.bitstream import (
    START_CODE,
    AccessUnit,
    AnnexBSplitter,
    BitstreamError,
    JpegSplitter,
    NalType,
    ParameterSetCache,
    is_idr,
    join_nal_units,
    nal_types,
    split_nal_units,
)

SPS, PPS, AUD = b"\x67\x42\xc0\x1e\xaa", b"\x68\xce\x3c\x80", b"\x09\xf0"
SEI = b"\x06\x05\x01\x80"
IDR = b"\x65\x88\x84\x00\x33"  # first_mb_in_slice = 0 (top bit of byte 1 set)
P0, P0B = b"\x41\x9a\x02\x11", b"\x41\x9b\x03\x22"  # new pictures
P_SECOND_SLICE = b"\x41\x1a\x77"  # first_mb_in_slice != 0: same picture


def stream(*units: bytes) -> bytes:
    return join_nal_units(list(units))


def test_split_nal_units_handles_3_and_4_byte_start_codes_and_trailing_zeros() -> None:
    data = b"\x00\x00\x01" + SPS + b"\x00\x00\x00\x01" + PPS + b"\x00\x00" + b"\x00\x00\x01" + IDR
    assert split_nal_units(data) == [SPS, PPS, IDR]
    assert split_nal_units(b"garbage without start code") == []
    assert split_nal_units(b"\x00\x00\x01\x00\x00\x00\x01" + SPS) == [SPS]  # empty unit skipped


def test_nal_types_and_idr() -> None:
    assert nal_types(stream(SPS, PPS, IDR)) == [NalType.SPS, NalType.PPS, NalType.IDR]
    assert is_idr(stream(SPS, PPS, IDR))
    assert not is_idr(stream(P0))


def test_splitter_groups_units_into_access_units() -> None:
    splitter = AnnexBSplitter()
    data = stream(AUD, SPS, PPS, SEI, IDR, P0, P_SECOND_SLICE, P0B, AUD, P0)
    units = splitter.feed(data)
    assert units == [
        AccessUnit(stream(AUD, SPS, PPS, SEI, IDR), key=True),
        AccessUnit(stream(P0, P_SECOND_SLICE), key=False),
        AccessUnit(stream(P0B), key=False),
    ]
    assert splitter.flush() == [AccessUnit(stream(AUD, P0), key=False)]
    assert splitter.flush() == []


def test_splitter_is_independent_of_chunking() -> None:
    data = stream(SPS, PPS, IDR, P0, P0B, SPS, PPS, IDR, P0)
    whole = AnnexBSplitter()
    expected = whole.feed(data) + whole.flush()
    rng = random.Random(7)  # noqa: S311 - reproducible chunk sizes, not security
    for _ in range(50):
        splitter, got, pos = AnnexBSplitter(), [], 0
        while pos < len(data):
            size = rng.randint(1, 7)
            got += splitter.feed(data[pos : pos + size])
            pos += size
        assert got + splitter.flush() == expected


def test_splitter_bounds_its_buffer() -> None:
    splitter = AnnexBSplitter(limit=64)
    with pytest.raises(BitstreamError, match="64 bytes"):
        splitter.feed(b"\x11" * 65)
    assert splitter.feed(stream(SPS)) == []  # usable again


def test_splitter_matches_a_real_encoder() -> None:
    """Access units found in a libx264 byte stream are exactly the encoder's packets."""
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = 64, 48, "yuv420p"
    codec.time_base = Fraction(1, 30)
    codec.gop_size, codec.max_b_frames = 5, 0
    codec.options = {"preset": "ultrafast", "tune": "zerolatency"}
    packets = []
    for i in range(12):
        frame = av.VideoFrame(64, 48, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 20) % 256]) * plane.buffer_size)
        frame.pts = i
        packets += [bytes(p) for p in codec.encode(frame)]
    packets += [bytes(p) for p in codec.encode(None)]
    splitter = AnnexBSplitter()
    units = splitter.feed(b"".join(packets)) + splitter.flush()
    assert [split_nal_units(u.data) for u in units] == [split_nal_units(p) for p in packets]
    assert [u.key for u in units] == [is_idr(p) for p in packets]
    assert sum(u.key for u in units) == 3


def test_parameter_sets_are_put_before_an_idr_that_lacks_them() -> None:
    cache = ParameterSetCache()
    first = AccessUnit(stream(AUD, SPS, PPS, IDR), key=True)
    assert cache.apply(first) == first
    bare = cache.apply(AccessUnit(stream(AUD, SEI, IDR), key=True))
    assert nal_types(bare.data) == [NalType.AUD, NalType.SPS, NalType.PPS, NalType.SEI, NalType.IDR]
    assert bare.data.startswith(START_CODE)
    p_frame = AccessUnit(stream(P0), key=False)
    assert cache.apply(p_frame) == p_frame


def test_parameter_sets_unknown_leave_the_unit_alone() -> None:
    unit = AccessUnit(stream(IDR), key=True)
    assert ParameterSetCache().apply(unit) == unit


def jpeg(marker: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + bytes([marker]) * 10 + b"\xff\x00\x12\xff\xd9"


def test_jpeg_splitter_finds_images_across_chunks() -> None:
    data = b"junk" + jpeg(1) + jpeg(2) + jpeg(3)
    splitter = JpegSplitter()
    got = []
    for i in range(0, len(data), 5):
        got += splitter.feed(data[i : i + 5])
    assert got == [jpeg(1), jpeg(2), jpeg(3)]


def test_jpeg_splitter_bounds_its_buffer() -> None:
    splitter = JpegSplitter(limit=32)
    with pytest.raises(BitstreamError, match="JPEG"):
        splitter.feed(b"\xff\xd8\xff" + b"\x00" * 40)
    assert splitter.feed(jpeg(4)) == [jpeg(4)]
    assert splitter.feed(b"\x00" * 100) == []  # no SOI: not buffered
