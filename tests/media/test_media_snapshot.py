"""Snapshots: a JPEG of the current picture, with or without viewers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import av

from agent.media import (
    ExecConfig,
    FanoutConfig,
    MediaConfig,
    MediaEvent,
    MediaEventKind,
    MediaHub,
    TestPatternConfig,
)

from .conftest import WAIT, Viewer
from .test_media_sources import H264_ARGS, ffmpeg_command

Connect = Callable[..., Awaitable[Viewer]]


def decode_jpeg(data: bytes) -> tuple[int, int]:
    """Size of the picture in ``data``, decoded by FFmpeg's own JPEG decoder."""
    codec = av.CodecContext.create("mjpeg", "r")
    (frame,) = codec.decode(av.Packet(data))
    return frame.width, frame.height


async def test_snapshot_without_viewers_opens_and_releases_the_camera() -> None:
    released = asyncio.Event()

    def on_event(event: MediaEvent) -> None:
        if event.kind is MediaEventKind.SOURCE_RELEASED:
            released.set()

    config = MediaConfig(
        video=TestPatternConfig(width=320, height=240),
        fanout=FanoutConfig(linger_seconds=0.1),
    )
    hub = MediaHub(config, on_event=on_event)
    try:
        jpeg = await hub.snapshot()
        assert jpeg[:3] == b"\xff\xd8\xff"
        assert jpeg[-2:] == b"\xff\xd9"
        assert decode_jpeg(jpeg) == (320, 240)
        await asyncio.wait_for(released.wait(), WAIT)
        assert hub.stats().video_source == ""
    finally:
        await hub.close()


async def test_snapshot_while_streaming_leaves_viewers_alone(viewers: Connect) -> None:
    hub = MediaHub(MediaConfig(video=TestPatternConfig(width=320, height=240)))
    try:
        viewer = await viewers(hub)
        await viewer.until(lambda: viewer.video_frames >= 5)
        keys = hub.stats().codecs[0].keyframes
        shots = await asyncio.gather(*(hub.snapshot() for _ in range(3)))
        assert all(decode_jpeg(s) == (320, 240) for s in shots)
        frames = viewer.video_frames
        await viewer.until(lambda: viewer.video_frames >= frames + 20)
        assert hub.stats().codecs[0].keyframes == keys  # no key frame for a snapshot
        assert hub.viewers == 1
    finally:
        await hub.close()


async def test_snapshot_of_a_passthrough_source_decodes_the_current_gop() -> None:
    hub = MediaHub(MediaConfig(video=ExecConfig(command=ffmpeg_command("h264", *H264_ARGS))))
    try:
        jpeg = await hub.snapshot()
        assert decode_jpeg(jpeg) == (320, 240)
        assert hub.stats().codecs == ()  # nothing was encoded for it
    finally:
        await hub.close()
