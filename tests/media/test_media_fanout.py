"""Encode once, many viewers: real aiortc peers against the media hub."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from agent.media import (
    EncoderConfig,
    FanoutConfig,
    MediaConfig,
    MediaEventKind,
    MediaHub,
    TestPatternConfig,
)

from .conftest import WAIT, Viewer

Connect = Callable[..., Awaitable[Viewer]]


def small(**fanout: Any) -> MediaConfig:
    """A small, fast pattern so tests stay cheap on a shared machine."""
    encoder = fanout.pop("encoder", EncoderConfig())
    return MediaConfig(
        video=TestPatternConfig(width=320, height=240, fps=30),
        encoder=encoder,
        fanout=FanoutConfig(**{"linger_seconds": 0.2, **fanout}),
    )


@pytest.fixture
async def hub() -> Any:
    hub = MediaHub(small())
    yield hub
    await hub.close()


async def test_viewer_receives_decoded_video_of_configured_size_and_audio(
    hub: MediaHub, viewers: Connect
) -> None:
    viewer = await viewers(hub, audio=True)
    await viewer.until(lambda: viewer.video_frames >= 10 and viewer.audio_frames >= 10)
    assert viewer.sizes == {(320, 240)}
    stats = hub.stats()
    assert {c.codec for c in stats.codecs} == {"VP8"}
    assert stats.audio_encodes > 0
    assert hub.viewers == 2


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_negotiated_codec_is_encoded(hub: MediaHub, viewers: Connect, codec: str) -> None:
    viewer = await viewers(hub, codec=codec)
    await viewer.until(lambda: viewer.video_frames >= 10)
    assert viewer.video_track.codec == codec
    (stats,) = hub.stats().codecs
    assert stats.codec == codec
    assert stats.encoder in {"libvpx", "libx264", "h264_v4l2m2m"}


@pytest.mark.parametrize("count", [2, 4])
async def test_encoder_runs_once_per_frame_not_per_viewer(
    hub: MediaHub, viewers: Connect, count: int
) -> None:
    crowd = [await viewers(hub) for _ in range(count)]
    for viewer in crowd:
        await viewer.until(lambda v=viewer: v.video_frames >= 5)
    before = hub.stats()
    sent_before = [v.video_track.sent for v in crowd]
    for viewer in crowd:
        await viewer.until(lambda v=viewer: v.video_frames >= 60)
    after = hub.stats()
    (codec_before,), (codec_after,) = before.codecs, after.codecs
    encodes = codec_after.encodes - codec_before.encodes
    captured = after.frames_captured - before.frames_captured
    # One encode per captured frame (the newest frame wins if the encoder lags) ...
    assert 0 < encodes <= captured
    assert codec_after.encodes - 1 <= codec_after.frames <= codec_after.encodes  # one in flight
    # ... and every viewer was sent (nearly) each of those encoded frames.
    for viewer, sent in zip(crowd, sent_before, strict=True):
        assert viewer.video_track.sent - sent >= encodes - 15
    assert codec_after.viewers == count


async def test_two_codecs_one_encoder_each(hub: MediaHub, viewers: Connect) -> None:
    vp8 = [await viewers(hub, codec="VP8") for _ in range(2)]
    h264 = [await viewers(hub, codec="H264") for _ in range(2)]
    for viewer in vp8 + h264:
        await viewer.until(lambda v=viewer: v.video_frames >= 30)
    stats = {c.codec: c for c in hub.stats().codecs}
    captured = hub.stats().frames_captured
    assert set(stats) == {"VP8", "H264"}
    assert all(0 < s.encodes <= captured and s.viewers == 2 for s in stats.values())


async def test_stalled_viewer_drops_alone(hub: MediaHub, viewers: Connect) -> None:
    healthy = [await viewers(hub) for _ in range(2)]
    stalled = hub.subscribe_video("VP8")
    await asyncio.wait_for(stalled.recv(), WAIT)  # joins, then never reads again
    for viewer in healthy:
        await viewer.until(lambda v=viewer: v.video_frames >= 5)
    start = [v.video_frames for v in healthy]
    for viewer in healthy:
        await viewer.until(lambda v=viewer: v.video_frames >= 95)
    gained = [v.video_frames - s for v, s in zip(healthy, start, strict=True)]
    assert stalled.queued <= hub.config.fanout.video_queue
    assert stalled.dropped + stalled.skipped > 60
    assert min(gained) >= 0.8 * max(gained)
    assert all(v.video_track.dropped <= 10 for v in healthy)  # at most one hiccup of a busy box
    stalled.stop()


async def test_slow_viewer_does_not_slow_the_others(hub: MediaHub, viewers: Connect) -> None:
    fast = await viewers(hub)
    slow = await viewers(hub)
    transport: Any = slow.agent_pc.getSenders()[0].transport
    send_rtp = transport._send_rtp

    async def congested(data: bytes) -> None:
        await asyncio.sleep(0.03)  # every RTP packet waits: a link far below the bitrate
        await send_rtp(data)

    transport._send_rtp = congested
    await fast.until(lambda: fast.video_frames >= 5)
    fast_start, slow_start = fast.video_frames, slow.video_frames
    await fast.until(lambda: fast.video_frames >= fast_start + 90)
    assert slow.video_track.dropped > 0
    assert slow.video_frames - slow_start < 60
    assert fast.video_track.dropped <= 10
    assert hub.stats().codecs[0].encodes >= fast.video_frames * 0.9


async def test_late_joiner_gets_a_key_frame_promptly_without_a_storm(
    viewers: Connect, decode_errors: Callable[[], list[str]]
) -> None:
    hub = MediaHub(small(encoder=EncoderConfig(keyframe_interval=300)))
    try:
        first = await viewers(hub)
        await first.until(lambda: first.video_frames >= 45)
        late = await viewers(hub)
        await asyncio.wait_for(late.first_video.wait(), WAIT)
        (codec,) = hub.stats().codecs
        # Before frame 300, so the late joiner's key frame was forced for it, not scheduled.
        assert codec.encodes < 300
        assert codec.forced_keyframes <= 2  # the first viewer's start and the late join
        await first.until(lambda: first.video_frames >= 120)
        # The first viewer saw its own start and the one forced for the late joiner.
        assert 2 <= first.video_track.keyframes_sent <= 3
        assert 1 <= late.video_track.keyframes_sent <= 2
        assert decode_errors() == []
    finally:
        await hub.close()


async def test_keyframe_request_is_rate_limited(hub: MediaHub, viewers: Connect) -> None:
    viewer = await viewers(hub)
    await viewer.until(lambda: viewer.video_frames >= 5)
    keys = hub.stats().codecs[0].keyframes
    for _ in range(50):
        hub.request_keyframe()
    await viewer.until(lambda: viewer.video_frames >= 40)
    assert hub.stats().codecs[0].keyframes - keys == 1


async def test_pli_from_a_viewer_forces_a_key_frame(hub: MediaHub, viewers: Connect) -> None:
    viewer = await viewers(hub)
    await viewer.until(lambda: viewer.video_frames >= 5)
    receiver: Any = viewer.pc.getReceivers()[0]
    track = viewer.video_track
    await viewer.until(lambda: viewer.video_frames >= 75)  # past the per-viewer interval
    forced, requests = hub.stats().codecs[0].forced_keyframes, track.keyframe_requests
    ssrc = viewer.agent_pc.getSenders()[0]._ssrc
    await receiver._send_rtcp_pli(ssrc)
    await viewer.until(lambda: hub.stats().codecs[0].forced_keyframes > forced)
    assert track.keyframe_requests == requests + 1


async def test_capture_is_released_after_the_last_viewer(viewers: Connect) -> None:
    released = asyncio.Event()

    def on_event(event: Any) -> None:
        if event.kind is MediaEventKind.SOURCE_RELEASED and event.media == "video":
            released.set()

    hub = MediaHub(small(), on_event=on_event)
    try:
        viewer = await viewers(hub)
        await viewer.until(lambda: viewer.video_frames >= 3)
        await viewer.close()
        await asyncio.wait_for(released.wait(), WAIT)
        assert hub.viewers == 0
        assert hub.stats().video_source == ""
        again = await viewers(hub)
        await again.until(lambda: again.video_frames >= 3)
    finally:
        await hub.close()


async def test_remb_from_viewers_sets_the_shared_bitrate(viewers: Connect) -> None:
    hub = MediaHub(small(adapt_bitrate=True, min_bitrate=150_000))
    try:
        crowd = [await viewers(hub) for _ in range(3)]
        for viewer in crowd:
            await viewer.until(lambda v=viewer: v.video_frames >= 5)
        estimates = [400_000, 2_000_000, 50_000]  # the last viewer's link is hopeless
        for viewer, bitrate in zip(crowd, estimates, strict=True):
            ssrc = viewer.agent_pc.getSenders()[0]._ssrc
            receiver: Any = viewer.pc.getReceivers()[0]
            remb = RtcpPsfbPacket(
                fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bitrate, [ssrc])
            )
            await receiver._send_rtcp(remb)
        await crowd[0].until(lambda: hub.stats().codecs[0].bitrate == 400_000)
        rembs = {v.remb for v in hub.stats().viewers}
        assert {400_000, 2_000_000, 50_000} <= rembs
        keys = crowd[1].video_track.keyframes_sent
        await crowd[1].until(lambda: crowd[1].video_track.keyframes_sent > keys)  # reopened
    finally:
        await hub.close()
