"""Frame-difference motion scores: pure on byte buffers, and on real PyAV frames; the watch
loop on real JPEGs, riding out pictures that cannot be had or decoded."""

from __future__ import annotations

import asyncio

import av
import pytest

from agent.errors import RealtimeError
from agent.events.motion import (
    ANALYSIS_SIZE,
    PIXEL_DELTA,
    MotionAnalyzer,
    decode_jpeg,
    motion_score,
)

W, H = 8, 4


def frame(value: int = 0, *, lit: set[tuple[int, int]] = frozenset(), level: int = 200) -> bytes:
    return bytes(level if (x, y) in lit else value for y in range(H) for x in range(W))


def test_identical_frames_score_zero() -> None:
    assert motion_score(frame(), frame(), width=W, height=H) == 0.0


def test_share_of_changed_pixels() -> None:
    changed = {(0, 0), (1, 0), (2, 0), (3, 0)}
    assert motion_score(frame(), frame(lit=changed), width=W, height=H) == 4 / 32


def test_small_changes_are_noise() -> None:
    assert motion_score(frame(100), frame(100 + PIXEL_DELTA), width=W, height=H) == 0.0
    assert motion_score(frame(100), frame(101 + PIXEL_DELTA), width=W, height=H) == 1.0


def test_region_limits_the_pixels_compared() -> None:
    left_half = (0.0, 0.0, 0.5, 1.0)
    changed = {(6, 0), (7, 3)}  # right half only
    assert motion_score(frame(), frame(lit=changed), width=W, height=H, region=left_half) == 0.0
    right_half = (0.5, 0.0, 0.5, 1.0)
    assert motion_score(frame(), frame(lit=changed), width=W, height=H, region=right_half) == 2 / 16


def test_a_tiny_region_still_covers_a_pixel() -> None:
    assert (
        motion_score(frame(), frame(lit={(0, 0)}), width=W, height=H, region=(0.0, 0.0, 0.01, 0.01))
        == 1.0
    )


def test_stride_and_step() -> None:
    stride = W + 4  # padded rows, as in a video plane
    still = bytes(stride * H)
    moved = bytearray(still)
    for y in range(H):
        moved[y * stride : y * stride + W] = b"\xff" * W
        moved[y * stride + W : (y + 1) * stride] = b"\x00" * 4
    assert motion_score(still, bytes(moved), width=W, height=H, stride=stride) == 1.0
    assert motion_score(still, bytes(moved), width=W, height=H, stride=stride, step=2) == 1.0


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"width": 0, "height": H}, "bad frame shape"),
        ({"width": W, "height": H, "stride": W - 1}, "bad frame shape"),
        ({"width": W, "height": H, "step": 0}, "bad frame shape"),
        ({"width": W, "height": H + 1}, "needs 40 bytes, got 32"),
    ],
)
def test_bad_shapes_are_refused(options: dict[str, int], words: str) -> None:
    with pytest.raises(ValueError, match="frame") as info:
        motion_score(frame(), frame(), **options)
    assert words in str(info.value)


class Sink:
    def __init__(self) -> None:
        self.scores: list[tuple[float, object]] = []

    def __call__(self, score: float, region: object) -> None:
        self.scores.append((score, region))


def test_analyzer_compares_at_its_interval() -> None:
    now = [0.0]
    sink = Sink()
    corner = (0.0, 0.0, 0.5, 0.5)
    analyzer = MotionAnalyzer(
        sink, regions=[None, corner, None], interval_seconds=0.5, clock=lambda: now[0]
    )
    assert analyzer.feed_gray(frame(), W, H)  # the baseline
    assert sink.scores == []
    assert not analyzer.feed_gray(frame(255), W, H)  # too soon: skipped
    now[0] = 0.5
    assert analyzer.feed_gray(frame(lit={(0, 0)}), W, H)
    assert sink.scores == [(1 / 32, None), (1 / 8, corner)]
    now[0] = 1.0
    assert analyzer.feed_gray(bytes(W * 2 * H), W * 2, H)  # new resolution: a new baseline
    assert len(sink.scores) == 2


