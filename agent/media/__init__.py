"""Media engine: one capture, one encode per codec, many viewers; talk-back; snapshots.

Public API (aiortc's camelCase stays inside this package):

- ``MediaHub``: ``subscribe_video(codec)``, ``subscribe_audio()``, ``request_keyframe()``,
  ``snapshot()``, ``viewers``, ``stats()``, ``close()``.
- ``FanoutTrack``: a viewer's track for ``RTCPeerConnection.addTrack``; ``attach(sender)``.
- ``TalkbackSink``: plays a caller's audio track and counts non-silent samples.
- ``ToneTrack``: a tone as an aiortc track (a caller's stand-in microphone).
- Configuration records in ``agent.media.config``; events in ``MediaEvent``.
"""

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
from agent.media.supervisor import CaptureState, MediaEvent, MediaEventKind
from agent.media.talkback import TalkbackSink
from agent.media.video_pipeline import CodecStats

__all__ = [
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
    "ViewerStats",
]
