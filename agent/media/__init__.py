"""Media engine: one capture, one encode per codec, many viewers; talk-back; snapshots.

Public API (aiortc's camelCase stays inside this package):

- ``MediaHub``: ``subscribe_video(codec)``, ``subscribe_audio()``, ``request_keyframe()``,
  ``snapshot()``, ``viewers``, ``stats()``, ``close()``.
- ``FanoutTrack``: a viewer's track for ``RTCPeerConnection.addTrack``; ``attach(sender)``.
- ``TalkbackSink``: plays a caller's audio track and counts non-silent samples.
- ``ToneTrack``: a tone as an aiortc track (a caller's stand-in microphone).
- Configuration records in ``agent.media.config``; events in ``MediaEvent``.
- The ``[video]`` and ``[audio]`` settings in ``agent.media.settings``, with
  ``media_config`` and ``sink_config`` mapping them onto the records.

Names are imported on first use: reading the settings (``agent.media.settings``, which
``agent.config`` composes) or the records does not load aiortc or PyAV, which an idle
agent does without.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.lazy import lazy_exports

if TYPE_CHECKING:
    from agent.media.audio import ToneTrack
    from agent.media.config import (
        BackoffConfig,
        EncoderConfig,
        ExecConfig,
        FanoutConfig,
        FileSinkConfig,
        MediaConfig,
        MicrophoneConfig,
        NullSinkConfig,
        SpeakerConfig,
        StreamFormat,
        TestPatternConfig,
        ToneConfig,
        V4L2Config,
        VideoCodec,
    )
    from agent.media.errors import DeviceNotFoundError, EncoderUnavailableError, MediaError
    from agent.media.fanout import FanoutTrack
    from agent.media.hub import MediaHub, MediaStats, ViewerStats
    from agent.media.settings import AudioSettings, VideoSettings, media_config, sink_config
    from agent.media.supervisor import CaptureState, MediaEvent, MediaEventKind
    from agent.media.talkback import TalkbackSink
    from agent.media.video_pipeline import CodecStats

__all__ = [
    "AudioSettings",
    "BackoffConfig",
    "CaptureState",
    "CodecStats",
    "DeviceNotFoundError",
    "EncoderConfig",
    "EncoderUnavailableError",
    "ExecConfig",
    "FanoutConfig",
    "FanoutTrack",
    "FileSinkConfig",
    "MediaConfig",
    "MediaError",
    "MediaEvent",
    "MediaEventKind",
    "MediaHub",
    "MediaStats",
    "MicrophoneConfig",
    "NullSinkConfig",
    "SpeakerConfig",
    "StreamFormat",
    "TalkbackSink",
    "TestPatternConfig",
    "ToneConfig",
    "ToneTrack",
    "V4L2Config",
    "VideoCodec",
    "VideoSettings",
    "ViewerStats",
    "media_config",
    "sink_config",
]

_HOMES = {
    "AudioSettings": "agent.media.settings",
    "BackoffConfig": "agent.media.config",
    "CaptureState": "agent.media.supervisor",
    "CodecStats": "agent.media.video_pipeline",
    "DeviceNotFoundError": "agent.media.errors",
    "EncoderConfig": "agent.media.config",
    "EncoderUnavailableError": "agent.media.errors",
    "ExecConfig": "agent.media.config",
    "FanoutConfig": "agent.media.config",
    "FanoutTrack": "agent.media.fanout",
    "FileSinkConfig": "agent.media.config",
    "MediaConfig": "agent.media.config",
    "MediaError": "agent.media.errors",
    "MediaEvent": "agent.media.supervisor",
    "MediaEventKind": "agent.media.supervisor",
    "MediaHub": "agent.media.hub",
    "MediaStats": "agent.media.hub",
    "MicrophoneConfig": "agent.media.config",
    "NullSinkConfig": "agent.media.config",
    "SpeakerConfig": "agent.media.config",
    "StreamFormat": "agent.media.config",
    "TalkbackSink": "agent.media.talkback",
    "TestPatternConfig": "agent.media.config",
    "ToneConfig": "agent.media.config",
    "ToneTrack": "agent.media.audio",
    "V4L2Config": "agent.media.config",
    "VideoCodec": "agent.media.config",
    "VideoSettings": "agent.media.settings",
    "ViewerStats": "agent.media.hub",
    "media_config": "agent.media.settings",
    "sink_config": "agent.media.settings",
}


__getattr__ = lazy_exports(__name__, _HOMES)
