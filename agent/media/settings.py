"""Settings of the camera, the microphone and talk-back: ``[video]`` and ``[audio]``.

In TOML::

    [video]
    source = "exec"                      # pattern (default) | v4l2 | exec
    command = ["rpicam-vid", "-t", "0", "--inline", "--intra", "30", "-o", "-"]
    width = 1280
    height = 720
    fps = 30
    codecs = ["H264", "VP8"]             # preference; H.264 from the camera is passed through

    [audio]
    source = "alsa"                      # tone (default) | alsa | pulse
    device = "plughw:1,0"
    sink = "speaker"                     # null (default) | speaker | file
    speaker_device = "default"

The models only validate; :func:`media_config` and :func:`sink_config` map them onto the
records of :mod:`agent.media.config` that the media engine takes. This module imports
neither aiortc nor PyAV, so reading settings stays light (``agent.config`` composes it).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from agent.media.config import (
    EncoderConfig,
    ExecConfig,
    FileSinkConfig,
    MediaConfig,
    MicrophoneConfig,
    NullSinkConfig,
    SinkConfig,
    SpeakerConfig,
    StreamFormat,
    TestPatternConfig,
    ToneConfig,
    V4L2Config,
    VideoCodec,
)

__all__ = ["AudioSettings", "CodecName", "VideoSettings", "media_config", "sink_config"]

_FORMAT_RE: Final = re.compile(r"^[a-z0-9_]{1,32}$")

CodecName = Literal["VP8", "H264"]


def _all_codecs() -> list[CodecName]:
    return ["VP8", "H264"]


def _split_command(value: object) -> object:
    # A command given as one string is split as a shell would, without running one.
    return shlex.split(value) if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VideoSettings(_Model):
    """The camera: a test pattern, a V4L2 device or a command ([video])."""

    enabled: bool = True
    source: Literal["pattern", "v4l2", "exec"] = "pattern"
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: int = Field(30, ge=1, le=120)
    device: str = Field("/dev/video0", min_length=1)  # v4l2
    input_format: str = "yuyv422"  # v4l2: yuyv422, mjpeg, h264 (passed through), ...
    command: Annotated[list[str], BeforeValidator(_split_command)] = Field(default_factory=list)
    stream_format: Literal["h264", "mjpeg"] = "h264"  # exec: what the command writes
    pattern: str = "testsrc2"
    codecs: list[CodecName] = Field(default_factory=_all_codecs)
    bitrate: int = Field(1_000_000, ge=50_000, le=50_000_000)
    keyframe_interval: int = Field(60, ge=1, le=3600)  # frames between scheduled key frames
    hardware_encoder: bool = True  # h264_v4l2m2m when present

    @field_validator("codecs", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        # One name alone (codecs = "h264") is a list of one; names in any case.
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            return items
        return [v.upper() if isinstance(v, str) else v for v in items]

    @field_validator("input_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if not _FORMAT_RE.match(value):
            raise ValueError(f"{value!r} is not a V4L2 input format name (yuyv422, mjpeg, h264)")
        return value

    @model_validator(mode="after")
    def _source_options(self) -> VideoSettings:
        if self.source == "exec" and not self.command:
            raise ValueError('source = "exec" needs command (e.g. ["rpicam-vid", "-o", "-"])')
        if not self.codecs:
            raise ValueError("codecs needs at least one of VP8, H264")
        return self


class AudioSettings(_Model):
    """The microphone and the talk-back output ([audio])."""

    enabled: bool = True  # send the microphone to callers
    source: Literal["tone", "alsa", "pulse"] = "tone"
    device: str = Field("default", min_length=1)
    tone_frequency: int = Field(400, ge=50, le=8000)
    talkback: bool = True  # receive callers' voices
    sink: Literal["null", "speaker", "file"] = "null"
    speaker_device: str = Field("default", min_length=1)
    file: Path | None = None

    @field_validator("tone_frequency")
    @classmethod
    def _whole_cycles(cls, value: int) -> int:
        if value % 50:
            raise ValueError("tone_frequency must be a multiple of 50 Hz (whole cycles in 20 ms)")
        return value

    @model_validator(mode="after")
    def _sink_file(self) -> AudioSettings:
        if self.sink == "file" and self.file is None:
            raise ValueError('sink = "file" needs file (a .wav path)')
        return self


def media_config(video: VideoSettings, audio: AudioSettings) -> MediaConfig:
    """The media engine's configuration for these settings."""
    source: TestPatternConfig | V4L2Config | ExecConfig
    if video.source == "v4l2":
        source = V4L2Config(video.device, video.width, video.height, video.fps, video.input_format)
    elif video.source == "exec":
        source = ExecConfig(tuple(video.command), StreamFormat(video.stream_format), video.fps)
    else:
        source = TestPatternConfig(video.width, video.height, video.fps, video.pattern)
    microphone: ToneConfig | MicrophoneConfig = (
        ToneConfig(frequency=audio.tone_frequency)
        if audio.source == "tone"
        else MicrophoneConfig(backend=audio.source, device=audio.device)
    )
    encoder = EncoderConfig(
        bitrate=video.bitrate,
        keyframe_interval=video.keyframe_interval,
        hardware=video.hardware_encoder,
    )
    fallback = TestPatternConfig(video.width, video.height, video.fps, video.pattern)
    return MediaConfig(
        video=source,
        audio=microphone,
        fallback=fallback,
        encoder=encoder,
        codecs=tuple(VideoCodec(c) for c in video.codecs),
    )


def sink_config(audio: AudioSettings) -> SinkConfig:
    """Where callers' voices go."""
    if audio.sink == "speaker":
        return SpeakerConfig(audio.speaker_device)
    if audio.sink == "file" and audio.file is not None:
        return FileSinkConfig(audio.file.expanduser())
    return NullSinkConfig()
