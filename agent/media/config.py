"""Plain configuration records for the media engine (sources, encoders, fan-out, sinks).

The settings module maps its TOML sections onto these records; the media engine itself
never reads files or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

__all__ = [
    "AudioSourceConfig",
    "BackoffConfig",
    "EncoderConfig",
    "ExecConfig",
    "FanoutConfig",
    "FileSinkConfig",
    "MediaConfig",
    "MicrophoneConfig",
    "NullSinkConfig",
    "SinkConfig",
    "SpeakerConfig",
    "StreamFormat",
    "TestPatternConfig",
    "ToneConfig",
    "V4L2Config",
    "VideoCodec",
    "VideoSourceConfig",
]


class VideoCodec(StrEnum):
    """Video codecs the fan-out can produce; values are the RTP encoding names."""

    H264 = "H264"
    VP8 = "VP8"

    @classmethod
    def from_mime(cls, mime_or_name: str) -> VideoCodec:
        """``video/H264``, ``h264`` or ``H264`` -> ``VideoCodec.H264``; ValueError otherwise."""
        name = mime_or_name.rpartition("/")[2].upper()
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unsupported video codec {mime_or_name!r}") from None


class StreamFormat(StrEnum):
    """What an exec source writes to its standard output."""

    H264 = "h264"  # Annex B byte stream (RFC 6184 section 5.1's "byte stream format")
    MJPEG = "mjpeg"  # concatenated JPEG images


@dataclass(frozen=True, slots=True)
class TestPatternConfig:
    """A generated moving test pattern (lavfi ``testsrc2``); needs no hardware."""

    __test__ = False  # not a pytest test class despite the name

    width: int = 640
    height: int = 480
    fps: int = 30
    pattern: str = "testsrc2"


@dataclass(frozen=True, slots=True)
class V4L2Config:
    """A V4L2 camera; ``input_format`` h264 is passed through without decoding."""

    device: str = "/dev/video0"
    width: int = 640
    height: int = 480
    fps: int = 30
    input_format: str = "yuyv422"


@dataclass(frozen=True, slots=True)
class ExecConfig:
    """A command writing H.264 Annex B or MJPEG to stdout (``rpicam-vid -t 0 --inline -o -``)."""

    command: tuple[str, ...]
    stream_format: StreamFormat = StreamFormat.H264
    fps: int = 30  # only spaces timestamps of frames that arrive in one read


VideoSourceConfig = TestPatternConfig | V4L2Config | ExecConfig


@dataclass(frozen=True, slots=True)
class ToneConfig:
    """A generated sine tone (the default microphone)."""

    frequency: int = 400  # divides 48 kHz evenly, so one 20 ms frame repeats seamlessly
    volume: float = 0.3


@dataclass(frozen=True, slots=True)
class MicrophoneConfig:
    """An ALSA or PulseAudio capture device."""

    backend: str = "alsa"  # "alsa" or "pulse"
    device: str = "default"


AudioSourceConfig = ToneConfig | MicrophoneConfig


@dataclass(frozen=True, slots=True)
class SpeakerConfig:
    """Talk-back to an ALSA playback device."""

    device: str = "default"


@dataclass(frozen=True, slots=True)
class FileSinkConfig:
    """Talk-back written to a WAV file (48 kHz, 16 bit, mono)."""

    path: Path


@dataclass(frozen=True, slots=True)
class NullSinkConfig:
    """Talk-back counted and discarded."""


SinkConfig = SpeakerConfig | FileSinkConfig | NullSinkConfig


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    """Shared encoder settings (one encoder per negotiated codec)."""

    bitrate: int = 1_000_000
    keyframe_interval: int = 60  # frames between scheduled key frames (the GOP)
    hardware: bool = True  # try h264_v4l2m2m before libx264
    x264_preset: str = "ultrafast"
    threads: int = 0  # encoder threads; 0: one up to VGA, more on bigger pictures and CPUs
    vp8_cpu_used: int = -6  # libvpx speed in realtime mode, -16..16: higher is faster
    opus_bitrate: int = 64_000
    jpeg_quality: int = 4  # mjpeg qscale: 2 (best) .. 31 (worst)


@dataclass(frozen=True, slots=True)
class BackoffConfig:
    """Capped exponential backoff with jitter for reopening a lost device.

    The schedule is :func:`agent.retry.backoff`'s (see :class:`agent.media.policy.Backoff`).
    Raises ValueError naming the field for values no schedule can follow.
    """

    initial: float = 1.0  # the first delay's ceiling, seconds
    maximum: float = 30.0  # no delay is longer
    factor: float = 2.0
    jitter: float = 0.1  # fraction of each delay drawn at random, 0..1 (taken off the ceiling)
    stable_after: float = 10.0  # a device that ran this long resets the backoff

    def __post_init__(self) -> None:
        problems = [
            f"{name} {rule} (got {value})"
            for name, value, ok, rule in (
                ("initial", self.initial, self.initial > 0, "must be above 0"),
                ("factor", self.factor, self.factor >= 1, "must be at least 1"),
                ("maximum", self.maximum, self.maximum >= self.initial, "must be >= initial"),
                ("jitter", self.jitter, 0 <= self.jitter <= 1, "must be between 0 and 1"),
                ("stable_after", self.stable_after, self.stable_after >= 0, "must be >= 0"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("backoff: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class FanoutConfig:
    """How encoded frames reach viewers."""

    linger_seconds: float = 3.0  # keep the source open this long after the last viewer
    video_queue: int = 10  # frames per viewer before that viewer drops
    audio_queue: int = 25  # 20 ms packets per viewer before dropping the oldest
    keyframe_min_interval: float = 0.5  # at most one forced key frame per this, all viewers
    viewer_keyframe_interval: float = 2.0  # at most one key-frame request per viewer per this
    source_timeout: float = 5.0  # a device silent this long (or at open) counts as gone
    adapt_bitrate: bool = False  # follow REMB of the slowest reasonable viewer (reopens encoder)
    min_bitrate: int = 150_000  # viewers estimated below this drop frames instead


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """Everything the media engine needs."""

    video: VideoSourceConfig = field(default_factory=TestPatternConfig)
    audio: AudioSourceConfig = field(default_factory=ToneConfig)
    fallback: TestPatternConfig | None = None  # None: a pattern the size of ``video``
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    fanout: FanoutConfig = field(default_factory=FanoutConfig)
    backoff: BackoffConfig = field(default_factory=BackoffConfig)
    codecs: tuple[VideoCodec, ...] = (VideoCodec.VP8, VideoCodec.H264)
