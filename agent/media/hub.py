"""``MediaHub``: the device's camera and microphone, shared by every call.

    hub = MediaHub(MediaConfig(...), on_event=...)
    track = hub.subscribe_video()          # per viewer; recv() returns shared av.Packets
    sender = pc.addTrack(track)
    track.attach(sender)                   # codec from negotiation, PLI/FIR, REMB
    pc.addTrack(hub.subscribe_audio())
    jpeg = await hub.snapshot()
    track.stop()                           # when the call ends (aiortc stops only started senders)

The camera opens at the first subscriber and is released ``linger_seconds`` after the
last; each frame is encoded once per negotiated codec; a missing device falls back to the
test pattern or tone, is reported through ``on_event`` and retried with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.media.audio import AudioSource, ToneSource, make_audio_source
from agent.media.audio_pipeline import AudioPipeline
from agent.media.config import (
    MediaConfig,
    TestPatternConfig,
    ToneConfig,
    VideoCodec,
    VideoSourceConfig,
)
from agent.media.errors import DeviceNotFoundError
from agent.media.fanout import FanoutTrack
from agent.media.runtime import MediaClock
from agent.media.sources import PatternSource, VideoSource, make_video_source
from agent.media.supervisor import CaptureState, MediaEvent, MediaEventKind
from agent.media.video_pipeline import CodecStats, VideoPipeline

__all__ = ["MediaHub", "MediaStats", "ViewerStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ViewerStats:
    """One viewer's track."""

    track_id: str
    kind: str
    codec: str
    sent: int
    dropped: int
    skipped: int
    queued: int
    keyframes_sent: int
    keyframe_requests: int
    remb: int | None


@dataclass(frozen=True, slots=True)
class MediaStats:
    """Figures for status pages, metrics and tests."""

    video_state: CaptureState
    video_source: str
    audio_state: CaptureState
    audio_source: str
    frames_captured: int
    frames_skipped: int
    passthrough_units: int
    decodes: int
    audio_frames: int
    audio_encodes: int
    codecs: tuple[CodecStats, ...]
    viewers: tuple[ViewerStats, ...]
    errors: tuple[DeviceNotFoundError, ...]  # devices missing right now (media on fallback)