def test_analyzer_downsamples_large_buffers() -> None:
    now = [0.0]
    sink = Sink()
    analyzer = MotionAnalyzer(sink, regions=[None], interval_seconds=0.1, clock=lambda: now[0])
    width, height = ANALYSIS_SIZE[0] * 4, ANALYSIS_SIZE[1] * 4
    analyzer.feed_gray(bytes(width * height), width, height)
    now[0] = 1.0
    analyzer.feed_gray(b"\xff" * (width * height), width, height)
    assert sink.scores == [(1.0, None)]


def test_analyzer_reads_pyav_frames() -> None:
    now = [0.0]
    sink = Sink()
    analyzer = MotionAnalyzer(
        sink, regions=[None, (0.5, 0.0, 0.5, 1.0)], interval_seconds=0.5, clock=lambda: now[0]
    )
    dark = av.VideoFrame(320, 240, "gray")
    dark.planes[0].update(bytes(dark.planes[0].line_size * 240))
    half = av.VideoFrame(320, 240, "gray")
    rows = [b"\x00" * 160 + b"\xff" * 160 + b"\x00" * (half.planes[0].line_size - 320)] * 240
    half.planes[0].update(b"".join(rows))
    assert analyzer.feed_frame(dark)
    assert not analyzer.feed_frame(half)  # not due yet
    assert not analyzer.due()
    now[0] = 1.0
    assert analyzer.feed_frame(half.reformat(format="yuv420p"))  # any format is converted
    (whole, _), (right, region) = sink.scores
    assert whole == pytest.approx(0.5, abs=0.05)
    assert right == pytest.approx(1.0, abs=0.05)
    assert region == (0.5, 0.0, 0.5, 1.0)


def jpeg(level: int, width: int = 64, height: int = 48) -> bytes:
    """A real JPEG of one gray level, encoded by FFmpeg's MJPEG encoder."""
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
    picture = av.VideoFrame(width, height, "gray")
    picture.planes[0].update(bytes([level]) * (picture.planes[0].line_size * height))
    packets = codec.encode(picture.reformat(format="yuvj420p"))
    return b"".join(bytes(packet) for packet in packets)


@pytest.mark.parametrize("data", [b"", b"not a jpeg"])
def test_bytes_without_a_picture_are_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"no picture|Invalid data"):
        decode_jpeg(data)


def test_a_jpeg_decodes_to_its_picture() -> None:
    picture = decode_jpeg(jpeg(200, 32, 16))
    assert (picture.width, picture.height) == (32, 16)


async def test_the_watch_scores_pictures_and_rides_out_bad_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scored = asyncio.Event()
    sink = Sink()

    def record(score: float, region: object) -> None:
        sink(score, region)
        scored.set()

    analyzer = MotionAnalyzer(record, regions=[None], interval_seconds=0.01)
    pictures: list[bytes | Exception] = [
        RealtimeError("DEVICE_NOT_FOUND", "Requested media device not found."),
        b"",  # no picture at all
        b"not a jpeg",
        jpeg(0),  # the baseline
        jpeg(255),  # every pixel changed
    ]

    async def snapshot() -> bytes:
        item = pictures.pop(0) if pictures else jpeg(255)
        if isinstance(item, Exception):
            raise item
        return item

    watch = asyncio.create_task(analyzer.watch(snapshot, retry_seconds=0))
    try:
        async with asyncio.timeout(10):
            await scored.wait()
    finally:
        watch.cancel()
    with pytest.raises(asyncio.CancelledError):  # still running: the bad pictures did not end it
        await watch
    assert sink.scores[0] == (pytest.approx(1.0, abs=0.05), None)
    assert caplog.text.count("motion: no picture this round") == 3
