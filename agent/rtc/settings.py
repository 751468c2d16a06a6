"""Settings of calls and their media: ``[calls]``, ``[video]`` and ``[audio]``.

In TOML::

    [calls]
    max_calls = 4
    allow_roles = ["admin", "user"]      # any of these rules lets a caller in
    allow_users = ["alice"]              # account names or user ids
    allow_groups = ["family"]            # callers connected in one of these groups
    host_interfaces = ["eth0"]           # host candidates only here (default: everywhere)
    host_addresses = ["192.168.1.20"]
    ice_transport_policy = "relay"       # only relayed candidates (default "all")
    preload = true                       # load the media stack at start (default: on first need)

    [[calls.ice_servers]]
    urls = ["turn:turn.example.net:3478?transport=udp"]
    username = "doorbell"
    credential = "..."                   # a secret: redacted in `config show`

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

The models only validate; ``media_config``, ``sink_config``, ``ice_options`` and
``call_policy`` map them onto the records the media engine and the calls take (and load
those modules only when called, so reading settings stays light).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    from agent.media.config import MediaConfig, SinkConfig
    from agent.rtc.ice import IceOptions
    from agent.rtc.policy import CallPolicy

__all__ = [
    "AudioSettings",
    "CallsSettings",
    "IceServerSettings",
    "VideoSettings",
    "call_policy",
    "check_ice_url",
    "ice_options",
    "media_config",
    "sink_config",
]

# RFC 7064 / RFC 7065 URIs: stun[s]:host[:port], turn[s]:host[:port][?transport=udp|tcp].
_ICE_URL_RE: Final = re.compile(
    r"^(stuns?):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$"
    r"|^(turns?):(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?(\?transport=(udp|tcp))?$"
)
_INTERFACE_RE: Final = re.compile(r"^[A-Za-z0-9_.:@-]{1,32}$")
_FORMAT_RE: Final = re.compile(r"^[a-z0-9_]{1,32}$")


RoleName = Literal["admin", "user", "device"]
CodecName = Literal["VP8", "H264"]


def _people() -> list[RoleName]:
    return ["admin", "user"]


def _all_codecs() -> list[CodecName]:
    return ["VP8", "H264"]


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _split_command(value: object) -> object:
    # A command given as one string is split as a shell would, without running one.
    return shlex.split(value) if isinstance(value, str) else value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_ice_url(url: str) -> str:
    """``url`` if it is a STUN or TURN URL (RFC 7064, RFC 7065); ValueError naming it if not."""
    if not _ICE_URL_RE.match(url):
        raise ValueError(
            f"{url!r} is not a STUN or TURN URL: use stun:HOST[:PORT] or "
            "turn:HOST[:PORT][?transport=udp|tcp] (turns: and stuns: for TLS)"
        )
    return url


class IceServerSettings(_Model):
    """A STUN or TURN server ([[calls.ice_servers]])."""

    urls: Annotated[list[str], BeforeValidator(_one_or_many)] = Field(min_length=1)
    username: str | None = None
    credential: SecretStr | None = None

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, value: list[str]) -> list[str]:
        return [check_ice_url(url) for url in value]

    @model_validator(mode="after")
    def _turn_credentials(self) -> IceServerSettings:
        turn = any(url.startswith("turn") for url in self.urls)
        if turn and (self.username is None or self.credential is None):
            raise ValueError("a TURN server needs username and credential")
        return self


class CallsSettings(_Model):
    """Who may call, how many at once, and how calls connect ([calls])."""

    enabled: bool = True
    max_calls: int = Field(4, ge=1, le=64)
    allow_users: list[str] = Field(default_factory=list)
    allow_groups: list[str] = Field(default_factory=list)
    allow_roles: list[RoleName] = Field(default_factory=_people)
    ice_servers: list[IceServerSettings] = Field(default_factory=list)
    # "relay": offer relayed candidates only (W3C iceTransportPolicy), for sites that must
    # not show callers their addresses; a hub with this setting tells its viewers too.
    ice_transport_policy: Literal["all", "relay"] = "all"
    host_interfaces: list[str] = Field(default_factory=list)
    host_addresses: list[str] = Field(default_factory=list)
    ipv6: bool = True
    # Resolve browsers' mDNS (.local) candidates ourselves; this long at most per name.
    mdns: bool = True
    mdns_timeout: float = Field(1.0, gt=0, le=10)
    ring_timeout: float = Field(60.0, gt=0, le=3600)
    # aiortc, PyAV and the camera pipeline load when a call, a snapshot or a motion rule
    # first needs them (an idle agent stays small); true loads them at start instead, for a
    # device whose very first call must be answered fastest.
    preload: bool = False

    @field_validator("host_interfaces")
    @classmethod
    def _interface_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _INTERFACE_RE.match(name):
                raise ValueError(f"{name!r} is not an interface name")
        return value

    @field_validator("host_addresses")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IP address") from None
        return value


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
        items = _one_or_many(value)
        return [v.upper() for v in items] if isinstance(items, list) else items

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


# -- mapping onto the engines' records ---------------------------------------------------


def media_config(video: VideoSettings, audio: AudioSettings) -> MediaConfig:
    """The media engine's configuration for these settings."""
    from agent.media.config import (
        EncoderConfig,
        ExecConfig,
        MediaConfig,
        MicrophoneConfig,
        StreamFormat,
        TestPatternConfig,
        ToneConfig,
        V4L2Config,
        VideoCodec,
    )

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
    from agent.media.config import FileSinkConfig, NullSinkConfig, SpeakerConfig

    if audio.sink == "speaker":
        return SpeakerConfig(audio.speaker_device)
    if audio.sink == "file" and audio.file is not None:
        return FileSinkConfig(audio.file.expanduser())
    return NullSinkConfig()


def ice_options(calls: CallsSettings) -> IceOptions:
    """The ICE policy of calls."""
    from agent.rtc.ice import IceOptions, IceServer

    servers = tuple(
        IceServer(
            tuple(s.urls),
            s.username,
            s.credential.get_secret_value() if s.credential is not None else None,
        )
        for s in calls.ice_servers
    )
    return IceOptions(
        servers=servers,
        interfaces=tuple(calls.host_interfaces),
        addresses=tuple(calls.host_addresses),
        ipv6=calls.ipv6,
        mdns=calls.mdns,
        mdns_timeout=calls.mdns_timeout,
        transport_policy=calls.ice_transport_policy,
    )


def call_policy(calls: CallsSettings) -> CallPolicy:
    """Who may call."""
    from agent.rtc.policy import CallPolicy

    return CallPolicy.of(
        users=calls.allow_users,
        groups=calls.allow_groups,
        roles=calls.allow_roles,
        max_calls=calls.max_calls,
    )
