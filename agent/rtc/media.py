"""The media a side of a call sends, and what an offer asks for.

``media`` in ``connect_rtc`` mirrors the reference's ``{video, audio} | MediaStream``:

* ``None``: no audio or video at all (data channels only);
* ``LocalMedia(video=track, audio=track)``: send these tracks (the MediaStream case);
* ``{"video": X, "audio": Y}`` where each value is ``True`` (send this side's device, from
  its :class:`MediaDevices`; DEVICE_NOT_FOUND if it has none), a ``MediaStreamTrack`` (send
  it) or ``False``/absent (send nothing of that kind).

A caller receives every kind it names in the dict, sending or not (``recvonly`` when it
sends nothing), so ``{"video": False, "audio": False}`` watches and listens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

from aiortc import RTCRtpSender
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription

from agent.errors import Codes, DeviceNotFoundError, RealtimeError

__all__ = [
    "KINDS",
    "Attachable",
    "LocalMedia",
    "MediaDevices",
    "MediaRequest",
    "NoMediaDevices",
    "OfferMedia",
    "codec_preferences",
    "media_request",
    "offer_media",
]

KINDS: Final = ("video", "audio")
_SENDING: Final = frozenset({"sendrecv", "sendonly"})
_RECEIVING: Final = frozenset({"sendrecv", "recvonly"})


@runtime_checkable
class Attachable(Protocol):
    """A track that hooks its sender (``FanoutTrack``: codec, PLI/FIR, REMB)."""

    def attach(self, sender: RTCRtpSender) -> None:
        """Hook ``sender``, the one this track was added with."""


class LocalMedia:
    """The tracks this side sends (the reference's MediaStream)."""

    def __init__(
        self, *, video: MediaStreamTrack | None = None, audio: MediaStreamTrack | None = None
    ) -> None:
        for kind, track in (("video", video), ("audio", audio)):
            if track is not None and track.kind != kind:
                raise RealtimeError(
                    Codes.INVALID_PARAMETER, f'The {kind} track is a "{track.kind}" track.'
                )
        self.video = video
        self.audio = audio

    def __repr__(self) -> str:
        return f"<LocalMedia video={self.video is not None} audio={self.audio is not None}>"

    def track(self, kind: str) -> MediaStreamTrack | None:
        """The track of ``kind``, if any."""
        return self.video if kind == "video" else self.audio if kind == "audio" else None

    def tracks(self) -> list[MediaStreamTrack]:
        """Every track."""
        return [t for t in (self.video, self.audio) if t is not None]

    def stop(self) -> None:
        """Stop every track (the call is over; the reference stops them too)."""
        for track in self.tracks():
            track.stop()


class MediaDevices(Protocol):
    """This side's devices, for ``media`` flags (the reference's getUserMedia)."""

    def get_user_media(self, *, video: bool, audio: bool) -> LocalMedia:
        """Tracks for the kinds asked; DeviceNotFoundError when one is not there."""


class NoMediaDevices:
    """No camera and no microphone (a plain Python client)."""

    def get_user_media(self, *, video: bool, audio: bool) -> LocalMedia:
        """Nothing for nothing; DEVICE_NOT_FOUND for anything."""
        if video or audio:
            raise DeviceNotFoundError()
        return LocalMedia()


@dataclass(frozen=True, slots=True)
class MediaRequest:
    """What one side sends (``local``) and which kinds it negotiates at all."""

    local: LocalMedia | None
    kinds: tuple[str, ...]


def media_request(media: Any, devices: MediaDevices) -> MediaRequest:
    """Interpret ``connect_rtc``'s ``media`` (see the module docstring).

    Raises:
        RealtimeError: DEVICE_NOT_FOUND "Requested media device not found." when a flag
            asks for a device this side does not have; INVALID_PARAMETER for a bad value.
    """
    if media is None:
        return MediaRequest(None, ())
    if isinstance(media, LocalMedia):
        return MediaRequest(media, tuple(k for k in KINDS if media.track(k) is not None))
    if not isinstance(media, Mapping):
        raise RealtimeError(
            Codes.INVALID_PARAMETER, '"media" must be {video, audio}, a LocalMedia or null.'
        )
    unknown = sorted(str(k) for k in media if k not in KINDS)
    if unknown:
        raise RealtimeError(
            Codes.INVALID_PARAMETER, f"Unknown media kind(s): {', '.join(unknown)}."
        )
    flags = {kind: media.get(kind) is True for kind in KINDS}
    given = {k: v for k, v in media.items() if isinstance(v, MediaStreamTrack)}
    for kind, value in media.items():
        if not (isinstance(value, bool | MediaStreamTrack) or value is None):
            raise RealtimeError(
                Codes.INVALID_PARAMETER, f'"media.{kind}" must be a boolean or a track.'
            )
    from_devices = devices.get_user_media(**flags) if any(flags.values()) else LocalMedia()
    local = LocalMedia(
        video=given.get("video") or from_devices.video,
        audio=given.get("audio") or from_devices.audio,
    )
    return MediaRequest(local, tuple(k for k in KINDS if k in media))


@dataclass(frozen=True, slots=True)
class OfferMedia:
    """Per kind, what the offering side sends and wants to receive."""

    sends: frozenset[str]
    wants: frozenset[str]
    kinds: tuple[str, ...]  # in m-line order, first of each kind


def offer_media(sdp: str) -> OfferMedia:
    """What an offer's audio and video m-lines ask for.

    Raises:
        ValueError: the SDP cannot be parsed.
    """
    try:
        description = SessionDescription.parse(sdp)
    except (ValueError, IndexError, KeyError, AssertionError) as exc:  # aiortc's parser
        raise ValueError(f"the offer's SDP cannot be parsed: {exc}") from exc
    sends: set[str] = set()
    wants: set[str] = set()
    kinds: list[str] = []
    for media in description.media:
        if media.kind not in KINDS or media.kind in kinds:
            continue
        kinds.append(media.kind)
        if media.direction in _SENDING:
            sends.add(media.kind)
        if media.direction in _RECEIVING:
            wants.add(media.kind)
    return OfferMedia(frozenset(sends), frozenset(wants), tuple(kinds))


def codec_preferences(names: Iterable[str]) -> list[RTCRtpCodecCapability]:
    """aiortc's video codec capabilities in the order of ``names`` (with RTX)."""
    capabilities = RTCRtpSender.getCapabilities("video").codecs
    chosen = []
    for name in names:
        wanted = f"video/{name}".lower()
        chosen += [c for c in capabilities if c.mimeType.lower() == wanted]
    chosen += [c for c in capabilities if c.mimeType.lower() == "video/rtx"]
    return chosen
