"""Sources: V4L2 camera missing or removed, exec pass-through and MJPEG, microphone fallback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import av
import pytest
from av.container import InputContainer

from agent.errors import Codes, DeviceNotFoundError
from agent.media import (
    BackoffConfig,
    ExecConfig,
    FanoutConfig,
    MediaConfig,
    MediaEvent,
    MediaEventKind,
    MediaHub,
    MicrophoneConfig,
    StreamFormat,
    TestPatternConfig,
    V4L2Config,
)
from agent.media.runtime import MediaClock
from agent.media.sources import ExecSource, V4L2Source, force_key_frame
from agent.media.supervisor import CaptureState

from .conftest import WAIT, Viewer

Connect = Callable[..., Awaitable[Viewer]]
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FAST_RETRY = BackoffConfig(initial=0.1, maximum=0.3, jitter=0.0)
FALLBACK = TestPatternConfig(width=160, height=120, fps=30)


class Events:
    """Collects media events and lets a test await one."""

    def __init__(self) -> None:
        self.seen: list[MediaEvent] = []
        self._changed = asyncio.Event()
        self.hooks: list[Callable[[MediaEvent], None]] = []

    def __call__(self, event: MediaEvent) -> None:
        self.seen.append(event)
        for hook in self.hooks:
            hook(event)
        self._changed.set()

    def count(self, kind: MediaEventKind, media: str = "video") -> int:
        return sum(1 for e in self.seen if e.kind is kind and e.media == media)

    async def wait(
        self, kind: MediaEventKind, *, at_least: int = 1, media: str = "video"
    ) -> MediaEvent:
        async with asyncio.timeout(WAIT):
            while self.count(kind, media) < at_least:
                self._changed.clear()
                await self._changed.wait()
        return [e for e in self.seen if e.kind is kind and e.media == media][-1]


def lavfi_camera(duration: float | None = None) -> Callable[[V4L2Config], InputContainer]:
    """Feeds the V4L2 code path with a paced test source in place of a real camera."""

    def opener(config: V4L2Config) -> InputContainer:
        length = f":duration={duration}" if duration else ""
        graph = f"testsrc2=size={config.width}x{config.height}:rate={config.fps}{length},realtime"
        return av.open(graph, format="lavfi")

    return opener


def camera_hub(
    device: Path, events: Events, opener: Callable[[V4L2Config], InputContainer]
) -> MediaHub:
    camera = V4L2Config(device=str(device), width=320, height=240, fps=30)
    config = MediaConfig(
        video=camera,
        fallback=FALLBACK,
        backoff=FAST_RETRY,
        fanout=FanoutConfig(linger_seconds=0.2, source_timeout=3.0),
    )
    return MediaHub(
        config,
        on_event=events,
        video_source=lambda clock: V4L2Source(camera, clock, opener=opener),
    )


async def test_missing_device_raises_device_not_found_naming_it(tmp_path: Path) -> None:
    device = tmp_path / "video7"
    source = V4L2Source(V4L2Config(device=str(device)), MediaClock())
    with pytest.raises(DeviceNotFoundError) as caught:
        await source.open()
    assert caught.value.code == Codes.DEVICE_NOT_FOUND
    assert caught.value.device == str(device)
    assert str(device) in caught.value.message


async def test_camera_missing_at_start_falls_back_then_recovers(
    tmp_path: Path, viewers: Connect
) -> None:
    device, events = tmp_path / "video0", Events()
    hub = camera_hub(device, events, lavfi_camera())
    try:
        viewer = await viewers(hub)
        failed = await events.wait(MediaEventKind.SOURCE_FAILED, at_least=2)  # retried
        assert failed.error is not None
        assert failed.error.device == str(device)
        await viewer.until(lambda: (160, 120) in viewer.sizes)  # the call goes on
        assert hub.stats().video_state is CaptureState.FALLBACK
        (error,) = hub.stats().errors
        assert error.device == str(device)
        device.touch()  # the camera is plugged in
        opened = await events.wait(MediaEventKind.SOURCE_OPENED)
        assert opened.source == str(device)
        await viewer.until(lambda: (320, 240) in viewer.sizes)
        assert hub.stats().video_state is CaptureState.LIVE
        assert hub.device_errors == ()
    finally:
        await hub.close()


async def test_camera_removed_mid_stream_viewers_continue(tmp_path: Path, viewers: Connect) -> None:
    device, events = tmp_path / "video0", Events()
    device.touch()
    events.hooks.append(
        lambda e: e.kind is MediaEventKind.SOURCE_LOST and device.unlink(missing_ok=True)
    )
    hub = camera_hub(device, events, lavfi_camera(duration=1.0))
    try:
        viewer = await viewers(hub)
        await viewer.until(lambda: (320, 240) in viewer.sizes)
        lost = await events.wait(MediaEventKind.SOURCE_LOST)
        assert lost.error is not None
        assert lost.error.device == str(device)
        frames = viewer.video_frames
        await viewer.until(lambda: (160, 120) in viewer.sizes and viewer.video_frames > frames + 30)
        retry = await events.wait(MediaEventKind.SOURCE_FAILED)
        assert retry.error is not None
        assert "no such device" in retry.error.message
    finally:
        await hub.close()


def ffmpeg_command(output: str, *extra: str) -> tuple[str, ...]:
    source = "testsrc2=size=320x240:rate=30"
    return (
        FFMPEG,
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        source,
        *extra,
        "-f",
        output,
        "-",
    )


H264_ARGS = (
    "-c:v",
    "libx264",
    "-preset",
    "ultrafast",
    "-tune",
    "zerolatency",
    "-profile:v",
    "baseline",
    "-g",
    "30",
    "-bf",
    "0",
)


def exec_hub(config: ExecConfig, events: Events | None = None) -> MediaHub:
    return MediaHub(
        MediaConfig(
            video=config,
            fallback=FALLBACK,
            backoff=FAST_RETRY,
            fanout=FanoutConfig(linger_seconds=0.2),
        ),
        on_event=events,
    )


async def test_exec_h264_is_passed_through_without_decoding_or_encoding(viewers: Connect) -> None:
    hub = exec_hub(ExecConfig(command=ffmpeg_command("h264", *H264_ARGS)))
    try:
        viewer = await viewers(hub, codec="H264")
        await viewer.until(lambda: viewer.video_frames >= 30)
        assert viewer.sizes == {(320, 240)}
        stats = hub.stats()
        (h264,) = stats.codecs
        assert (h264.encoder, h264.encodes) == ("passthrough", 0)
        assert stats.decodes == 0
        assert stats.frames_captured == 0
        assert stats.passthrough_units >= 30
        assert h264.frames >= 30
    finally:
        await hub.close()


async def test_exec_h264_to_a_vp8_viewer_is_decoded_once(viewers: Connect) -> None:
    hub = exec_hub(ExecConfig(command=ffmpeg_command("h264", *H264_ARGS)))
    try:
        viewers_ = [await viewers(hub, codec="VP8") for _ in range(2)]
        for viewer in viewers_:
            await viewer.until(lambda v=viewer: v.video_frames >= 30)
        stats = hub.stats()
        (vp8,) = stats.codecs
        assert vp8.encoder == "libvpx"
        assert 0 < stats.decodes <= stats.passthrough_units
        assert 0 < vp8.encodes <= stats.frames_captured
    finally:
        await hub.close()


async def test_exec_mjpeg_is_decoded_and_encoded(viewers: Connect) -> None:
    command = ffmpeg_command("mjpeg", "-c:v", "mjpeg", "-q:v", "5")
    hub = exec_hub(ExecConfig(command=command, stream_format=StreamFormat.MJPEG))
    try:
        viewer = await viewers(hub)
        await viewer.until(lambda: viewer.video_frames >= 20)
        assert viewer.sizes == {(320, 240)}
        assert hub.stats().codecs[0].encodes > 0
    finally:
        await hub.close()


async def test_exec_command_missing_is_reported_and_pattern_streams(
    tmp_path: Path, viewers: Connect
) -> None:
    events = Events()
    missing = str(tmp_path / "no-such-camera-tool")
    hub = exec_hub(ExecConfig(command=(missing, "--inline")), events)
    try:
        viewer = await viewers(hub)
        failed = await events.wait(MediaEventKind.SOURCE_FAILED)
        assert failed.error is not None
        assert failed.error.device == missing
        await viewer.until(lambda: viewer.video_frames >= 10)
        assert viewer.sizes == {(160, 120)}
    finally:
        await hub.close()


async def test_exec_command_exit_is_reported_with_its_code() -> None:
    source = ExecSource(
        ExecConfig(command=("sh", "-c", "echo broken camera >&2; exit 3")), MediaClock()
    )
    await source.open()
    try:
        with pytest.raises(DeviceNotFoundError) as caught:
            await source.read()
        assert "exited with code 3" in caught.value.message
        assert "broken camera" in caught.value.message
    finally:
        await source.close()


@pytest.mark.parametrize("backend", ["alsa", "pulse"])
async def test_missing_microphone_falls_back_to_tone(backend: str, viewers: Connect) -> None:
    events = Events()
    hub = MediaHub(
        MediaConfig(
            video=FALLBACK,
            audio=MicrophoneConfig(backend=backend, device="hw:9,0"),
            backoff=FAST_RETRY,
            fanout=FanoutConfig(linger_seconds=0.2),
        ),
        on_event=events,
    )
    try:
        viewer = await viewers(hub, video=False, audio=True)
        failed = await events.wait(MediaEventKind.SOURCE_FAILED, media="audio")
        assert failed.error is not None
        assert failed.error.device == f"{backend}:hw:9,0"
        await viewer.until(lambda: viewer.audio_frames >= 25)
        assert hub.stats().audio_state is CaptureState.FALLBACK
    finally:
        await hub.close()


async def test_stalled_source_counts_as_lost(tmp_path: Path) -> None:
    """A device that stops delivering without an error is treated as gone."""
    events = Events()
    config = MediaConfig(
        video=ExecConfig(command=("sleep", "30")),
        fallback=FALLBACK,
        backoff=FAST_RETRY,
        fanout=FanoutConfig(linger_seconds=0.2, source_timeout=0.5),
    )
    hub = MediaHub(config, on_event=events)
    try:
        jpeg = await hub.snapshot()  # served by the fallback while the command is silent
        assert jpeg[:2] == b"\xff\xd8"
        failed = await events.wait(MediaEventKind.SOURCE_FAILED)
        assert failed.error is not None
        assert "no media" in failed.error.message
    finally:
        await hub.close()


async def test_h264_camera_is_passed_through(tmp_path: Path, viewers: Connect) -> None:
    """A V4L2 camera that encodes H.264 itself: fed through a FIFO by a real-time ffmpeg."""
    device, fifo, events = tmp_path / "video0", tmp_path / "h264.fifo", Events()
    device.touch()
    os.mkfifo(fifo)
    writer = await asyncio.create_subprocess_exec(
        *ffmpeg_command("h264", *H264_ARGS)[:-1], "-y", str(fifo)
    )

    def h264_camera(config: V4L2Config) -> InputContainer:
        return av.open(str(fifo), format="h264")

    hub = camera_hub(device, events, h264_camera)
    try:
        viewer = await viewers(hub, codec="H264")
        await viewer.until(lambda: viewer.video_frames >= 30)
        assert viewer.sizes == {(320, 240)}
        stats = hub.stats()
        assert stats.codecs[0].encoder == "passthrough"
        assert (stats.codecs[0].encodes, stats.decodes) == (0, 0)
    finally:
        await hub.close()
        with contextlib.suppress(ProcessLookupError):
            writer.kill()
        await writer.wait()


def test_force_key_frame_on_a_device_without_the_control(tmp_path: Path) -> None:
    not_a_camera = tmp_path / "video0"
    not_a_camera.touch()
    assert force_key_frame(str(not_a_camera)) is False  # ENOTTY: logged, not raised
    assert force_key_frame(str(tmp_path / "missing")) is False