class MediaHub:
    """One capture and one encode per codec for every viewer of this device."""

    def __init__(
        self,
        config: MediaConfig | None = None,
        *,
        on_event: Callable[[MediaEvent], None] | None = None,
        video_source: Callable[[MediaClock], VideoSource] | None = None,
        audio_source: Callable[[], AudioSource] | None = None,
    ) -> None:
        """Create the hub; nothing opens until the first subscriber.

        Args:
            config: sources, encoders and fan-out settings (defaults: pattern and tone).
            on_event: called with every ``MediaEvent`` (device missing, lost, back, released).
            video_source: makes the primary video source from the hub's capture clock
                (default: from ``config.video``); a custom source falls back to the pattern.
            audio_source: makes the primary audio source (default: from ``config.audio``).
        """
        self.config = config = config or MediaConfig()
        self._on_event = on_event
        self._clock = MediaClock()
        self._tracks: set[FanoutTrack] = set()
        self.video = VideoPipeline(
            config,
            clock=self._clock,
            primary=lambda: (video_source or _default_video(config))(self._clock),
            fallback=self._video_fallback(video_source is not None),
            on_event=self._event,
        )
        self.audio = AudioPipeline(
            config,
            clock=self._clock,
            primary=audio_source or (lambda: make_audio_source(config.audio)),
            fallback=self._audio_fallback(audio_source is not None),
            on_event=self._event,
        )
        self._errors: dict[str, DeviceNotFoundError] = {}

    @property
    def device_errors(self) -> tuple[DeviceNotFoundError, ...]:
        """Configured devices that are missing right now, each naming its device."""
        return tuple(self._errors.values())

    @property
    def viewers(self) -> int:
        """Live subscribed tracks (video and audio)."""
        return sum(1 for track in self._tracks if track.readyState == "live")

    def subscribe_video(self, codec: VideoCodec | str | None = None) -> FanoutTrack:
        """A viewer's video track; the codec comes from ``codec`` or from ``track.attach``."""
        chosen = VideoCodec.from_mime(codec) if isinstance(codec, str) else codec
        return self._keep(self.video.subscribe(chosen))

    def subscribe_audio(self) -> FanoutTrack:
        """A listener's audio track (Opus packets shared by every listener)."""
        return self._keep(self.audio.subscribe())

    def request_keyframe(self, codec: VideoCodec | str | None = None) -> None:
        """Force a key frame soon (rate limited) for ``codec``, or for every codec."""
        chosen = VideoCodec.from_mime(codec) if isinstance(codec, str) else codec
        self.video.request_keyframe(chosen)

    async def snapshot(self) -> bytes:
        """A JPEG of the current picture; opens the camera briefly if nobody watches.

        Raises:
            TimeoutError: no picture arrived (not even from the fallback pattern).
        """
        return await self.video.snapshot()

    def stats(self) -> MediaStats:
        """Current figures."""
        video, audio = self.video.session, self.audio.session
        counters = video.counters if video is not None else None
        return MediaStats(
            video_state=self.video.state,
            video_source=video.source_name if video else "",
            audio_state=self.audio.state,
            audio_source=audio.source_name if audio else "",
            frames_captured=counters.frames if counters else 0,
            frames_skipped=counters.skipped if counters else 0,
            passthrough_units=counters.units if counters else 0,
            decodes=counters.decodes if counters else 0,
            audio_frames=audio.frames if audio else 0,
            audio_encodes=self.audio.encodes,
            codecs=tuple(self.video.codec_stats()),
            viewers=tuple(_viewer_stats(t) for t in self._tracks if t.readyState == "live"),
            errors=self.device_errors,
        )

    async def close(self) -> None:
        """Stop every track and release every device."""
        for track in tuple(self._tracks):
            track.stop()
        await self.video.close()
        await self.audio.close()

    def _keep(self, track: FanoutTrack) -> FanoutTrack:
        self._tracks.add(track)
        track.on("ended", lambda: self._tracks.discard(track))
        return track

    def _event(self, event: MediaEvent) -> None:
        if event.error is not None:
            self._errors[event.media] = event.error
        elif event.kind in (MediaEventKind.SOURCE_OPENED, MediaEventKind.SOURCE_RELEASED):
            self._errors.pop(event.media, None)
        if self._on_event is not None:
            self._on_event(event)

    def _video_fallback(self, custom: bool) -> Callable[[], VideoSource] | None:
        video = self.config.video
        if not custom and isinstance(video, TestPatternConfig):
            return None  # the pattern is the source; nothing to fall back to
        pattern = self.config.fallback or _pattern_like(video)
        return lambda: PatternSource(pattern, self._clock)

    def _audio_fallback(self, custom: bool) -> Callable[[], AudioSource] | None:
        if not custom and isinstance(self.config.audio, ToneConfig):
            return None
        return lambda: ToneSource(ToneConfig())


def _default_video(config: MediaConfig) -> Callable[[MediaClock], VideoSource]:
    return lambda clock: make_video_source(config.video, clock)


def _pattern_like(video: VideoSourceConfig) -> TestPatternConfig:
    """A test pattern the size and rate of the configured camera."""
    if isinstance(video, TestPatternConfig):
        return video
    width = getattr(video, "width", 640)
    height = getattr(video, "height", 480)
    return TestPatternConfig(width=width, height=height, fps=video.fps)


def _viewer_stats(track: FanoutTrack) -> ViewerStats:
    return ViewerStats(
        track_id=track.id,
        kind=track.kind,
        codec=str(track.codec) if track.codec else ("opus" if track.kind == "audio" else ""),
        sent=track.sent,
        dropped=track.dropped,
        skipped=track.skipped,
        queued=track.queued,
        keyframes_sent=track.keyframes_sent if track.kind == "video" else 0,
        keyframe_requests=track.keyframe_requests,
        remb=track.remb,
    )
